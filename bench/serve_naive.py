"""The baselines bench/serve.py measures the service against, in the same run: a no-op route and the naive,
tuned single-route pipeline (LRANGE -> onnxruntime -> FAISS -> orjson) with nothing else.

"Tuned" is PERFORMANCE.md's configuration: independent worker processes on one SO_REUSEPORT port, uvloop +
httptools, orjson, one thread each for onnxruntime and FAISS, one pipelined Redis round trip, the native calls
made inline in an ``async def`` route. "Nothing else": no validation beyond reading two fields, no strategy
choice, no exclusions but the seen items, no metrics, no auth, no error shape. It serves the same bundle
(the manifest's user encoder of the target domain and that graph's index) as the service.

    python -m bench.serve_naive --artifacts ROOT --redis-url URL --port 8100 --workers 2   # what the bench runs
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import onnxruntime as ort
import orjson
import redis.asyncio as aredis
from fastapi import FastAPI, Request
from starlette.responses import Response

from core.manifest import current_bundle, read_manifest
from core.redis_keys import seq_key
from core.sequence import encode_sequence
from core.settings import Settings
from service.server import serve

TARGET = "music"


def naive_app(settings: Settings) -> FastAPI:
    """The factory each worker calls: loads the bundle at ``settings.service.artifacts``/current."""
    faiss.omp_set_num_threads(1)
    root = current_bundle(settings.service.artifacts)
    m = read_manifest(root)
    graph = m.user_encoder(TARGET)
    if graph is None:
        raise SystemExit(f"{root}: no user encoder for {TARGET}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, m.onnxruntime.graph_optimization_level)
    session = ort.InferenceSession(str(root / graph.file), options, providers=["CPUExecutionProvider"])
    spec = m.indexes[graph.index]
    index: Any = faiss.read_index(str(root / spec.file))
    if spec.type == "hnsw":
        hnsw: Any = faiss.downcast_index(index)
        hnsw.hnsw.efSearch = spec.params["efSearch"]
    ids: dict[str, list[str]] = {d: json.loads((root / m.domains[d].ids_file).read_text()) for d in m.domains}
    rows = {d: {item: r for r, item in enumerate(v)} for d, v in ids.items()}
    inputs: list[tuple[str, str | None, int]] = [(t.name, t.domain, t.max_len or m.max_len) for t in graph.inputs]
    domains = list(dict.fromkeys(d for _, d, _ in inputs if d is not None))
    assert settings.redis.url is not None
    client = aredis.Redis.from_url(settings.redis.url, decode_responses=True)
    output = [graph.outputs[0].name]
    app = FastAPI()

    @app.get("/noop")
    async def noop() -> Response:
        return Response(b"{}", media_type="application/json")

    @app.post("/naive")
    async def naive(request: Request) -> Response:
        body = orjson.loads(await request.body())
        user, k = body["user_id"], int(body.get("k", 10))
        pipe = client.pipeline(transaction=False)
        for domain in domains:
            pipe.lrange(seq_key(user, domain), 0, -1)
        lists = dict(zip(domains, await pipe.execute(), strict=True))
        feeds = {}
        for name, d, max_len in inputs:  # d None: an input the graph ignores, fed padding
            known = [rows[d][i] + 1 for i in lists.get(d, ()) if i in rows[d]] if d else []
            feeds[name] = encode_sequence(known, max_len)[None, :]
        vector = session.run(output, feeds)[0]
        seen = {rows[TARGET][i] for i in lists.get(TARGET, ()) if i in rows[TARGET]}
        scores, found = index.search(np.ascontiguousarray(vector, dtype=np.float32), k + len(seen))
        items = [
            {"item_id": ids[TARGET][r], "score": s}
            for r, s in zip(found[0].tolist(), scores[0].tolist(), strict=True)
            if r >= 0 and r not in seen
        ][:k]
        return Response(orjson.dumps({"items": items}), media_type="application/json")

    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", type=Path, required=True)
    p.add_argument("--redis-url", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--workers", type=int, default=2)
    ns = p.parse_args(argv)
    settings = Settings.model_validate(
        {"redis": {"url": ns.redis_url}, "service": {"artifacts": ns.artifacts, "port": ns.port, "workers": ns.workers}}
    )
    return serve(settings, factory="bench.serve_naive:naive_app", log_level="warning")


if __name__ == "__main__":
    raise SystemExit(main())
