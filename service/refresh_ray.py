"""`cdrec refresh --engine ray [--actors N]`: the refresh job's partitions encoded by Ray actors.

    pip install -e '.[serve,scale]'
    cdrec refresh --engine ray --actors 2 --redis-url redis://localhost:6379/0 [--cluster] [--domain music]

The driver (this process) partitions the users and keeps the progress; each actor (``RefreshWorker``) loads the
bundle and its onnxruntime session ONCE, then per partition reads the users' lists, encodes them as one batch and
writes the vectors back, with exactly the code of the single-process job (service.refresh / refresh_cluster):

* Redis Cluster: a partition is a run of hash slots of ~``batch_size`` keys; the actor writes each slot's vectors
  and its ``done`` marker in one MSET (atomic per slot), so a rerun skips the slots already stored;
* one Redis server: the driver SCANs (keys only) from the stored cursor, a partition is one SCAN range (the users
  between two cursors); results are taken in submission order and the cursor key is stored after each partition
  whose vectors (and every earlier one's) are written: a killed job resumes at the first unfinished range.

Actors are created with ``max_restarts`` / ``max_task_retries``: an actor that dies (OOM, node lost, ray.kill) is
restarted, reloads the bundle, and the partition it held is run again (writes are idempotent: same bytes).
At most ``2 x actors`` partitions are in flight, so the driver's memory stays bounded whatever the user count.

Why plain actors rather than ``ray.data.map_batches``: the partitions come lazily from a SCAN (or the slot map)
and are committed in order by the driver; Ray Data would materialise them into Arrow blocks of id lists and
hides its actors, which the resumability (ordered cursor commits) and the killed-actor test both need to see.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

from core.redis_keys import SLOTS
from service.refresh import RefreshJob, RefreshStats

MAX_RESTARTS = 3
PARTITION_TIMEOUT_S = 600.0  # one partition (~batch_size users) takes well under a second; this bounds a stuck actor
START_TIMEOUT_S = 300.0  # every actor constructed (bundle loaded) before the first partition, at most this


class PartitionTimeout(RuntimeError):
    """A partition's result did not come back in time (actor stuck, unschedulable, or its node lost)."""


class RefreshWorker:
    """A Ray actor: one bundle, one onnxruntime session, one Redis client; refreshes partitions."""

    def __init__(
        self,
        url: str,
        cluster: bool,
        artifacts: str,
        domain: str,
        batch_size: int,
        ort_threads: int,
        version: str,
        ttl_s: int | None = None,
    ) -> None:
        from core.manifest import current_bundle
        from core.redis_client import sync_client
        from service.bundle import load_bundle
        from service.refresh import make_job

        bundle = load_bundle(current_bundle(Path(artifacts)), ort_threads=ort_threads, text_items=False)
        if bundle.version != version:  # a publish between the driver's start and this actor's: never mix versions
            raise RuntimeError(f"bundle changed under the job: driver {version}, actor {bundle.version}")
        self.job = make_job(sync_client(url, cluster, decode_responses=False), bundle, domain, batch_size, ttl_s)

    def refresh(self, part: dict[str, Any], only_stale: bool) -> dict[str, Any]:
        stats = RefreshStats()
        if "slots" in part:
            from service.refresh_cluster import ClusterRefreshJob

            assert isinstance(self.job, ClusterRefreshJob)
            self.job.refresh_slots(part["slots"], part["pass_id"], only_stale, stats)
        else:
            users: list[str] = part["users"]
            writes = self.job.encode(users, self.job.read(users, only_stale) if users else [], only_stale, stats)
            self.job.store(writes)
        return {"stats": {f.name: getattr(stats, f.name) for f in fields(stats)}, "cursor": part.get("cursor")}


def _slot_partitions(job: Any, pass_id: str) -> Iterator[dict[str, Any]]:
    counts = {slot: count for slot, count, done in job.slot_states(pass_id) if count and not done}
    part: list[int] = []
    size = 0
    for slot in range(SLOTS):
        if slot in counts:
            part.append(slot)
            size += counts[slot]
            if size >= job.batch_size:
                yield {"slots": part, "pass_id": pass_id}
                part, size = [], 0
    if part:
        yield {"slots": part, "pass_id": pass_id}


def _scan_partitions(job: RefreshJob, cursor: int) -> Iterator[dict[str, Any]]:
    while True:
        users, cursor = job.scan_users(cursor)
        yield {"users": users, "cursor": cursor}
        if cursor == 0:
            return


