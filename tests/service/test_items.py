"""POST /v1/items end to end: real Redis, real ONNX (user encoder AND text item graph), real FAISS.

The bundle is exported in this module from the stand-in UniSRec (tests/export/text_standin.py): its item
vectors are text_tower(all-MiniLM-L6-v2 vectors of the titles), so a new item's text decides where it lands,
and "textually close" is real. The app under test never imports torch (the last test proves it in a clean
process); this test process does, to export the bundle.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.redis_keys import item_texts_key
from core.settings import RedisSettings
from service.adapters.redis_store import RedisSequenceStore
from service.app import create_app
from tests.export.text_standin import DOMAIN
from tests.service.conftest import API_KEY, RedisServer, auth, copy_artifacts, make_settings
from tests.service.test_reload import point_current

ROOT = Path(__file__).resolve().parents[2]
NEW_WATERCOLOR = {"item_id": "w-new", "text": "Cotman watercolour paints in a travel tin, 16 half pans"}


@pytest.fixture(scope="module")
def text_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An artifacts root with bundle t1 (office: stand-in UniSRec user encoder + text item graph) current."""
    import torch

    from export.bundle import export_bundle
    from tests.export.conftest import fast_options
    from tests.export.text_standin import standin_graph

    torch.set_num_threads(1)
    graph, domains = standin_graph()
    out = tmp_path_factory.mktemp("text-artifacts")
    export_bundle([graph], out, domains, fast_options(version="t1"), None)
    return out


@pytest.fixture
def root(text_artifacts: Path, tmp_path: Path, redis_server: RedisServer) -> Path:
    """A private copy of the artifacts, and no items left in Redis by an earlier test."""
    redis_server.client().delete(item_texts_key(DOMAIN))
    return copy_artifacts(text_artifacts, tmp_path / "artifacts")


@pytest.fixture
def c(root: Path, redis_server: RedisServer) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(root, redis_server.url))) as client:
        yield client


def add_version(root: Path, version: str) -> None:
    """t1 copied as ``version`` (its manifest renamed to match): a new bundle of the same model."""
    shutil.copytree(root / "t1", root / version)
    manifest = json.loads((root / version / "manifest.json").read_text())
    manifest["version"] = version
    (root / version / "manifest.json").write_text(json.dumps(manifest))


def new_user() -> str:
    return f"u-{uuid.uuid4().hex[:12]}"


def add(c: TestClient, *items: dict[str, str], domain: str = DOMAIN, status: int = 200) -> dict[str, object]:
    r = c.post("/v1/items", json={"domain": domain, "items": list(items)}, headers=auth())
    assert r.status_code == status, r.text
    body: dict[str, object] = r.json()
    return body


def history(c: TestClient, user: str, items: list[str]) -> None:
    events = [{"user_id": user, "domain": DOMAIN, "item_id": i} for i in items]
    r = c.post("/v1/events", json=events, headers=auth())
    assert r.status_code == 200, r.text


def recommended(c: TestClient, user: str, k: int = 5) -> tuple[list[str], str]:
    r = c.post("/v1/recommend", json={"user_id": user, "domain": DOMAIN, "k": k})
    assert r.status_code == 200, r.text
    return [i["item_id"] for i in r.json()["items"]], r.json()["strategy"]


def test_a_new_item_added_through_the_api_is_retrievable_by_a_textually_close_user(c: TestClient) -> None:
    painter, stapler_user = new_user(), new_user()
    history(c, painter, ["w1", "w2", "w3"])
    history(c, stapler_user, ["s1", "s2", "s3"])
    before, _ = recommended(c, painter)
    assert "w-new" not in before

    body = add(c, NEW_WATERCOLOR)
    assert body == {"domain": DOMAIN, "added": ["w-new"], "existing": [], "n_items": 31, "model_version": "t1"}

    top, strategy = recommended(c, painter)
    assert strategy == "gur" and top[0] == "w-new", top  # closer than the unseen watercolour items
    assert "w-new" not in recommended(c, stapler_user)[0][:3]
    similar = c.get("/v1/items/w-new/similar", params={"domain": DOMAIN, "k": 3}).json()["items"]
    assert {i["item_id"] for i in similar} <= {f"w{n}" for n in range(1, 6)}, similar
    history(c, painter, ["w-new"])  # /v1/events accepts it now
    assert "w-new" not in recommended(c, painter, k=10)[0]  # and, seen, it is excluded


