"""Bundles: a bad one refuses the start; at reload (route or watch) the old one keeps serving, the error shown."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import StartupError, create_app
from tests.service.conftest import RedisServer, auth, copy_artifacts, make_settings

READ = {"user_id": "u-reload", "domain": "music", "k": 3}


def add_version(root: Path, version: str, corrupt: str | None = None, source: str = "v1") -> Path:
    """Copy ``source`` as ``version`` (its manifest renamed to match); ``corrupt`` names a file to damage."""
    bundle = root / version
    shutil.copytree(root / source, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["version"] = version
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    if corrupt is not None:
        data = bytearray((bundle / corrupt).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (bundle / corrupt).write_bytes(bytes(data))
    return bundle


def point_current(root: Path, version: str) -> None:
    tmp = root / ".current-tmp"
    os.symlink(version, tmp)
    os.replace(tmp, root / "current")


def until_reload_error(c: TestClient, deadline: float, present: bool) -> None:
    while (c.get("/readyz").json()["reload_error"] is not None) != present:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def version_served(c: TestClient) -> str:
    version: str = c.post("/v1/recommend", json=READ).json()["model_version"]
    return version


@pytest.fixture
def root(service_artifacts: Path, tmp_path: Path) -> Path:
    return copy_artifacts(service_artifacts, tmp_path / "artifacts")


def test_reload_switches_to_the_bundle_current_points_at(root: Path, redis_server: RedisServer) -> None:
    with TestClient(create_app(make_settings(root, redis_server.url))) as c:
        add_version(root, "v2")
        point_current(root, "v2")
        r = c.post("/v1/admin/reload", headers=auth())
        assert r.status_code == 200 and r.json() == {"model_version": "v2", "previous": "v1", "changed": True}
        assert version_served(c) == "v2"
        assert 'cdrec_bundle_info{version="v2"} 1.0' in c.get("/metrics").text
        assert c.post("/v1/admin/reload", headers=auth()).json()["changed"] is False


def test_a_bad_bundle_at_reload_leaves_the_old_one_serving_and_reports_why(
    root: Path, redis_server: RedisServer
) -> None:
    with TestClient(create_app(make_settings(root, redis_server.url))) as c:
        add_version(root, "v3", corrupt="items.music.faiss")
        point_current(root, "v3")
        r = c.post("/v1/admin/reload", headers=auth())
        error = r.json()["error"]
        assert r.status_code == 409 and error["code"] == "bundle_refused"
        assert "still serving v1" in error["message"] and "items.music.faiss" in error["message"]
        assert version_served(c) == "v1"
        ready = c.get("/readyz").json()
        assert ready["ready"] is True and ready["model_version"] == "v1" and ready["reload_error"] == "bundle_refused"
        assert str(root) not in json.dumps(ready)  # no path or library text on the unauthenticated probe
        status = c.get("/v1/admin/status", headers=auth()).json()  # the detail, behind the key
        assert "sha256" in status["reload_error"] and status["bundle_path"] == str(root / "v1")
        assert c.get("/v1/admin/status").status_code == 401
        assert 'cdrec_bundle_reloads_total{result="refused"} 1.0' in c.get("/metrics").text


def test_the_watch_loads_a_new_current_and_skips_a_bad_one(root: Path, redis_server: RedisServer) -> None:
    with TestClient(create_app(make_settings(root, redis_server.url, watch_s=0.05))) as c:
        add_version(root, "v4", corrupt="user_encoder.music.onnx")
        point_current(root, "v4")
        deadline = time.monotonic() + 10
        until_reload_error(c, deadline, present=True)
        assert version_served(c) == "v1"
        add_version(root, "v5")
        point_current(root, "v5")
        while version_served(c) != "v5":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert c.get("/readyz").json()["reload_error"] is None


def test_the_reload_error_clears_when_current_is_put_back_on_the_served_bundle(
    root: Path, redis_server: RedisServer
) -> None:
    with TestClient(create_app(make_settings(root, redis_server.url, watch_s=0.05))) as c:
        add_version(root, "v6", corrupt="user_encoder.music.onnx")
        point_current(root, "v6")
        deadline = time.monotonic() + 10
        until_reload_error(c, deadline, present=True)
        point_current(root, "v1")  # the operator rolls `current` back: nothing is refused any more
        until_reload_error(c, deadline, present=False)
        assert version_served(c) == "v1"


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        ("user_encoder.music.onnx", "sha256 differs"),
        ("manifest.json", "manifest.json"),
        ("items.music.ids.json", "items.music.ids.json"),
    ],
)
def test_a_bad_bundle_at_start_refuses_to_start_with_a_clear_message(
    root: Path, redis_server: RedisServer, damage: str, words: str
) -> None:
    add_version(root, "bad", corrupt=damage)
    point_current(root, "bad")
    with (
        pytest.raises(StartupError, match="refusing to start") as info,
        TestClient(create_app(make_settings(root, redis_server.url))),
    ):
        pass
    assert words in str(info.value)


def test_no_published_bundle_refuses_to_start(tmp_path: Path, redis_server: RedisServer) -> None:
    with (
        pytest.raises(StartupError, match="no published bundle"),
        TestClient(create_app(make_settings(tmp_path, redis_server.url))),
    ):
        pass
