"""`cdrec refresh`: re-encode every user's vector in one domain with the serving bundle, in batches, into Redis.

    cdrec refresh --redis-url redis://localhost:6379/0 [--domain music] [--only-stale] [--batch-size 512]
    cdrec refresh --cluster --redis-url redis://any-node:7000/0      # Redis Cluster: per slot (refresh_cluster)
    cdrec refresh --engine ray --actors 2 ...                        # partitions on Ray actors (refresh_ray)

What it does, per batch (DESIGN §5, core.redis_keys):

1. SCAN (never KEYS) ``cdrec:{u:*}:seq:<domain>`` from the stored cursor until a batch of users is gathered;
2. one pipeline reads every list the domain's user encoder reads (and, with ``--only-stale``, the cached
   embedding), one round trip per batch;
3. the sequences are encoded exactly as the service encodes them (service.bundle.Catalogue.encode, the
   manifest's max_len per input) and run through the bundle's ONNX user encoder as one (B, T) batch;
4. one MSET writes every ``cdrec:{u:<id>}:emb:<domain>`` (bundle version + sequence fingerprint + float32
   vector, core.redis_keys.pack_embedding) *and* the new cursor ``cdrec:refresh:<domain>:cursor``: MSET is
   atomic, so the cursor moves exactly when the batch before it is stored.

A killed job, rerun, resumes from the stored cursor (``--restart`` ignores it); the cursor key is deleted when
the SCAN completes, so the next run is a new pass. Reruns are idempotent: the same bundle and sequences write
the same bytes. ``--only-stale`` skips users whose cached vector has the serving version and the fingerprint of
their current sequences. Torch-free: it needs the bundle (onnxruntime, numpy) and redis only.
Exit status: 0 done, 1 the bundle or Redis is unusable, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import redis
from redis.client import NEVER_DECODE

from core.manifest import BundleError, current_bundle
from core.redis_client import SyncRedis, is_cluster, sync_client
from core.redis_keys import (
    emb_key,
    pack_embedding,
    refresh_cursor_key,
    seq_key,
    seq_pattern,
    sequence_fingerprint,
    unpack_embedding,
    user_from_seq_key,
)
from core.settings import Settings
from service.bundle import Graph, ServingBundle
from service.ports import FloatArray, IntArray

log = logging.getLogger("cdrec.refresh")


@dataclass
class RefreshStats:
    scanned: int = 0  # users the SCAN returned (duplicates included: SCAN may repeat a key)
    encoded: int = 0  # users encoded and written
    skipped: int = 0  # --only-stale: users whose cached vector was still fresh
    batches: int = 0
    seconds: float = 0.0
    resumed_from: int = 0  # the cursor this run started from (0: a new pass)
    finished: bool = False  # the SCAN reached its end (the cursor key is gone)

    @property
    def users_per_s(self) -> float:
        return self.scanned / self.seconds if self.seconds > 0 else 0.0


def encode_users(graph: Graph, bundle: ServingBundle, sequences: list[dict[str, list[str]]]) -> FloatArray:
    """(B, D) user vectors: the service's per-request encoding (Graph.feeds), stacked into one batch."""
    feeds: dict[str, IntArray] = {}
    for inp in graph.inputs:
        if inp.domain is None:
            feeds[inp.name] = np.zeros((len(sequences), inp.max_len), dtype=np.int64)
        else:
            domain = inp.domain
            feeds[inp.name] = bundle.catalogues[domain].encode_many([s.get(domain, ()) for s in sequences], inp.max_len)
    return graph.encoder(feeds)


def decoding_client(client: redis.Redis) -> redis.Redis:
    """A client on the same server that decodes replies (hiredis decodes in C, far cheaper than Python)."""
    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, "decode_responses": True}
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))


