"""Index choice: exact up to a size, HNSW/IVF above with measured recall, a clear refusal when short."""

from __future__ import annotations

import numpy as np
import pytest

from export.index import IndexOptions, build_index, recall_at_10
from export.towers import ExportError


def _clustered(n: int, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, d))
    items = centres[rng.integers(0, 20, n)] + 0.3 * rng.standard_normal((n, d))
    queries = centres[rng.integers(0, 20, 200)] + 0.3 * rng.standard_normal((200, d))
    return items.astype(np.float32), queries.astype(np.float32)


def test_auto_builds_exact_search_up_to_the_threshold_and_hnsw_above() -> None:
    items, queries = _clustered(2000)
    flat = build_index(items, queries, IndexOptions(ann_above=2000))
    assert (flat.type, flat.recall_at_10, flat.index.ntotal) == ("flat", 1.0, 2000)
    hnsw = build_index(items, queries, IndexOptions(ann_above=1999, min_recall=0.95))
    assert hnsw.type == "hnsw" and hnsw.recall_at_10 >= 0.95 and hnsw.recall_queries == 200
    hnsw.index.hnsw.efSearch = hnsw.params["efSearch"]
    assert recall_at_10(hnsw.index, flat.index, queries) == pytest.approx(hnsw.recall_at_10)


def test_ivf_picks_the_smallest_nprobe_reaching_the_recall() -> None:
    items, queries = _clustered(3000)
    ivf = build_index(items, queries, IndexOptions(kind="ivf", min_recall=0.9))
    assert ivf.type == "ivf" and ivf.recall_at_10 >= 0.9 and "nlist=" in ivf.description
    assert ivf.params["nprobe"] >= 1


def test_an_unreachable_recall_is_refused_with_the_way_out() -> None:
    items, queries = _clustered(500)
    with pytest.raises(ExportError, match="use --index flat or lower --min-recall"):
        build_index(items, queries, IndexOptions(kind="hnsw", min_recall=1.01))


def test_an_approximate_index_without_queries_is_refused() -> None:
    items, _ = _clustered(500)
    with pytest.raises(ExportError, match="needs real user vectors"):
        build_index(items, np.zeros((0, 16), np.float32), IndexOptions(kind="hnsw"))