def test_post_items_requires_the_api_key(c: TestClient) -> None:
    payload = {"domain": DOMAIN, "items": [NEW_WATERCOLOR]}
    missing = c.post("/v1/items", json=payload)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
    wrong = c.post("/v1/items", json=payload, headers={"X-API-Key": API_KEY + "x"})
    assert wrong.status_code == 401 and wrong.json()["error"]["message"] == "the API key is not valid"
    bearer = c.post("/v1/items", json=payload, headers={"Authorization": f"Bearer {API_KEY}"})
    assert bearer.status_code == 200


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"domain": DOMAIN, "items": []}, "items: List should have at least 1 item"),
        ({"domain": DOMAIN, "items": [{"item_id": "x"}]}, "items.0.text: Field required"),
        ({"domain": DOMAIN, "items": [{"item_id": "x", "text": ""}]}, "items.0.text: String should have at least"),
        ({"domain": DOMAIN, "items": [{"item_id": "x", "text": "t" * 4001}]}, "items.0.text: String should have at mo"),
        ({"domain": DOMAIN, "items": [{"item_id": "x" * 129, "text": "t"}]}, "items.0.item_id: String should have at"),
        ({"domain": DOMAIN, "items": [{"item_id": "x", "text": "t", "price": 3}]}, "items.0.price: Extra inputs"),
        ({"domain": DOMAIN, "items": [{"item_id": f"x{i}", "text": "t"} for i in range(257)]}, "at most 256 items"),
        ({"domain": "music", "items": [{"item_id": "x", "text": "t"}]}, "unknown domain 'music' (known: office)"),
        ({"domain": DOMAIN, "items": [{"item_id": "x", "text": "t"}] * 2}, "item id 'x' appears twice"),
        ({"domain": DOMAIN, "items": [{"item_id": "x", "text": "   "}]}, "items.0.text is blank"),
    ],
)
def test_post_items_refuses_bad_input_with_a_422_that_says_why(
    c: TestClient, payload: dict[str, object], message: str
) -> None:
    r = c.post("/v1/items", json=payload, headers=auth())
    assert r.status_code == 422, r.text
    assert set(r.json()) == {"error"} and r.json()["error"]["code"] in ("invalid_request", "unknown_domain")
    assert message in r.json()["error"]["message"]
    assert c.get("/v1/items/x/similar", params={"domain": DOMAIN}).status_code == 404  # nothing was added


def test_an_existing_id_is_a_conflict_and_an_identical_retry_changes_nothing(c: TestClient) -> None:
    trained = add(c, {"item_id": "w1", "text": "anything"}, status=409)
    message = "item 'w1' already exists in domain 'office' (in bundle t1)"
    assert trained["error"] == {"code": "item_exists", "message": message}
    assert add(c, NEW_WATERCOLOR)["added"] == ["w-new"]
    retry = add(c, NEW_WATERCOLOR, {"item_id": "p-new", "text": "A4 printer paper, 500 sheets"})
    assert (retry["added"], retry["existing"], retry["n_items"]) == (["p-new"], ["w-new"], 32)
    other = add(c, {"item_id": "w-new", "text": "another text"}, status=409)
    assert other["error"]["message"] == "item 'w-new' already exists in domain 'office' (with another text)"  # type: ignore[index]


def test_a_bundle_without_a_text_item_encoder_answers_409(client: TestClient) -> None:
    """The music bundle of the other service tests (SASRec): no text_items in its manifest."""
    r = client.post("/v1/items", json={"domain": "music", "items": [NEW_WATERCOLOR]}, headers=auth())
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "no_text_encoder"
    assert "bundle v1 has no text item encoder for domain 'music'" in r.json()["error"]["message"]


def test_added_items_are_persisted_and_survive_a_restart(root: Path, redis_server: RedisServer) -> None:
    settings = make_settings(root, redis_server.url)
    with TestClient(create_app(settings)) as first:
        add(first, NEW_WATERCOLOR)
    assert redis_server.client().hgetall("cdrec:items:office") == {"w-new": NEW_WATERCOLOR["text"]}
    with TestClient(create_app(settings)) as second:
        painter = new_user()
        history(second, painter, ["w1", "w2", "w3"])
        assert "w-new" in recommended(second, painter)[0][:3]
        assert add(second, NEW_WATERCOLOR)["existing"] == ["w-new"]  # replayed: a retry is still idempotent


