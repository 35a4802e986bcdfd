"""Event writes that wait for durability on a Redis Cluster (``redis.wait_replicas`` > 0 or ``durability=fsync``
with ``redis.cluster``), used by service.adapters.redis_store.

WAIT and WAITAOF count the writes of their own connection, and redis-py's cluster pipeline writes through one
connection per node that its caller cannot end with a command of its own (a keyless WAIT would go to some node,
on another connection, and prove nothing). So here the batch's users are grouped by the node that owns their slot
(the cluster client's slot map, ``get_node_from_key``), and each node gets ONE pipeline on one connection of the
cluster client's own pool (``ClusterNode.execute_pipeline``, what the cluster pipeline runs per node): its users'
script calls, then ``WAIT n timeout`` (``WAITAOF 1 n timeout`` on a node >= 7.2 with ``fsync``). The nodes run in
parallel: one round trip, as on one server. The caller acknowledges the batch only when every node's wait does.

Redirections: a MOVED or ASK reply means the node refused the call before running it, so nothing was written and
sending it again cannot double an event: the slot map is corrected as redis-py does it (``move_slot``; ASKING on
the named node, one command) and those users go again, at most ``REDIRECTS`` rounds, inside the write budget.
TRYAGAIN (a multi-key call on a slot half migrated: the user's list and event-id keys) and a failed node (its
connection lost or timed out: its scripts may have run) leave those users' outcome unknown (503, retried by the
client with the same event ids); a failed node also has the client reload its slot map on its next call, as the
cluster pipeline does, which is how a promoted replica is found.

``fsync`` on Redis < 7.2 (no WAITAOF) needs ``appendfsync always`` on every node: ``check`` reads every node the
client knows at start, replicas included (a replica is the master after a failover), and a node first seen later
(promoted, added) before the first write to it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from redis.asyncio.cluster import ClusterNode, PipelineCommand
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.exceptions import (
    AskError,
    MaxConnectionsError,
    MovedError,
    RedisClusterException,
    RedisError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.durability import Durability, DurabilityRefused, server_version, use_waitaof_per_node
from service.ports import OutcomeUnknown, StoreUnavailable

REDIRECTS = 2  # MOVED/ASK rounds a write follows before its outcome is left unknown
NO_WAIT = object()  # a node pipeline that sent no wait
Calls = Mapping[str, tuple[list[str], list[str | int]]]  # user -> KEYS, ARGV of the user's script call


class NodeWrites:
    """Per-node pipelines ending with the wait, through ``client``'s slot map and connection pools."""

    def __init__(self, client: AsyncRedisCluster, durability: Durability, timeout_s: float) -> None:
        self.client = client
        self.durability = durability
        self.timeout_s = timeout_s
        self.waitaof: dict[str, bool] = {}  # node name -> fsync by WAITAOF (True) or appendfsync always

    async def check_all(self) -> None:
        """``check`` every node the client knows (it loads the slot map first)."""
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.client.initialize()
        except TimeoutError as exc:
            raise StoreUnavailable("redis_timeout", "cluster slot map") from exc
        except (RedisError, RedisClusterException, OSError) as exc:
            raise StoreUnavailable("redis_unreachable", type(exc).__name__) from exc
        await self.check(self.client.get_nodes(), skip_unreachable=True)

    async def check(self, nodes: Sequence[ClusterNode], skip_unreachable: bool = False) -> None:
        """How each of ``nodes`` gives ``fsync``: INFO server and CONFIG GET append* on the node's own connection;
        ``DurabilityRefused`` naming those that cannot. ``skip_unreachable``: a node that does not answer (e.g. a
        replica down now) is left to be checked before the first write to it, else it is ``StoreUnavailable``."""

        async def config(node: ClusterNode) -> tuple[tuple[int, ...], dict[str, str]]:
            info = [PipelineCommand(0, "INFO", "server"), PipelineCommand(1, "CONFIG GET", "append*")]
            async with asyncio.timeout(self.timeout_s):
                await node.execute_pipeline(info)
            replies: list[Any] = [cmd.result for cmd in info]
            if error := next((r for r in replies if isinstance(r, Exception)), None):
                raise error
            return server_version(replies[0]), dict(replies[1])

        found = await asyncio.gather(*(config(n) for n in nodes), return_exceptions=True)
        answered: dict[str, tuple[tuple[int, ...], dict[str, str]]] = {}
        for node, got in zip(nodes, found, strict=True):
            if isinstance(got, (RedisError, OSError, TimeoutError)):
                if skip_unreachable:
                    continue
                raise StoreUnavailable("redis_unreachable", f"durability check of {node.name}: {got!r}"[:200])
            if isinstance(got, BaseException):
                raise got
            answered[node.name] = got
        self.waitaof.update(use_waitaof_per_node(self.durability.mode, answered))

    async def write(
        self,
        how: Mapping[str, tuple[str, str]],
        calls: Calls,
    ) -> tuple[dict[str, Any], list[Any]]:
        """A script call per user of ``how`` (command, script or sha), per node in one pipeline ending with the
        wait: each user's reply, and each node's wait reply (none from a node where no script ran)."""
        per_user: dict[str, Any] = {}
        waits: list[Any] = []
        asking: dict[str, ClusterNode] = {}  # users an ASK sent to another node (a slot being migrated)
        todo = list(how)
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.client.initialize()
                for _ in range(1 + REDIRECTS):
                    groups: dict[str, tuple[ClusterNode, list[str]]] = {}
                    for user in todo:
                        node = asking.get(user) or self.client.get_node_from_key(calls[user][0][0])
                        assert node is not None  # get_node_from_key raises SlotNotCoveredError instead
                        groups.setdefault(node.name, (node, []))[1].append(user)
                    if self.durability.mode == "fsync" and (
                        new := [n for n, _ in groups.values() if n.name not in self.waitaof]
                    ):
                        await self.check(new)  # a node first seen now (e.g. promoted, added)
                    sent = [(node, users, self._node_write(node, users, how, calls, asking))
                            for node, users in groups.values()]  # fmt: skip
                    results = await asyncio.gather(*(w for _, _, w in sent), return_exceptions=True)
                    todo = []
                    for (node, users, _), result in zip(sent, results, strict=True):
                        todo += await self._node_outcome(node, users, result, per_user, waits, asking)
                    if not todo:
                        break
        except TimeoutError as exc:
            raise OutcomeUnknown("redis_timeout", f"no answer within {self.timeout_s * 1e3:.0f} ms") from exc
        except (RedisError, RedisClusterException, OSError) as exc:  # no slot map (e.g. a slot not covered)
            if per_user:  # an earlier round was sent
                raise OutcomeUnknown("redis_unreachable", type(exc).__name__) from exc
            raise StoreUnavailable("redis_unreachable", type(exc).__name__) from exc
        except (StoreUnavailable, DurabilityRefused) as exc:  # a new node's check, after a round was sent
            if per_user:
                raise OutcomeUnknown("redis_not_durable", str(exc)[:200]) from exc
            raise
        return per_user, waits

    async def _node_write(
        self,
        node: ClusterNode,
        users: Sequence[str],
        how: Mapping[str, tuple[str, str]],
        calls: Calls,
        asking: Mapping[str, ClusterNode],
    ) -> tuple[list[Any], Any]:
        """One node's pipeline (redis-py's ``ClusterNode.execute_pipeline``: one connection of the cluster
        client's pool for that node): the users' replies and the wait's (``NO_WAIT`` when none is sent)."""
        commands: list[PipelineCommand] = []
        at: list[int] = []
        for user in users:
            if user in asking:  # ASKING holds for the next command of this connection only
                commands.append(PipelineCommand(len(commands), "ASKING"))
            (command, script), (keys, args) = how[user], calls[user]
            at.append(len(commands))
            commands.append(PipelineCommand(len(commands), command, script, len(keys), *keys, *args))
        wait = self.durability.command(self.waitaof.get(node.name, False))
        if wait is not None:
            commands.append(PipelineCommand(len(commands), *wait))
        await node.execute_pipeline(commands)
        return [commands[i].result for i in at], commands[-1].result if wait is not None else NO_WAIT

    async def _node_outcome(
        self,
        node: ClusterNode,
        users: Sequence[str],
        result: tuple[list[Any], Any] | BaseException,
        per_user: dict[str, Any],
        waits: list[Any],
        asking: dict[str, ClusterNode],
    ) -> list[str]:
        """Record one node's replies; the users to send again (redirected: not run)."""
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):
                raise result  # cancelled: the caller's budget is spent
            result = ([result] * len(users), result)  # the node failed: its users' outcome is unknown
        replies, wait = result
        again: list[str] = []
        ran = False
        for user, r in zip(users, replies, strict=True):
            asking.pop(user, None)
            per_user[user] = r  # kept when the redirects run out: an unknown outcome
            if isinstance(r, MovedError):  # the slot has moved (failover, resharding)
                await self.client.nodes_manager.move_slot(r)
                again.append(user)
            elif isinstance(r, AskError) and (to := self.client.get_node(r.host, r.port)) is not None:
                asking[user] = to  # the slot is migrating and the user's keys are on ``to`` already
                again.append(user)
            else:
                ran = ran or not isinstance(r, Exception)
        lost = (RedisConnectionError, RedisTimeoutError, OSError)
        if any(isinstance(r, lost) and not isinstance(r, MaxConnectionsError) for r in (*replies, wait)):
            await self.client.aclose()  # as redis-py's cluster pipeline does: reload the slot map on the next call
        if ran and wait is not NO_WAIT:
            waits.append(wait)
        return again
