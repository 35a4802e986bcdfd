"""`cdrec refresh --engine ray` on a local Ray (2 CPUs): the same bytes as the single-process job on one Redis
server and on a Redis Cluster, and a partition whose actor is killed (ray.kill) is redone by its restart."""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
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
    stats = run_on_ray(job, single.url, False, service_artifacts, actors=2, progress=False, on_submit=kill_one)
    assert killed and stats.finished and stats.scanned == stats.encoded == N_USERS
    assert embs(rdb) == local  # complete and byte-identical
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
    stats = run_on_ray(job, redis_cluster.url, True, service_artifacts, actors=2, progress=False)
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
            "--actors", "1"]  # fmt: skip
    assert main(args) == 0
    assert "refresh music: 50 users scanned, 50 encoded" in capsys.readouterr().out
    rdb.close()