def test_a_hot_reload_replays_the_added_items_into_the_new_bundle(c: TestClient, root: Path) -> None:
    add(c, NEW_WATERCOLOR)
    add_version(root, "t2")
    point_current(root, "t2")
    assert c.post("/v1/admin/reload", headers=auth()).json()["model_version"] == "t2"
    painter = new_user()
    history(c, painter, ["w1", "w2", "w3"])
    assert "w-new" in recommended(c, painter)[0][:3]
    assert add(c, {"item_id": "k-new", "text": "Slim wireless keyboard"})["n_items"] == 32


def test_another_worker_process_picks_up_an_added_item_within_a_watch_tick(
    root: Path, redis_server: RedisServer
) -> None:
    """Each worker holds its own index: the one that did not answer the POST syncs from Redis (service.items)."""
    answering = make_settings(root, redis_server.url)
    other = make_settings(root, redis_server.url, watch_s=0.1)
    with TestClient(create_app(answering)) as a, TestClient(create_app(other)) as b:
        painter = new_user()
        history(a, painter, ["w1", "w2", "w3"])
        add(a, NEW_WATERCOLOR)
        deadline = time.monotonic() + 10
        while recommended(b, painter)[0][0] != "w-new":
            assert time.monotonic() < deadline, "the other worker never picked the item up"
            time.sleep(0.05)
        assert add(b, NEW_WATERCOLOR)["existing"] == ["w-new"]


def test_an_id_another_worker_added_is_known_here_before_an_add(root: Path, redis_server: RedisServer) -> None:
    settings = make_settings(root, redis_server.url)  # no watch: only the add's own look at Redis
    with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b:
        add(a, NEW_WATERCOLOR)
        other = add(b, {"item_id": "w-new", "text": "another text"}, status=409)
        assert other["error"]["code"] == "item_exists"  # type: ignore[index]
        assert add(b, NEW_WATERCOLOR)["existing"] == ["w-new"]


def test_the_item_text_write_is_all_or_nothing_against_another_text(redis_server: RedisServer) -> None:
    """The real store: a batch whose id already holds another text writes nothing and names that id."""
    redis_server.client().delete(item_texts_key(DOMAIN))

    async def scenario() -> list[dict[str, str]]:
        store = RedisSequenceStore.from_url(redis_server.url, RedisSettings())
        try:
            return [await store.add_texts(DOMAIN, {"x": "first text"}),
                    await store.add_texts(DOMAIN, {"x": "first text"}),  # the same text again: a no-op
                    await store.add_texts(DOMAIN, {"y": "y text", "x": "second text", "z": "z text"})]
        finally:
            await store.aclose()

    assert asyncio.run(scenario()) == [{}, {}, {"x": "first text"}]
    assert redis_server.client().hgetall(item_texts_key(DOMAIN)) == {"x": "first text"}  # y and z not written


