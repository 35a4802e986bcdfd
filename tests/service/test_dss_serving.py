"""Serving a DSS bundle (issue 18): multi-interest retrieval on real ONNX + real FAISS + real Redis.

The K intent vectors of a user are searched in one batched FAISS call and merged by each item's best score,
with the seen filter; the answers equal a brute-force numpy top-k of max-over-intents scores. The refresh job
caches the K vectors (K * D floats) and the cached path searches them as K queries. Over HTTP the answer's
strategy is ``dss``; the bridge and popularity fall-backs are unchanged.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np
import onnxruntime as ort
import pytest
import redis
from fastapi.testclient import TestClient

from core.manifest import current_bundle, read_manifest
from core.redis_keys import emb_key, seq_key, unpack_embedding
from core.sequence import encode_sequence
from core.settings import RedisSettings
from service.adapters.faiss_index import FaissItemIndex
from service.adapters.redis_store import RedisSequenceStore
from service.bundle import ServingBundle, load_bundle
from service.recommender import Recommendation, Recommender
from service.refresh import RefreshJob
from tests.service.conftest import RedisServer, auth, fresh_db, make_settings
from tests.service.fakes import FakeStore
from tests.service.test_faiss_index import D, N, _spec

K_INTENTS, DIM = 3, 16  # train_tiny_dss
DB = 9  # a database of its own on the session's Redis


@pytest.fixture(scope="module")
def dss_bundle(dss_artifacts: Path) -> ServingBundle:
    return load_bundle(current_bundle(dss_artifacts))


class BruteForce:
    """The reference, from the bundle's files alone: onnxruntime on the graph file, every item vector, numpy."""

    def __init__(self, bundle: Path) -> None:
        m = read_manifest(bundle)
        graph = m.user_encoder("music")
        assert graph is not None
        self.max_len = next(i.max_len for i in graph.inputs if i.name == "target_seq") or 0
        self.session = ort.InferenceSession(str(bundle / graph.file), providers=["CPUExecutionProvider"])
        index = faiss.read_index(str(bundle / m.indexes[graph.index].file))
        self.items = index.reconstruct_n(0, index.ntotal)  # (N, D)
        self.ids: list[str] = json.loads((bundle / m.domains["music"].ids_file).read_text())

    def top_k(self, history: list[str], k: int) -> list[tuple[str, float]]:
        rows = [self.ids.index(i) for i in history]
        seq = encode_sequence([r + 1 for r in rows], self.max_len)[None, :]
        intents = self.session.run(None, {"target_seq": seq, "source_seq": np.zeros_like(seq)})[0][0]  # (K, D)
        assert intents.shape == (K_INTENTS, DIM)
        best = (self.items @ intents.T).max(axis=1)  # (N,): each item's best intent score
        best[rows] = -np.inf  # the seen filter
        top = np.argsort(-best, kind="stable")[:k]
        return [(self.ids[r], float(best[r])) for r in top]


def _histories(ids: list[str], n: int, seed: int) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    return [rng.choice(ids, size=int(rng.integers(1, 26))).tolist() for _ in range(n)]  # some past max_len 20


def recommend_all(bundle: ServingBundle, histories: list[list[str]], k: int = 10) -> tuple[
    list[Recommendation], Recommender
]:
    """User ``u<n>`` has music history ``histories[n]``: their concurrent answers (one executor thread, batched)."""
    store = FakeStore()
    for n, hist in enumerate(histories):
        store.lists[(f"u{n}", "music")] = hist
    holder: list[Recommender] = []

    async def scenario() -> list[Recommendation]:
        with ThreadPoolExecutor(1) as pool:
            holder.append(rec := Recommender(bundle, store, executor=pool))
            return list(await asyncio.gather(*(rec.recommend(f"u{n}", "music", k) for n in range(len(histories)))))

    return asyncio.run(scenario()), holder[0]


def _same(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> None:
    assert [i for i, _ in got] == [i for i, _ in want]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-4, atol=1e-4)


def test_dss_answers_equal_a_brute_force_max_over_intents_top_k_and_still_batch(
    dss_bundle: ServingBundle, dss_artifacts: Path
) -> None:
    ref = BruteForce(current_bundle(dss_artifacts))
    assert dss_bundle.encoders["music"].intents == K_INTENTS
    histories = _histories(dss_bundle.catalogues["music"].ids, 40, seed=1)
    answers, rec = recommend_all(dss_bundle, histories)
    assert rec.batcher is not None and rec.batcher.jobs == len(histories)
    assert rec.batcher.batches < len(histories)  # concurrent requests shared encoder calls
    for hist, answer in zip(histories, answers, strict=True):
        assert (answer.strategy, answer.degraded, answer.cached) == ("dss", False, False)
        _same(answer.items, ref.top_k(hist, 10))


