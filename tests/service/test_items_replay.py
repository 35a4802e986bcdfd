"""A restart replays the items added through POST /v1/items from their cached vectors (issue 15, item 6): no
re-encoding, one index extension, and a cached vector is used only for the very text it was encoded from."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from core.redis_keys import item_texts_key
from service.adapters.faiss_index import FaissItemIndex
from service.app import create_app
from service.items import pack_vector, unpack_vector
from tests.export.text_standin import DOMAIN
from tests.service.conftest import RedisServer, copy_artifacts, make_settings
from tests.service.test_items import add, history, new_user, recommended, text_artifacts  # noqa: F401

NEW = [{"item_id": f"w-new-{n}", "text": f"Cotman watercolour paints in a travel tin, {n} pans"} for n in range(40)]


@pytest.fixture
def root(text_artifacts: Path, tmp_path: Path, redis_server: RedisServer) -> Path:  # noqa: F811
    client = redis_server.client()
    client.delete(item_texts_key(DOMAIN), *client.keys(f"{item_texts_key(DOMAIN)}:vec:*"))
    return copy_artifacts(text_artifacts, tmp_path / "artifacts")


def test_a_restart_replays_added_items_from_their_cached_vectors_with_one_index_extension(
    root: Path, redis_server: RedisServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(root, redis_server.url)
    with TestClient(create_app(settings)) as first:
        add(first, *NEW[:20])
        add(first, *NEW[20:])
        painter = new_user()
        history(first, painter, ["w1", "w2", "w3"])
        before = recommended(first, painter, k=10)[0]
    extensions: list[int] = []
    original = FaissItemIndex.extended

    def counted(self: FaissItemIndex, vectors: np.ndarray) -> FaissItemIndex:
        extensions.append(len(vectors))
        return original(self, vectors)

    monkeypatch.setattr(FaissItemIndex, "extended", counted)
    with caplog.at_level(logging.INFO, "cdrec.service"), TestClient(create_app(settings)) as second:
        assert recommended(second, painter, k=10)[0] == before  # the same vectors: the same answers
    assert extensions == [len(NEW)]
    assert f"replayed {len(NEW)} added {DOMAIN} items" in caplog.text and "(0 re-encoded" in caplog.text


def test_a_cached_vector_serves_only_the_text_it_was_encoded_from() -> None:
    vec = np.arange(8, dtype=np.float32)
    packed = pack_vector("blue pens", vec)
    got = unpack_vector(packed, "blue pens")
    assert got is not None and np.array_equal(got, vec)
    assert unpack_vector(packed, "red pens") is None
