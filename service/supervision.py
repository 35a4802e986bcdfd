"""What a supervised worker and its supervisor (service.server.Supervisor) tell each other, through files.

``cdrec serve --workers N`` gives every worker the supervisor's state directory (``service.state_dir``):

- each worker writes ``worker-<pid>.json`` (``{"bundle": <path>, "version": <v>}``) once its lifespan started
  and after every reload: the bundle it serves. A worker the supervisor starts to replace a dead one starts on
  that bundle (``service.start_bundle``), not on ``artifacts/current``, which may be a bundle the watch refused
  (issue 15, item 1); it then follows ``current`` through its watch like its siblings.
- the supervisor writes ``supervisor.json``: restarts so far and the workers waiting out a restart back-off.
  /readyz shows it (``supervisor``) and /metrics exports it (``cdrec_worker_restarts``,
  ``cdrec_workers_backing_off``, ``cdrec_worker_restart_backoff_seconds``), whichever worker answers.

Files are written to a temporary name and renamed, so a reader never sees half of one. And a worker must not
outlive its supervisor (orphans would keep the port through SO_REUSEPORT): ``die_with_parent``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("cdrec.service")

SUPERVISOR_FILE = "supervisor.json"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


def worker_file(state_dir: Path, pid: int) -> Path:
    return state_dir / f"worker-{pid}.json"


def report_serving(state_dir: Path | None, bundle: Path, version: str) -> None:
    """Called by a worker when it starts serving ``bundle`` (start, reload). No-op outside a supervisor."""
    if state_dir is None:
        return
    try:
        write_json(worker_file(state_dir, os.getpid()), {"bundle": str(bundle), "version": version})
    except OSError as exc:  # the supervisor's directory is gone (it is stopping): serving matters more
        log.warning("could not report the serving bundle to the supervisor: %s", exc)


def supervisor_state(state_dir: Path | None) -> dict[str, Any] | None:
    """The supervisor's last ``supervisor.json`` (None outside a supervisor, or before its first write)."""
    return None if state_dir is None else read_json(state_dir / SUPERVISOR_FILE)


class SupervisorCollector(Collector):
    """/metrics: the supervisor's restart counters, read from its state file at each scrape."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = supervisor_state(self.state_dir)
        if state is None:
            return
        yield GaugeMetricFamily("cdrec_worker_restarts", "Workers the supervisor restarted since it started",
                                value=state.get("restarts", 0))
        yield GaugeMetricFamily("cdrec_workers_backing_off", "Dead workers waiting out a restart back-off",
                                value=len(state.get("backing_off", [])))
        yield GaugeMetricFamily("cdrec_worker_restart_backoff_seconds", "Longest restart back-off now in force",
                                value=max((b["backoff_s"] for b in state.get("backing_off", [])), default=0.0))


def die_with_parent(parent_pid: int, grace_s: float = 10.0) -> None:
    """Make this process end when ``parent_pid`` (its supervisor) does, even by SIGKILL.

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGTERM)``, so the kernel signals us the moment the parent dies (a graceful
    uvicorn stop). Everywhere, as a fallback and for the race where the parent died before the prctl: a daemon
    thread that checks ``getppid()`` twice a second, sends us SIGTERM when we were re-parented, and exits hard
    if the graceful stop has not finished ``grace_s`` later."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)  # orphaned before we could ask: never start serving

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        log.error("supervisor %d is gone: stopping this worker", parent_pid)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os._exit(1)

    threading.Thread(target=watch, name="cdrec-parent-watch", daemon=True).start()


def live_bundles(state_dir: Path, pids: Iterable[int]) -> list[Path]:
    """The bundles the workers ``pids`` reported serving (those that have reported)."""
    out = []
    for pid in pids:
        data = read_json(worker_file(state_dir, pid))
        if data is not None:
            out.append(Path(data["bundle"]))
    return out
