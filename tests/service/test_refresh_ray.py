"""`cdrec refresh --engine ray` on a local Ray (2 CPUs): the same bytes as the single-process job on one Redis
server and on a Redis Cluster, and a partition whose actor is killed (ray.kill) is redone by its restart."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from core.manifest import current_bundle
from core.redis_keys import refresh_cursor_key, refresh_pass_key
from service.bundle import ServingBundle, load_bundle
from service.refresh import RefreshJob, main
from service.refresh_cluster import ClusterRefreshJob
from tests.cluster import RedisClusterServer
from tests.service.conftest import RedisServer
from tests.service.test_refresh import N_USERS, seed

ray = pytest.importorskip("ray")  # the `scale` extra

EMB_MATCH = "cdrec:{u:*}:emb:music"
WAIT_S = 180  # no partition of these tests may take longer: a stuck actor fails the test instead of hanging it


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    # address="local": always a fresh local Ray, never one another process left running on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 << 20)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def bundle(service_artifacts: Path) -> ServingBundle:
    return load_bundle(current_bundle(service_artifacts))


@pytest.fixture
def single() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.kill()


def cpus_back(timeout_s: float = 60) -> bool:
    """Whether both CPUs of the local Ray are free within ``timeout_s`` (killed actors free theirs asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    return bool(ray.available_resources().get("CPU", 0) == 2)


def embs(client: Any, **scan: Any) -> dict[bytes, bytes]:
    return {k: client.get(k) for k in client.scan_iter(match=EMB_MATCH, count=1000, **scan)}


def test_ray_writes_the_same_vectors_as_the_single_process_job_and_redoes_a_killed_actors_partition(
    local_ray: None, bundle: ServingBundle, single: RedisServer, service_artifacts: Path
) -> None:
    from service.refresh_ray import run_on_ray

    rdb = redis.Redis(port=single.port)
    seed(rdb, bundle)
    RefreshJob(rdb, bundle, "music", batch_size=16).run(progress=False)
    local = embs(rdb)
    assert len(local) == N_USERS
    rdb.flushall()
    seed(rdb, bundle)
    killed: list[int] = []

    def kill_one(actors: list[Any], n: int) -> None:
        if n == 3:  # the third partition was just queued on actor 0: kill it, Ray restarts it and reruns the task
            ray.kill(actors[0], no_restart=False)
            killed.append(n)

    job = RefreshJob(rdb, bundle, "music", batch_size=16)
    stats = run_on_ray(job, single.url, False, service_artifacts, actors=2, progress=False, on_submit=kill_one,
                       partition_timeout_s=WAIT_S)
    assert killed, "the kill hook never ran (fewer than 3 partitions?)"
    assert stats.finished and stats.scanned == stats.encoded == N_USERS, stats
    got = embs(rdb)
    differ = sorted(k for k in local.keys() | got.keys() if local.get(k) != got.get(k))
    assert not differ, f"{len(differ)} of {N_USERS} vectors differ or are missing, e.g. {differ[:3]}"
    assert rdb.get(refresh_cursor_key("music")) is None
    job.close()
    rdb.close()


def test_ray_on_a_cluster_writes_per_slot_the_same_vectors(
    local_ray: None, bundle: ServingBundle, redis_cluster: RedisClusterServer, service_artifacts: Path
) -> None:
    from service.refresh_ray import run_on_ray

    redis_cluster.flushall()
    rc = redis_cluster.client()
    seed(rc, bundle)
    job = ClusterRefreshJob(rc, bundle, "music", batch_size=32)
    job.run(progress=False)
    local = embs(rc, target_nodes=RedisCluster.PRIMARIES)
    redis_cluster.flushall()
    seed(rc, bundle)
    stats = run_on_ray(
        job, redis_cluster.url, True, service_artifacts, actors=2, progress=False, partition_timeout_s=WAIT_S
    )
    assert stats.finished and stats.scanned == N_USERS
    assert embs(rc, target_nodes=RedisCluster.PRIMARIES) == local and len(local) == N_USERS
    assert rc.get(refresh_pass_key("music")) is None
    job.close()
    rc.close()
    redis_cluster.flushall()


def test_the_cli_runs_the_ray_engine(
    local_ray: None, bundle: ServingBundle, single: RedisServer, service_artifacts: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    rdb = redis.Redis(port=single.port)
    seed(rdb, bundle, n=50)
    args = ["--redis-url", single.url, "--artifacts", str(service_artifacts), "--no-progress", "--engine", "ray",
            "--actors", "1", "--partition-timeout", str(WAIT_S), "--start-timeout", str(WAIT_S)]  # fmt: skip
    assert main(args) == 0
    assert "refresh music: 50 users scanned, 50 encoded" in capsys.readouterr().out
    too_many = [*args[:-5], "3", "--start-timeout", "3"]  # 3 actors of 1 CPU on a 2-CPU Ray: never all placed
    assert main(too_many) == 1
    assert "the 3 refresh actors were not all started within 3 s" in capsys.readouterr().err
    assert main([*args[:-1], "0"]) == 2
    assert "--start-timeout must be positive" in capsys.readouterr().err
    rdb.close()


def test_a_partition_past_its_timeout_stops_the_job_with_a_clear_error_and_keeps_the_cursor(
    local_ray: None, bundle: ServingBundle, single: RedisServer, service_artifacts: Path
) -> None:
    from service.refresh_ray import PartitionTimeout, run_on_ray

    rdb = redis.Redis(port=single.port)
    seed(rdb, bundle, n=50)
    job = RefreshJob(rdb, bundle, "music", batch_size=16)
    # the actors are still loading the bundle when the first result is awaited: nothing can come back in 1 ms
    with pytest.raises(PartitionTimeout, match=r"did not finish within 0\.001 s"):
        run_on_ray(job, single.url, False, service_artifacts, actors=1, progress=False, partition_timeout_s=0.001)
    assert rdb.get(refresh_cursor_key("music")) is None  # nothing was committed past what was finished
    assert cpus_back(), "the timed-out job left its actors holding CPUs"
    job.close()
    rdb.close()


def test_actors_that_cannot_all_be_placed_fail_fast_with_a_clear_error_and_give_their_cpus_back(
    local_ray: None, bundle: ServingBundle, single: RedisServer, service_artifacts: Path
) -> None:
    from service.refresh_ray import PartitionTimeout, run_on_ray

    rdb = redis.Redis(port=single.port)
    seed(rdb, bundle, n=20)
    job = RefreshJob(rdb, bundle, "music", batch_size=16)
    # 3 actors of 1 CPU each on a 2-CPU Ray: the third is never placed, so nothing may be submitted
    with pytest.raises(PartitionTimeout, match=r"3 refresh actors were not all started within 5 s"):
        run_on_ray(job, single.url, False, service_artifacts, actors=3, progress=False, start_timeout_s=5)
    assert not list(rdb.scan_iter(match=EMB_MATCH))  # no partition ran
    assert cpus_back(), "the failed start left its actors holding CPUs"
    job.close()
    rdb.close()
