"""What pauses a worker (issue 16, item 1): every garbage collection is timed into /metrics
(``cdrec_gc_pause_seconds``, by generation), the objects loaded at start (bundle, app, clients) are frozen out of
the collector's scans (``service.gc_freeze``) and frozen again after a reload, and ``service.switch_interval_s``
sets the GIL switch interval of the worker; all of it process-wide, so undone when the app stops."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

from fastapi.testclient import TestClient

from service.app import _freeze_after, create_app
from tests.service.conftest import RedisServer, make_settings


def _gc_count(metrics: str, generation: int) -> float:
    prefix = f'cdrec_gc_pause_seconds_count{{generation="{generation}"}} '
    return sum(float(line[len(prefix):]) for line in metrics.splitlines() if line.startswith(prefix))


def test_a_started_app_freezes_what_it_loaded_and_times_every_collection(
    service_artifacts: Path, redis_server: RedisServer
) -> None:
    callbacks = len(gc.callbacks)
    with TestClient(create_app(make_settings(service_artifacts, redis_server.url))) as c:
        assert gc.get_freeze_count() > 0, "the objects loaded at start were not frozen"
        before = _gc_count(c.get("/metrics").text, 2)
        gc.collect()
        assert _gc_count(c.get("/metrics").text, 2) == before + 1, "a full collection was not timed"
    assert gc.get_freeze_count() == 0, "the app's freeze outlived it"
    assert len(gc.callbacks) == callbacks, "the app's GC callback outlived it"


def test_gc_freeze_off_leaves_the_collector_as_python_has_it(
    service_artifacts: Path, redis_server: RedisServer
) -> None:
    with TestClient(create_app(make_settings(service_artifacts, redis_server.url, gc_freeze=False))):
        assert gc.get_freeze_count() == 0


def test_a_reload_freezes_the_new_bundle_after_reporting_it(tmp_path: Path) -> None:
    reported: list[tuple[Path, str]] = []
    try:
        _freeze_after(lambda p, v: reported.append((p, v)), tmp_path, "v2")
        assert reported == [(tmp_path, "v2")]
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_the_switch_interval_is_the_workers_while_it_serves_and_restored_after(
    service_artifacts: Path, redis_server: RedisServer
) -> None:
    before = sys.getswitchinterval()
    with TestClient(create_app(make_settings(service_artifacts, redis_server.url, switch_interval_s=0.0005))):
        assert sys.getswitchinterval() == 0.0005
    assert sys.getswitchinterval() == before
