"""FaissItemIndex: exclusions by searching deeper (or, as an option, inside FAISS), never fewer than k while the
catalogue has them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.manifest import IndexSpec
from service.adapters.faiss_index import FaissItemIndex

N, D = 300, 16


def _spec(kind: Any, params: dict[str, int]) -> IndexSpec:
    return IndexSpec(
        domain="music",
        file="items.music.faiss",
        ids_file="items.music.ids.json",
        type=kind,
        description=kind,
        metric="inner_product",
        dim=D,
        count=N,
        params=params,
        recall_at_10=1.0,
        recall_queries=0,
        build_s=0.0,
    )


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((N, D)).astype(np.float32)


@pytest.fixture(scope="module")
def indexes(vectors: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> dict[str, FaissItemIndex]:
    root: Path = tmp_path_factory.mktemp("faiss")
    flat = faiss.IndexFlatIP(D)
    flat.add(vectors)
    # a deliberately weak HNSW (tiny M and efSearch) so that deep exclusions leave it short: the exact
    # fallback must make up the difference
    hnsw = faiss.IndexHNSWFlat(D, 4, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 8
    hnsw.add(vectors)
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(D), D, 8, faiss.METRIC_INNER_PRODUCT)
    ivf.train(vectors)
    ivf.add(vectors)
    out = {}
    for name, index, params in (("flat", flat, {}), ("hnsw", hnsw, {"efSearch": 4}), ("ivf", ivf, {"nprobe": 1})):
        faiss.write_index(index, str(root / f"{name}.faiss"))
        out[name] = FaissItemIndex(root / f"{name}.faiss", _spec(name, params))
        if name != "flat":
            for way in ("selector", "deeper"):
                out[f"{name}-{way}"] = FaissItemIndex(root / f"{name}.faiss", _spec(name, params), exclusion=way)
    return out


@settings(max_examples=80, deadline=None)
@given(
    kind=st.sampled_from(["flat", "hnsw", "ivf", "hnsw-selector", "ivf-selector", "hnsw-deeper", "ivf-deeper"]),
    exclude=st.sets(st.integers(0, N - 1), max_size=N),
    k=st.integers(1, 120),
    q=st.integers(0, N - 1),
)
def test_search_returns_k_sorted_unique_rows_outside_the_exclusions_while_there_are_enough(
    indexes: dict[str, FaissItemIndex], vectors: np.ndarray, kind: str, exclude: set[int], k: int, q: int
) -> None:
    rows, scores = indexes[kind].search(vectors[q], k, exclude)
    assert len(rows) == min(k, N - len(exclude))
    assert len(set(rows)) == len(rows) and not set(rows) & exclude
    assert scores == sorted(scores, reverse=True)
    np.testing.assert_allclose(scores, vectors[rows] @ vectors[q], rtol=1e-4, atol=1e-4)


def test_exact_search_returns_the_true_top_k_outside_the_exclusions(
    indexes: dict[str, FaissItemIndex], vectors: np.ndarray
) -> None:
    exclude = set(range(0, N, 3))
    rows, _ = indexes["flat"].search(vectors[7], 10, exclude)
    truth = [int(r) for r in np.argsort(-(vectors @ vectors[7])) if int(r) not in exclude][:10]
    assert rows == truth


def test_stored_vectors_are_readable_by_row_for_every_index_type(
    indexes: dict[str, FaissItemIndex], vectors: np.ndarray
) -> None:
    for index in indexes.values():
        assert index.count == N
        np.testing.assert_allclose(index.vector(42), vectors[42])


def test_search_leaves_the_index_search_parameters_untouched(indexes: dict[str, FaissItemIndex]) -> None:
    for name in ("hnsw", "hnsw-selector", "hnsw-deeper"):
        index = indexes[name]
        index.search(index.vector(0), 50, set(range(100)))
        assert faiss.downcast_index(index._index).hnsw.efSearch == 4
    for name in ("ivf", "ivf-selector", "ivf-deeper"):
        indexes[name].search(indexes[name].vector(0), 50, set(range(100)))
        assert faiss.extract_index_ivf(indexes[name]._index).nprobe == 1


def test_the_selector_keeps_excluded_rows_out_of_faiss_own_answer(
    indexes: dict[str, FaissItemIndex], vectors: np.ndarray
) -> None:
    # what FAISS itself returns under the selector, before any filtering or exact fallback: never an excluded row
    exclude = set(range(0, N, 2))
    for name in ("hnsw-selector", "ivf-selector"):
        q = np.ascontiguousarray(vectors[3:4])
        _, ids = indexes[name]._search_selected(q, 20, exclude)
        assert not set(ids[0].tolist()) & exclude, name


def test_auto_searches_deeper_within_efsearch_and_uses_the_selector_beyond_it(
    indexes: dict[str, FaissItemIndex], vectors: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the default way: a depth that efSearch covers anyway is post-filtered (no selector built per request);
    # past it, FAISS' selector (no efSearch raised to 1,000+); either way never an excluded row and k rows
    index = indexes["hnsw"]
    assert index.exclusion == "auto"
    used: list[int] = []
    real = index._search_selected

    def spy(q: np.ndarray, k: int, exclude: set[int]) -> Any:
        used.append(len(exclude))
        return real(q, k, exclude)

    monkeypatch.setattr(index, "_search_selected", spy)
    for exclude, selects in ((set(), False), ({1}, True), (set(range(0, N, 2)), True)):
        rows, _ = index.search(vectors[5], 4, exclude)  # efSearch is 4 here: k 4 + 1 exclusion is past it
        assert len(rows) == 4 and not set(rows) & exclude
        assert bool(used) == selects
        used.clear()
    rows, _ = index.search(vectors[5], 2, {7, 9})  # depth 4 == efSearch: post-filtered
    assert not used and len(rows) == 2 and not set(rows) & {7, 9}
