"""The embedded Redis honours the durability setting: with ``fsync`` it runs ``appendfsync always``, the setting
the workers' start-up check requires (service.durability), whichever process starts it (app or `cdrec serve`)."""

from __future__ import annotations

from pathlib import Path

import redis

from core.settings import RedisSettings
from service.embedded import EmbeddedRedis


def test_embedded_redis_runs_appendfsync_always_for_fsync_durability(tmp_path: Path) -> None:
    for durability, expected in (("fsync", "always"), ("reply", "everysec")):
        embedded = EmbeddedRedis.for_settings(RedisSettings(durability=durability, data_dir=tmp_path / durability))
        client = redis.Redis.from_url(embedded.start(), decode_responses=True)
        try:
            assert client.config_get("appendfsync")["appendfsync"] == expected
            assert client.config_get("appendonly")["appendonly"] == "yes"
        finally:
            client.close()
            embedded.stop()