def served_index(kind: str, items: np.ndarray, tmp_path: Path) -> FaissItemIndex:
    """``items`` in a served flat index, or a deliberately weak HNSW (deep exclusions leave it short, so the
    exact fallback has to finish)."""
    d = items.shape[1]
    if kind == "flat":
        index: faiss.Index = faiss.IndexFlatIP(d)
        params: dict[str, int] = {}
    else:
        index = faiss.IndexHNSWFlat(d, 4, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 8
        params = {"efSearch": 4}
    index.add(items)
    faiss.write_index(index, str(tmp_path / f"{kind}.faiss"))
    return FaissItemIndex(tmp_path / f"{kind}.faiss", _spec(kind, params))


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_search_intents_is_the_exact_best_intent_top_k_outside_the_exclusions(kind: str, tmp_path: Path) -> None:
    n, d = N, D
    rng = np.random.default_rng(2)
    items = rng.standard_normal((n, d)).astype(np.float32)
    served = served_index(kind, items, tmp_path)
    for _ in range(20):
        queries = rng.standard_normal((4, d)).astype(np.float32)
        exclude = set(rng.choice(n, size=int(rng.integers(0, n - 50)), replace=False).tolist())
        best = (items @ queries.T).max(axis=1)
        best[list(exclude)] = -np.inf
        want = np.argsort(-best, kind="stable")[:10]
        rows, scores = served.search(queries, 10, exclude)  # a (K, D) query: multi-interest retrieval
        assert len(rows) == len(set(rows)) == 10 and not set(rows) & exclude
        np.testing.assert_allclose(scores, best[rows], rtol=1e-5)  # each row at its best intent
        if kind == "flat":  # exact: the brute-force top 10 itself (HNSW may miss a candidate)
            assert rows == want.tolist()


@pytest.fixture
def rdb(redis_server: RedisServer) -> Iterator[redis.Redis]:
    yield from fresh_db(redis_server, DB)


def test_the_refresh_job_caches_k_vectors_and_the_cached_path_searches_them_as_k_queries(
    rdb: redis.Redis, dss_bundle: ServingBundle, redis_server: RedisServer
) -> None:
    users = [f"user-{n}" for n in range(30)]
    for user, hist in zip(users, _histories(dss_bundle.catalogues["music"].ids, len(users), seed=4), strict=True):
        rdb.rpush(seq_key(user, "music"), *hist[-20:])
    store = RedisSequenceStore.from_url(f"{redis_server.url[:-2]}/{DB}", RedisSettings())

    async def answers() -> list[Recommendation]:
        rec = Recommender(dss_bundle, store)
        return [await rec.recommend(u, "music", 10) for u in users]

    async def scenario() -> tuple[list[Recommendation], list[Recommendation]]:
        computed = await answers()
        stats = RefreshJob(rdb, dss_bundle, "music", batch_size=8).run(progress=False)
        assert stats.encoded == len(users)
        cached = await answers()
        await store.aclose()
        return computed, cached

    computed, cached = asyncio.run(scenario())
    vector = unpack_embedding(rdb.get(emb_key(users[0], "music")))
    assert vector is not None and vector[2].shape == (K_INTENTS * DIM,)  # all K vectors, not one of them
    assert all(not a.cached and a.strategy == "dss" for a in computed)
    assert all(a.cached and a.strategy == "dss" for a in cached)
    for a, b in zip(computed, cached, strict=True):
        _same(b.items, a.items)


def test_a_dss_bundle_serves_strategy_dss_over_http_with_k_unique_unseen_items(
    dss_artifacts: Path, redis_server: RedisServer
) -> None:
    from service.app import create_app

    user, book_user, new_user = (f"u-{uuid.uuid4().hex[:12]}" for _ in range(3))
    seen = [f"m{i}" for i in (3, 9, 9, 14, 27, 31)]
    with TestClient(create_app(make_settings(dss_artifacts, redis_server.url))) as client:
        events = [{"user_id": user, "domain": "music", "item_id": m} for m in seen]
        events.append({"user_id": book_user, "domain": "book", "item_id": "b7"})
        assert client.post("/v1/events", json=events, headers=auth()).status_code == 200
        r = client.post("/v1/recommend", json={"user_id": user, "domain": "music", "k": 12})
        assert r.status_code == 200, r.text
        body = r.json()
        ids = [i["item_id"] for i in body["items"]]
        scores = [i["score"] for i in body["items"]]
        assert (body["strategy"], body["degraded"], body["model_version"]) == ("dss", False, "dss-v1")
        assert len(ids) == len(set(ids)) == 12 and not set(ids) & set(seen)
        assert scores == sorted(scores, reverse=True)
        fallbacks = [
            client.post("/v1/recommend", json={"user_id": u, "domain": "music", "k": 5}).json()["strategy"]
            for u in (book_user, new_user)
        ]
        assert fallbacks == ["bridge", "popular"]  # the cold-start and popularity paths are unchanged
        metrics = client.get("/metrics").text
        assert 'strategy="dss"' in metrics
        assert "dss" in client.get("/openapi.json").text