def run_on_ray(
    job: RefreshJob,
    url: str,
    cluster: bool,
    artifacts: Path,
    actors: int = 2,
    ort_threads: int = 1,
    only_stale: bool = False,
    restart: bool = False,
    progress: bool = True,
    on_submit: Callable[[list[Any], int], None] | None = None,
    partition_timeout_s: float = PARTITION_TIMEOUT_S,
    start_timeout_s: float = START_TIMEOUT_S,
) -> RefreshStats:
    """One pass (or the rest of one) of ``job``'s domain on ``actors`` Ray actors; ``ray.init`` first if needed
    (it joins the cluster named by ``RAY_ADDRESS``, else starts a local one).
    ``on_submit(actors, n)`` runs after the n-th partition is submitted (tests kill an actor there).
    Every result is awaited at most ``partition_timeout_s``: past it ``PartitionTimeout`` is raised (the actors are
    killed, the stored cursor / slot markers keep what was finished, so a rerun resumes), never an endless wait."""
    import ray
    from tqdm import tqdm

    from service.refresh_cluster import ClusterRefreshJob

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    worker_cls = ray.remote(num_cpus=1, max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS)(RefreshWorker)
    pool: list[Any] = [
        worker_cls.remote(
            url, cluster, str(artifacts), job.domain, job.batch_size, ort_threads, job.bundle.version, job.ttl_s
        )
        for _ in range(actors)
    ]
    started = time.perf_counter()
    _await_ready(ray, pool, start_timeout_s)
    if isinstance(job, ClusterRefreshJob):
        stats = RefreshStats(resumed_from=0 if restart else job.stored_cursor())
        parts = _slot_partitions(job, job.open_pass(restart))
    else:
        stats = RefreshStats(resumed_from=0 if restart else job.stored_cursor())
        if restart:
            job.client.delete(job.cursor_key)
        parts = _scan_partitions(job, stats.resumed_from)
    bar = tqdm(desc=f"refresh {job.domain} (ray x{actors})", unit=" users", disable=not progress, mininterval=0.5)
    inflight: deque[Any] = deque()
    submitted = 0
    try:
        for part in parts:
            inflight.append(pool[submitted % actors].refresh.remote(part, only_stale))
            submitted += 1
            if on_submit is not None:
                on_submit(pool, submitted)
            while len(inflight) >= 2 * actors:
                _commit(job, _result(ray, inflight.popleft(), partition_timeout_s), stats, bar)
        while inflight:
            _commit(job, _result(ray, inflight.popleft(), partition_timeout_s), stats, bar)
        stats.finished = True
        if isinstance(job, ClusterRefreshJob):
            job.finish_pass()
    finally:
        bar.close()
        for actor in pool:
            ray.kill(actor)
    stats.seconds = time.perf_counter() - started
    return stats


def _await_ready(ray: Any, pool: list[Any], timeout_s: float) -> None:
    """Every actor constructed (its bundle loaded) before the first partition is submitted, at most ``timeout_s``:
    an actor that cannot be placed fails here with a clear error, not as a partition timeout later. It also
    keeps a crash from meeting an actor still being created (Ray then kept the first creation's CPU held,
    leaving the next actor unschedulable: measured in a full test run)."""
    try:
        ray.get([actor.__ray_ready__.remote() for actor in pool], timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        for actor in pool:
            ray.kill(actor)
        raise PartitionTimeout(
            f"the {len(pool)} refresh actors were not all started within {timeout_s:g} s (not enough free CPUs in "
            "the Ray cluster? see `ray status`); nothing was submitted"
        ) from None


def _result(ray: Any, ref: Any, timeout_s: float) -> dict[str, Any]:
    try:
        result: dict[str, Any] = ray.get(ref, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise PartitionTimeout(
            f"a refresh partition did not finish within {timeout_s:g} s (an actor is stuck or cannot be scheduled: "
            "see `ray status`); what was finished is stored, a rerun resumes from there"
        ) from None
    return result


def _commit(job: RefreshJob, result: dict[str, Any], stats: RefreshStats, bar: Any) -> None:
    """A partition is stored: count it and (one server) move the cursor past it; results come in order."""
    part = result["stats"]
    for name in ("scanned", "encoded", "skipped", "batches"):
        setattr(stats, name, getattr(stats, name) + part[name])
    bar.update(part["scanned"])
    cursor = result["cursor"]
    if cursor is not None:
        if cursor == 0:
            job.client.delete(job.cursor_key)
        else:
            job.client.set(job.cursor_key, str(cursor))