class RefreshJob:
    """One domain's refresh against one Redis server (``client``: any client of it; the job opens its own
    decoding one and reads cached embeddings undecoded)."""

    def __init__(
        self,
        client: redis.Redis,
        bundle: ServingBundle,
        domain: str,
        batch_size: int = 512,
        ttl_s: int | None = None,
    ) -> None:
        if domain not in bundle.encoders:
            served = ", ".join(sorted(bundle.encoders)) or "none"
            raise ValueError(f"bundle {bundle.version} has no user encoder for {domain!r} (encoders: {served})")
        self.client = self._decoding(client)
        self.bundle = bundle
        self.domain = domain
        self.graph = bundle.encoders[domain]
        self.reads = self.graph.read_domains()
        self.batch_size = batch_size
        self.cursor_key = refresh_cursor_key(domain)
        # redis.user_ttl_s: a vector written here expires like the user's lists, else an inactive user's cached
        # vector would outlive them (an append refreshes both; this job writes after the last append)
        self.ttl_s = ttl_s

    @staticmethod
    def _decoding(client: Any) -> Any:
        return decoding_client(client)

    def stored_cursor(self) -> int:
        raw = self.client.get(self.cursor_key)
        return int(raw) if raw else 0

    def close(self) -> None:
        self.client.close()
        self.client.connection_pool.disconnect()

    def run(
        self,
        only_stale: bool = False,
        restart: bool = False,
        max_batches: int | None = None,
        on_batch: Callable[[RefreshStats], None] | None = None,
        progress: bool = True,
    ) -> RefreshStats:
        """One pass (or the rest of an interrupted one); ``max_batches`` stops early, leaving the cursor stored.

        The next batch's SCAN and reads run in a helper thread while this one is encoded (onnxruntime releases
        the GIL), so Redis round trips hide behind the encoder; writes stay in SCAN order, one MSET per batch.
        """
        from tqdm import tqdm

        cursor = 0 if restart else self.stored_cursor()
        stats = RefreshStats(resumed_from=cursor)
        if restart:
            self.client.delete(self.cursor_key)
        started = time.perf_counter()
        bar = tqdm(desc=f"refresh {self.domain}", unit=" users", disable=not progress, mininterval=0.5)
        pool = ThreadPoolExecutor(1, "cdrec-refresh-read")
        try:
            pending = pool.submit(self._fetch, cursor, only_stale)
            while True:
                batch = pending.result()
                if batch.cursor != 0:
                    pending = pool.submit(self._fetch, batch.cursor, only_stale)
                self._write(batch, only_stale, stats)
                stats.batches += 1
                bar.update(len(batch.users))
                if on_batch is not None:
                    on_batch(stats)
                if batch.cursor == 0:
                    stats.finished = True
                    break
                if max_batches is not None and stats.batches >= max_batches:
                    break
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
        stats.seconds = time.perf_counter() - started
        return stats

    def _fetch(self, cursor: int, only_stale: bool) -> _Batch:
        """SCAN pages from ``cursor`` until a batch of users is gathered (or the pass ends), then read them."""
        users, cursor = self.scan_users(cursor)
        return _Batch(users, cursor, self.read(users, only_stale) if users else [])

    def scan_users(self, cursor: int) -> tuple[list[str], int]:
        """SCAN pages from ``cursor`` until ~batch_size users are gathered: (users, the cursor after them)."""
        users: list[str] = []
        pattern = seq_pattern(self.domain)
        while True:
            cursor, keys = self.client.scan(cursor, match=pattern, count=self.batch_size)
            cursor = int(cursor)
            users += [u for k in keys if (u := user_from_seq_key(str(k), self.domain)) is not None]
            if cursor == 0 or len(users) >= self.batch_size:
                return users, cursor

    def read(self, users: list[str], only_stale: bool) -> list[Any]:
        """One pipeline: every list the encoder reads, per user (and the cached vector with ``only_stale``)."""
        pipe = self.client.pipeline(transaction=False)
        for user in users:
            for domain in self.reads:
                pipe.lrange(seq_key(user, domain), 0, -1)
            if only_stale:
                # raw bytes: the vector is not text
                pipe.execute_command("GET", emb_key(user, self.domain), **{NEVER_DECODE: True})
        replies: list[Any] = pipe.execute()
        return replies

    def _write(self, batch: _Batch, only_stale: bool, stats: RefreshStats) -> None:
        self.store(self.encode(batch.users, batch.replies, only_stale, stats), batch.cursor)

    def store(self, writes: dict[str, bytes], cursor: int | None = None) -> None:
        """One round trip: MSET the vectors (and the SCAN ``cursor`` after them, atomically; 0 = the pass is
        complete: the cursor key is deleted instead), then their expiry when ``ttl_s`` is set."""
        pipe = self.client.pipeline(transaction=False)
        mset = dict(writes)
        if cursor:
            mset[self.cursor_key] = str(cursor).encode()
        if mset:
            pipe.mset(mset)
        self.expire(pipe, writes)
        if cursor == 0:
            pipe.delete(self.cursor_key)
        pipe.execute()

    def expire(self, pipe: Any, keys: Iterable[str]) -> None:
        """Queue ``EXPIRE key ttl_s`` for each vector key (nothing without a TTL)."""
        if self.ttl_s is not None:
            for key in keys:
                pipe.expire(key, self.ttl_s)

    def encode(self, users: list[str], replies: list[Any], only_stale: bool, stats: RefreshStats) -> dict[str, bytes]:
        """``emb_key`` -> packed vector of every user of ``read``'s replies that needs one (counted in ``stats``)."""
        stats.scanned += len(users)
        width = len(self.reads) + (1 if only_stale else 0)
        todo: list[tuple[str, str, dict[str, list[str]]]] = []
        for n, user in enumerate(users):
            row = replies[n * width : (n + 1) * width]
            seqs = {d: row[i] for i, d in enumerate(self.reads)}
            fingerprint = sequence_fingerprint(seqs, self.reads)
            if only_stale:
                cached = unpack_embedding(row[-1])
                if cached is not None and cached[0] == self.bundle.version and cached[1] == fingerprint:
                    stats.skipped += 1
                    continue
            todo.append((user, fingerprint, seqs))
        writes: dict[str, bytes] = {}
        if todo:
            vectors = encode_users(self.graph, self.bundle, [t[2] for t in todo])
            for (user, fingerprint, _), vector in zip(todo, vectors, strict=True):
                writes[emb_key(user, self.domain)] = pack_embedding(self.bundle.version, fingerprint, vector)
        stats.encoded += len(todo)
        return writes


