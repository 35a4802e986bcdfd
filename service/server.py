"""Run an app factory under uvicorn: in this process, or as N independent workers sharing one port.

``uvicorn --workers N`` with the plain asyncio loop added ~44 ms to keep-alive requests and could send every
connection to one worker (PERFORMANCE.md; uvicorn issue #3149). So with ``workers > 1`` a small supervisor
spawns N independent processes, each binding its own socket to the same address with ``SO_REUSEPORT`` (the
kernel spreads connections across them) and running uvloop + httptools. A worker listens only once its
lifespan finished (bundle loaded, added items replayed), so no connection waits on a worker that is starting.

The supervisor (issue 15) replaces a dead worker, on the bundle its live siblings serve (never on a
``current`` the watch refused: service.supervision), after an exponential back-off when it keeps dying within
``restart_min_uptime_s`` of its start; healthy workers keep serving meanwhile, and /readyz and /metrics report
restarts and back-offs. Only a worker that cannot start before any worker ever served (a broken setup) stops
everything. Workers die with the supervisor (PR_SET_PDEATHSIG, and a parent check), and a second server on a
taken address refuses to start (``refuse_if_port_taken``). SIGTERM/SIGINT are forwarded for a graceful stop.
Prometheus runs in multiprocess mode so /metrics adds up every worker.

``factory`` is ``"module:function"``, a function taking Settings and returning an ASGI app.

With several workers, ``POST /v1/admin/reload`` reaches one of them; the others follow through their watch
on ``artifacts/current`` (``service.watch_s``), which is why the watch is on by default.
"""

from __future__ import annotations

import errno
import importlib
import importlib.util
import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from core.settings import Settings
from service.supervision import SUPERVISOR_FILE, die_with_parent, live_bundles, worker_file, write_json

log = logging.getLogger("cdrec.service")

STARTUP_FAILURE = 3


def resolve(factory: str) -> Callable[[Settings], Any]:
    module, _, name = factory.partition(":")
    fn: Callable[[Settings], Any] = getattr(importlib.import_module(module), name)
    return fn


class PortInUse(RuntimeError):
    """Another process listens on the address: a second server must not share it silently (SO_REUSEPORT)."""


