"""What pauses a worker (issue 16, item 1): every garbage collection is timed into /metrics
(``cdrec_gc_pause_seconds``, by generation), the objects loaded at start (bundle, app, clients) are frozen out of
the collector's scans (``service.gc_freeze``) and frozen again after a reload, and ``service.switch_interval_s``
sets the GIL switch interval of the worker; FAISS' interrupt callback is off while the app serves
(``service.faiss_interrupt_checks``); all of it process-wide, so undone when the app stops."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import faiss
import numpy as np
from fastapi.testclient import TestClient

from service.adapters.faiss_index import interrupt_checks, interrupt_checks_on
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


def test_faiss_searches_skip_the_interrupt_callback_while_the_app_serves(
    service_artifacts: Path, redis_server: RedisServer
) -> None:
    # FAISS' Python callback re-takes the GIL in the middle of every search; the service turns it off (issue 16)
    interrupt_checks(True)
    with TestClient(create_app(make_settings(service_artifacts, redis_server.url))) as c:
        assert not interrupt_checks_on()
        body = c.post("/v1/recommend", json={"user_id": "nobody", "domain": "music", "k": 5})
        assert body.status_code == 200, body.text
    assert interrupt_checks_on(), "FAISS' default callback was not restored when the app stopped"
    with TestClient(create_app(make_settings(service_artifacts, redis_server.url, faiss_interrupt_checks=True))):
        assert interrupt_checks_on()


def test_a_search_without_the_interrupt_callback_answers_the_same() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 16)).astype(np.float32)
    index = faiss.IndexHNSWFlat(16, 16, faiss.METRIC_INNER_PRODUCT)
    index.add(x)
    try:
        interrupt_checks(True)
        with_checks = index.search(x[:50], 10)
        interrupt_checks(False)
        assert not interrupt_checks_on()
        without = index.search(x[:50], 10)
    finally:
        interrupt_checks(True)
    np.testing.assert_array_equal(with_checks[1], without[1])