def test_two_workers_racing_for_one_new_id_cannot_both_win(
    root: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another worker's add lands between this worker's look at Redis and its write: this one answers 409, adds
    nothing (not even the other items of its request), and Redis keeps the other worker's text."""
    real = RedisSequenceStore.add_texts

    async def raced(self: RedisSequenceStore, domain: str, texts: Mapping[str, str]) -> Mapping[str, str]:
        redis_server.client().hset(item_texts_key(domain), "w-new", "the other worker's text")
        return await real(self, domain, texts)

    with TestClient(create_app(make_settings(root, redis_server.url))) as a:
        monkeypatch.setattr(RedisSequenceStore, "add_texts", raced)
        body = add(a, {"item_id": "p-new", "text": "A4 printer paper"}, NEW_WATERCOLOR, status=409)
        assert body["error"]["code"] == "item_exists" and "'w-new'" in body["error"]["message"]  # type: ignore[index]
        monkeypatch.undo()
        assert redis_server.client().hgetall(item_texts_key(DOMAIN)) == {"w-new": "the other worker's text"}
        for item in ("w-new", "p-new"):
            assert a.get(f"/v1/items/{item}/similar", params={"domain": DOMAIN}).status_code == 404
        # the next add looks at Redis first: the other worker's item is known here, with its text
        assert add(a, {"item_id": "w-new", "text": "the other worker's text"})["existing"] == ["w-new"]


def test_added_items_are_left_out_of_the_encoder_input(c: TestClient) -> None:
    add(c, NEW_WATERCOLOR)
    only_new, mixed = new_user(), new_user()
    history(c, only_new, ["w-new"])
    items, strategy = recommended(c, only_new)
    assert strategy == "popular" and "w-new" not in items  # nothing the encoder knows; still excluded as seen
    history(c, mixed, ["s1", "s2", "w-new"])
    items, strategy = recommended(c, mixed)
    assert strategy == "gur" and "w-new" not in items and items[0].startswith("s")


def test_items_an_export_folded_into_the_bundle_are_served_but_never_encoder_input(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """`cdrec export --added-items`: the item is in the bundle itself (after model_items); replay skips it."""
    import torch

    from export.bundle import export_bundle
    from tests.export.conftest import fast_options
    from tests.export.text_standin import standin_graph

    torch.set_num_threads(1)
    graph, domains = standin_graph()
    added = {NEW_WATERCOLOR["item_id"]: NEW_WATERCOLOR["text"]}
    export_bundle([graph], tmp_path, domains, fast_options(version="t9", added_items={DOMAIN: added}), None)
    redis_server.client().delete(item_texts_key(DOMAIN))
    redis_server.client().hset(item_texts_key(DOMAIN), mapping=added)  # what the service had persisted
    with TestClient(create_app(make_settings(tmp_path, redis_server.url))) as app:
        painter, only_new = new_user(), new_user()
        history(app, painter, ["w1", "w2", "w3"])
        assert recommended(app, painter)[0][0] == "w-new"
        history(app, only_new, ["w-new"])
        assert recommended(app, only_new)[1] == "popular"  # row 30 >= model_items: never fed to the encoder
        again = add(app, NEW_WATERCOLOR)
        assert (again["added"], again["existing"], again["n_items"]) == ([], ["w-new"], 31)
    redis_server.client().delete(item_texts_key(DOMAIN))


def test_items_added_while_recommendations_are_served_never_break_a_request(c: TestClient) -> None:
    painter = new_user()
    history(c, painter, ["w1", "w2"])
    failures: list[str] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            r = c.post("/v1/recommend", json={"user_id": painter, "domain": DOMAIN, "k": 10})
            if r.status_code != 200 or r.json()["degraded"] or len(r.json()["items"]) != 10:
                failures.append(r.text)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for t in readers:
        t.start()
    try:
        for n in range(15):
            add(c, {"item_id": f"n{n}", "text": f"Watercolor sketchbook number {n}, 30 sheets"})
    finally:
        stop.set()
        for t in readers:
            t.join()
    assert not failures, failures[:3]
    assert len(c.post("/v1/recommend", json={"user_id": painter, "domain": DOMAIN, "k": 45}).json()["items"]) == 43


def test_items_added_are_counted_in_the_metrics(c: TestClient) -> None:
    add(c, NEW_WATERCOLOR, {"item_id": "p-new", "text": "A4 printer paper, 500 sheets"})
    assert 'cdrec_items_added_total{domain="office"} 2.0' in c.get("/metrics").text


def test_redis_down_refuses_the_add_and_adds_nothing(root: Path) -> None:
    server = RedisServer().start()
    try:
        with TestClient(create_app(make_settings(root, server.url))) as app:
            server.kill()
            r = app.post("/v1/items", json={"domain": DOMAIN, "items": [NEW_WATERCOLOR]}, headers=auth())
            assert r.status_code == 503 and r.json()["error"]["code"] == "redis_unavailable"
            assert app.get("/v1/items/w-new/similar", params={"domain": DOMAIN}).status_code == 404
    finally:
        server.kill()


def test_the_app_adding_items_stays_torch_free(root: Path, redis_server: RedisServer) -> None:
    svc = {"artifacts": str(root), "api_keys": [API_KEY], "watch_s": 0}
    settings = json.dumps({"redis": {"url": redis_server.url}, "service": svc})
    code = f"""
import sys
from fastapi.testclient import TestClient
from core.settings import Settings
from service.app import create_app
from service.adapters.redis_store import RedisSequenceStore
settings = Settings.model_validate_json({settings!r})
with TestClient(create_app(settings)) as c:
    r = c.post("/v1/items", json={json.dumps({"domain": DOMAIN, "items": [NEW_WATERCOLOR]})},
               headers={{"X-API-Key": {API_KEY!r}}})
    assert r.status_code == 200, r.text
bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'training', 'export', 'transformers'))
print(bad)
sys.exit(1 if bad else 0)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr


def test_post_items_is_documented_in_the_openapi_schema(c: TestClient) -> None:
    route = c.get("/openapi.json").json()["paths"]["/v1/items"]["post"]
    body = route["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["items"]["maxItems"] == 256
    assert {"200", "401", "409", "422", "503"} <= set(route["responses"])