def refuse_if_port_taken(host: str, port: int) -> None:
    """Raise PortInUse when something is bound to ``host:port``.

    The workers bind with SO_REUSEPORT, and the kernel lets any later socket with that option join the group: a
    second ``cdrec serve`` would silently share the port (and its traffic) with the first. This probe binds
    WITHOUT SO_REUSEPORT, which fails on a port anyone holds. SO_REUSEADDR stays on: connections of an earlier
    run still in TIME_WAIT must not count as a server."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise PortInUse(
                f"{host}:{port} is already in use (another cdrec serve, or another program, is listening there): "
                "stop it or choose another --port"
            ) from None


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A socket bound to the shared address but NOT listening: uvicorn's server calls listen() on it only after
    the lifespan started (bundle loaded, added items replayed). Until then the kernel sends this address's
    connections only to the workers that listen, never into a backlog nobody accepts from (issue 15, item 6)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


def _uvicorn_config(app: Any, settings: Settings, log_level: str) -> Any:
    import uvicorn

    def have(module: str) -> bool:
        return importlib.util.find_spec(module) is not None

    cfg = settings.service
    return uvicorn.Config(
        app,
        host=cfg.host,
        port=cfg.port,
        loop="uvloop" if have("uvloop") else "asyncio",
        http="httptools" if have("httptools") else "h11",
        lifespan="on",
        access_log=False,  # a log line per request costs more than a no-op route; metrics count requests
        log_level=log_level,
        backlog=2048,
        # idle and slow clients must not hold connections (and file descriptors) forever (issue 15, item 8)
        timeout_keep_alive=cfg.keep_alive_s,
        limit_concurrency=cfg.limit_concurrency,
        h11_max_incomplete_event_size=cfg.max_header_bytes,
        timeout_graceful_shutdown=cfg.graceful_shutdown_s,
    )


def _set_thread_env(settings: Settings) -> None:
    # before faiss/onnxruntime load: OpenMP reads it once, and threads the app did not configure inherit it
    os.environ.setdefault("OMP_NUM_THREADS", str(settings.service.faiss_threads))


def _worker(settings: Settings, factory: str, log_level: str, parent_pid: int) -> None:
    die_with_parent(parent_pid)  # first: an orphan must never start serving on the shared port
    _set_thread_env(settings)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    import uvicorn

    sock = reuseport_socket(settings.service.host, settings.service.port)
    server = uvicorn.Server(_uvicorn_config(resolve(factory)(settings), settings, log_level))
    server.run(sockets=[sock])
    sys.exit(0 if server.started else STARTUP_FAILURE)


def serve(settings: Settings, factory: str = "service.app:create_app", log_level: str = "info") -> int:
    """Serve until stopped; return the process exit status. Raises PortInUse when the address is taken."""
    _set_thread_env(settings)
    refuse_if_port_taken(settings.service.host, settings.service.port)
    if settings.service.workers == 1:
        import uvicorn

        server = uvicorn.Server(_uvicorn_config(resolve(factory)(settings), settings, log_level))
        server.run()
        return 0 if server.started else STARTUP_FAILURE
    if settings.service.port == 0:
        log.error("--workers > 1 needs a fixed --port: every worker binds the same one")
        return 2
    return Supervisor(settings, factory, log_level).run()


@dataclass
class Slot:
    """One worker position: its process (None while it waits out a back-off) and its restart history."""

    proc: BaseProcess | None
    started: float
    quick_deaths: int = 0  # consecutive deaths within restart_min_uptime_s of a start
    restart_at: float = 0.0
    backoff_s: float = 0.0


class Supervisor:
    """N workers; a dead one is replaced, on the bundle its siblings serve, after an exponential back-off when
    it keeps dying soon after its start. Healthy workers are never stopped for a sibling's sake: only SIGTERM/
    SIGINT (or a worker that cannot start before any worker ever served: a broken setup) stops the lot."""

    def __init__(self, settings: Settings, factory: str, log_level: str) -> None:
        self.settings = settings
        self.factory = factory
        self.log_level = log_level
        self.ctx = mp.get_context("spawn")  # fresh interpreters: no forked native thread pools or sockets
        self.stopping = False
        self.restarts = 0
        self.last_good: Path | None = None  # the bundle the workers last reported serving
        self.state_dir = Path(tempfile.mkdtemp(prefix="cdrec-serve-"))

    def _start(self, bundle: Path | None) -> BaseProcess:
        service = self.settings.service.model_copy(update={"state_dir": self.state_dir, "start_bundle": bundle})
        settings = self.settings.model_copy(update={"service": service})
        p = self.ctx.Process(
            target=_worker, args=(settings, self.factory, self.log_level, os.getpid()), daemon=False
        )
        p.start()
        return p

    def _stop(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _pin(self, slots: list[Slot]) -> Path | None:
        """The bundle a replacement starts on: what most live siblings serve, else the last one any worker
        served; None (``artifacts/current``) only before any worker reported."""
        pids = [s.proc.pid for s in slots if s.proc is not None and s.proc.is_alive() and s.proc.pid is not None]
        serving = live_bundles(self.state_dir, pids)
        if serving:
            self.last_good = Counter(serving).most_common(1)[0][0]
        return self.last_good

    def _write_state(self, slots: list[Slot]) -> None:
        now = time.monotonic()
        waiting = [
            {"slot": i, "backoff_s": s.backoff_s, "restart_in_s": round(max(0.0, s.restart_at - now), 3)}
            for i, s in enumerate(slots)
            if s.proc is None
        ]
        write_json(self.state_dir / SUPERVISOR_FILE, {"restarts": self.restarts, "backing_off": waiting})

    def _died(self, i: int, slot: Slot, metrics_dir: str) -> None:
        assert slot.proc is not None
        p, now, cfg = slot.proc, time.monotonic(), self.settings.service
        from prometheus_client import multiprocess

        if p.pid is not None:
            multiprocess.mark_process_dead(p.pid, metrics_dir)  # type: ignore[no-untyped-call]
            worker_file(self.state_dir, p.pid).unlink(missing_ok=True)
        slot.quick_deaths = slot.quick_deaths + 1 if now - slot.started < cfg.restart_min_uptime_s else 0
        slot.backoff_s = (
            min(cfg.restart_backoff_s * 2 ** (slot.quick_deaths - 1), cfg.restart_backoff_max_s)
            if slot.quick_deaths
            else 0.0
        )
        slot.proc, slot.restart_at = None, now + slot.backoff_s
        log.error("worker %d (slot %d) died (exit %s): restarting it in %.1f s", p.pid, i, p.exitcode, slot.backoff_s)

    def run(self) -> int:
        metrics_dir = str(self.state_dir / "metrics")
        os.mkdir(metrics_dir)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        n = self.settings.service.workers
        slots = [Slot(self._start(None), time.monotonic()) for _ in range(n)]
        status = 0
        log.info(
            "supervisor %d: %d workers on %s:%d", os.getpid(), n, self.settings.service.host, self.settings.service.port
        )
        try:
            self._write_state(slots)
            while not self.stopping:
                time.sleep(0.2)
                pin = self._pin(slots)
                changed = False
                for i, slot in enumerate(slots):
                    if self.stopping:
                        break
                    if slot.proc is not None:
                        if slot.proc.is_alive():
                            continue
                        if slot.proc.exitcode == STARTUP_FAILURE and pin is None:
                            log.error("worker %d could not start and no worker ever served: stopping", slot.proc.pid)
                            self.stopping, status = True, 1
                            break
                        self._died(i, slot, metrics_dir)
                        changed = True
                    if time.monotonic() >= slot.restart_at:
                        log.info("starting a worker in slot %d on %s", i, pin or "artifacts/current")
                        slot.proc, slot.started = self._start(pin), time.monotonic()
                        self.restarts += 1
                        changed = True
                if changed:
                    self._write_state(slots)
        finally:
            procs = [s.proc for s in slots if s.proc is not None]
            for p in procs:
                if p.is_alive() and p.pid is not None:
                    os.kill(p.pid, signal.SIGTERM)
            for p in procs:
                p.join(timeout=15)
                if p.is_alive():
                    p.kill()
                    p.join()
            shutil.rmtree(self.state_dir, ignore_errors=True)
        return status
