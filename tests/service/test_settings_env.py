"""The service's settings come from CDREC_* variables like every other section, keys kept secret."""

import pytest

from core.settings import Settings


def test_service_and_redis_settings_read_nested_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDREC_SERVICE__API_KEYS", '["k1", "k2"]')
    monkeypatch.setenv("CDREC_SERVICE__WORKERS", "2")
    monkeypatch.setenv("CDREC_REDIS__TIMEOUT_S", "0.2")
    s = Settings()
    assert [k.get_secret_value() for k in s.service.api_keys] == ["k1", "k2"]
    assert s.service.workers == 2 and s.redis.timeout_s == 0.2
    assert "k1" not in repr(s)


def test_serving_defaults_are_one_thread_each_and_no_keys() -> None:
    s = Settings()
    assert (s.service.ort_threads, s.service.faiss_threads, s.service.executor_threads) == (1, 1, 1)
    assert s.service.api_keys == [] and s.redis.url is None
