"""Run an app factory under uvicorn: in this process, or as N independent workers sharing one port.

``uvicorn --workers N`` with the plain asyncio loop added ~44 ms to keep-alive requests and could send every
connection to one worker (PERFORMANCE.md; uvicorn issue #3149). So with ``workers > 1`` a small supervisor
spawns N independent processes, each binding its own socket to the same address with ``SO_REUSEPORT`` (the
kernel spreads connections across them) and running uvloop + httptools. The supervisor restarts a worker
that dies after it had started, gives up when one cannot start (a bad bundle: every restart would fail the
same way) and forwards SIGTERM/SIGINT for a graceful stop. Prometheus runs in multiprocess mode so /metrics
adds up every worker.

``factory`` is ``"module:function"``, a function taking Settings and returning an ASGI app.

With several workers, ``POST /v1/admin/reload`` reaches one of them; the others follow through their watch
on ``artifacts/current`` (``service.watch_s``), which is why the watch is on by default.
"""

from __future__ import annotations

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
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

from core.settings import Settings

log = logging.getLogger("cdrec.service")

STARTUP_FAILURE = 3


def resolve(factory: str) -> Callable[[Settings], Any]:
    module, _, name = factory.partition(":")
    fn: Callable[[Settings], Any] = getattr(importlib.import_module(module), name)
    return fn


def reuseport_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _uvicorn_config(app: Any, settings: Settings, log_level: str) -> Any:
    import uvicorn

    def have(module: str) -> bool:
        return importlib.util.find_spec(module) is not None

    return uvicorn.Config(
        app,
        host=settings.service.host,
        port=settings.service.port,
        loop="uvloop" if have("uvloop") else "asyncio",
        http="httptools" if have("httptools") else "h11",
        lifespan="on",
        access_log=False,  # a log line per request costs more than a no-op route; metrics count requests
        log_level=log_level,
        backlog=2048,
    )


def _set_thread_env(settings: Settings) -> None:
    # before faiss/onnxruntime load: OpenMP reads it once, and threads the app did not configure inherit it
    os.environ.setdefault("OMP_NUM_THREADS", str(settings.service.faiss_threads))


def _worker(settings: Settings, factory: str, log_level: str) -> None:
    _set_thread_env(settings)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    import uvicorn

    sock = reuseport_socket(settings.service.host, settings.service.port)
    server = uvicorn.Server(_uvicorn_config(resolve(factory)(settings), settings, log_level))
    server.run(sockets=[sock])
    sys.exit(0 if server.started else STARTUP_FAILURE)


def serve(settings: Settings, factory: str = "service.app:create_app", log_level: str = "info") -> int:
    """Serve until stopped; return the process exit status."""
    _set_thread_env(settings)
    if settings.service.workers == 1:
        import uvicorn

        server = uvicorn.Server(_uvicorn_config(resolve(factory)(settings), settings, log_level))
        server.run()
        return 0 if server.started else STARTUP_FAILURE
    if settings.service.port == 0:
        log.error("--workers > 1 needs a fixed --port: every worker binds the same one")
        return 2
    return Supervisor(settings, factory, log_level).run()


class Supervisor:
    def __init__(self, settings: Settings, factory: str, log_level: str) -> None:
        self.settings = settings
        self.factory = factory
        self.log_level = log_level
        self.ctx = mp.get_context("spawn")  # fresh interpreters: no forked native thread pools or sockets
        self.stopping = False

    def _start(self) -> BaseProcess:
        p = self.ctx.Process(target=_worker, args=(self.settings, self.factory, self.log_level), daemon=False)
        p.start()
        return p

    def _stop(self, signum: int, frame: object) -> None:
        self.stopping = True

    def run(self) -> int:
        metrics_dir = tempfile.mkdtemp(prefix="cdrec-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        n = self.settings.service.workers
        workers = [self._start() for _ in range(n)]
        started_at = [time.monotonic()] * n
        status = 0
        log.info(
            "supervisor %d: %d workers on %s:%d", os.getpid(), n, self.settings.service.host, self.settings.service.port
        )
        try:
            while not self.stopping:
                time.sleep(0.2)
                for i, p in enumerate(workers):
                    if p.is_alive() or self.stopping:
                        continue
                    if p.exitcode == STARTUP_FAILURE:
                        log.error("worker %d could not start (exit %s): stopping", p.pid, p.exitcode)
                        self.stopping, status = True, 1
                        break
                    if time.monotonic() - started_at[i] < 5:
                        log.error("worker %d died within 5 s of starting (exit %s): stopping", p.pid, p.exitcode)
                        self.stopping, status = True, 1
                        break
                    log.error("worker %d died (exit %s): restarting it", p.pid, p.exitcode)
                    from prometheus_client import multiprocess

                    multiprocess.mark_process_dead(p.pid, metrics_dir)  # type: ignore[no-untyped-call]
                    workers[i], started_at[i] = self._start(), time.monotonic()
        finally:
            for p in workers:
                if p.is_alive() and p.pid is not None:
                    os.kill(p.pid, signal.SIGTERM)
            for p in workers:
                p.join(timeout=15)
                if p.is_alive():
                    p.kill()
                    p.join()
            shutil.rmtree(metrics_dir, ignore_errors=True)
        return status
