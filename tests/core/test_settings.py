import pytest
from pydantic import ValidationError

from core.settings import Settings


def test_settings_read_nested_env_with_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDREC_REDIS__URL", "redis://localhost:6390/0")
    monkeypatch.setenv("CDREC_TRAIN__EPOCHS", "7")
    s = Settings()
    assert s.redis.url == "redis://localhost:6390/0"
    assert s.train.epochs == 7


def test_settings_defaults_are_sane() -> None:
    s = Settings()
    assert s.redis.url is None  # embedded redis by default
    assert s.data.max_len == 50


def test_settings_reject_out_of_range_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDREC_TRAIN__EPOCHS", "0")
    with pytest.raises(ValidationError, match="epochs"):
        Settings()


def test_settings_module_has_no_instance() -> None:
    import core.settings as mod

    assert not any(isinstance(v, Settings) for v in vars(mod).values())