@dataclass
class _Batch:
    users: list[str]
    cursor: int  # the SCAN cursor after these users (0: the pass ends with them)
    replies: list[Any]


def make_job(
    client: SyncRedis, bundle: ServingBundle, domain: str, batch_size: int = 512, ttl_s: int | None = None
) -> RefreshJob:
    """The job for ``client``'s kind of Redis: SCAN cursor on one server, per hash slot on a cluster."""
    if is_cluster(client):
        from service.refresh_cluster import ClusterRefreshJob

        return ClusterRefreshJob(client, bundle, domain, batch_size, ttl_s)  # type: ignore[arg-type]
    return RefreshJob(client, bundle, domain, batch_size, ttl_s)  # type: ignore[arg-type]


def _parser(s: Settings) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cdrec refresh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--redis-url", default=s.redis.url, help="default: CDREC_REDIS__URL (required)")
    p.add_argument("--artifacts", type=Path, default=s.service.artifacts, help="root holding `current`")
    p.add_argument("--domain", action="append", help="target domain(s); default: every one with a user encoder")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--only-stale", action="store_true", help="skip users whose cached vector is still fresh")
    p.add_argument("--restart", action="store_true", help="ignore a stored cursor: start a new pass")
    p.add_argument("--ort-threads", type=int, default=1)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--cluster", action=argparse.BooleanOptionalAction, default=s.redis.cluster,
        help="the URL names a node of a Redis Cluster: work and write per hash slot (default: CDREC_REDIS__CLUSTER)",
    )  # fmt: skip
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="ray: partitions over Ray actors")
    p.add_argument("--actors", type=int, default=2, help="--engine ray: encoder actors (each loads the bundle once)")
    p.add_argument(
        "--partition-timeout", type=float, default=600.0,
        help="--engine ray: seconds to wait for one partition's result before giving up (a rerun resumes)",
    )  # fmt: skip
    p.add_argument(
        "--start-timeout", type=float, default=300.0,
        help="--engine ray: seconds to wait for every actor to start (load the bundle) before any partition",
    )  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    base = Settings()
    ns = _parser(base).parse_args(sys.argv[1:] if argv is None else argv)
    if not ns.redis_url:
        print("cdrec refresh: --redis-url (or CDREC_REDIS__URL) is required", file=sys.stderr)
        return 2
    if ns.batch_size < 1:
        print("cdrec refresh: --batch-size must be at least 1", file=sys.stderr)
        return 2
    logging.basicConfig(level="WARNING", format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from service.bundle import load_bundle

    try:
        bundle = load_bundle(current_bundle(ns.artifacts), ort_threads=ns.ort_threads, text_items=False)
    except (BundleError, FileNotFoundError) as exc:
        print(f"cdrec refresh: {exc}", file=sys.stderr)
        return 1
    if ns.actors < 1:
        print("cdrec refresh: --actors must be at least 1", file=sys.stderr)
        return 2
    for flag, value in (("--partition-timeout", ns.partition_timeout), ("--start-timeout", ns.start_timeout)):
        if value <= 0:
            print(f"cdrec refresh: {flag} must be positive", file=sys.stderr)
            return 2
    domains = ns.domain or sorted(bundle.encoders)
    client = sync_client(ns.redis_url, ns.cluster, decode_responses=False)
    try:
        client.ping()
        for domain in domains:
            try:
                job = make_job(client, bundle, domain, ns.batch_size, base.redis.user_ttl_s)
            except ValueError as exc:
                print(f"cdrec refresh: {exc}", file=sys.stderr)
                return 2
            try:
                if ns.engine == "ray":
                    from service.refresh_ray import PartitionTimeout, run_on_ray

                    try:
                        stats = run_on_ray(
                            job, ns.redis_url, ns.cluster, ns.artifacts, ns.actors, ns.ort_threads,
                            only_stale=ns.only_stale, restart=ns.restart, progress=not ns.no_progress,
                            partition_timeout_s=ns.partition_timeout, start_timeout_s=ns.start_timeout,
                        )  # fmt: skip
                    except PartitionTimeout as exc:
                        print(f"cdrec refresh: {exc}", file=sys.stderr)
                        return 1
                else:
                    stats = job.run(only_stale=ns.only_stale, restart=ns.restart, progress=not ns.no_progress)
            finally:
                job.close()
            resumed = f", resumed from cursor {stats.resumed_from}" if stats.resumed_from else ""
            print(
                f"refresh {domain}: {stats.scanned} users scanned, {stats.encoded} encoded, {stats.skipped} fresh "
                f"skipped in {stats.seconds:.1f} s ({stats.users_per_s:,.0f} users/s; bundle {bundle.version}"
                f"{resumed})",
                flush=True,
            )
    except redis.RedisError as exc:
        print(f"cdrec refresh: Redis at {ns.redis_url}: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0
