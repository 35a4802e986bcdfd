"""``RedisSequenceStore``: users' live sequences in Redis (DESIGN §5 layout, core.redis_keys).

* read: one pipeline of LRANGEs, one per domain the request needs: one round trip, bounded by ``timeout_s``;
  ``read_cached`` adds the GET of the refresh job's cached vector (raw bytes, never decoded) to that pipeline;
* append: one pipeline holding, per user, ONE call of the ``APPEND_EVENTS`` Lua script (service.append_script:
  dedup by the client's ``event_id``, RPUSH, LTRIM, the user TTL; all keys under the user's hash tag), so
  each user's append is atomic, it runs unchanged on Redis Cluster, and a whole batch is still one round trip
  (EVALSHA; EVAL for the users whose reply was NOSCRIPT); then, per ``redis.durability`` /
  ``redis.wait_replicas``, WAITAOF or WAIT on the same connection (service.durability). The call returns only
  after Redis acknowledged every script call (and the wait);
* item texts (``POST /v1/items``): one EVAL per added batch (``ADD_TEXTS``: checks and HSETs the batch into
  ``cdrec:items:<domain>`` atomically, so two workers racing for one new id cannot both win), one HGETALL per
  domain when a bundle is loaded, one HLEN per domain and watch tick (``ItemTextStore``).

Anything that goes wrong on the way (refused connection, timeout, a reset) surfaces as ``StoreUnavailable``:
the Recommender answers degraded instead of failing. A key of the wrong type (WRONGTYPE) is ``BadKey``: one
user's problem, never counted against Redis. On the write path every failure after the pipeline was sent is
``OutcomeUnknown``: the events may or may not be stored. A stale pooled connection (Redis restarted) is retried
once on a fresh one; timeouts are not retried, since their budget is already spent.

With ``RedisSettings.cluster`` the client is redis-py's ``redis.asyncio.cluster.RedisCluster`` (the URL names any
node): its pipelines split by node, every command here touches one slot, and after a failover (connection error,
MOVED) it reloads the slot map by itself, so the service answers degraded meanwhile and recovers without restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aredis
from redis.asyncio.cluster import ClusterNode, PipelineCommand
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.client import NEVER_DECODE
from redis.exceptions import AskError, MovedError, NoScriptError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.redis_keys import emb_key, item_texts_key, item_vectors_key, seq_key
from core.settings import RedisSettings
from service.append_script import APPEND_EVENTS, APPEND_SHA, append_call
from service.durability import WAIT_SHARE, Durability, server_version, use_waitaof, use_waitaof_per_node
from service.ports import Appended, BadKey, EventRecord, OutcomeUnknown, StoreUnavailable

# KEYS[1] = the domain's item text hash; ARGV = id1, text1, id2, text2, ...: when an id already holds ANOTHER text,
# write nothing and answer those ids with their texts; else write every pair (an id with the same text is a no-op)
ADD_TEXTS = """
local taken = {}
for i = 1, #ARGV, 2 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if cur and cur ~= ARGV[i + 1] then
    taken[#taken + 1] = ARGV[i]
    taken[#taken + 1] = cur
  end
end
if #taken == 0 then
  for i = 1, #ARGV, 2 do
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return taken
"""


AsyncRedis = aredis.Redis | AsyncRedisCluster
REDIRECTS = 2  # MOVED/ASK rounds a cluster write with a wait follows before its outcome is left unknown
NO_WAIT = object()  # a node pipeline that sent no wait


def client_for(url: str, settings: RedisSettings) -> AsyncRedis:
    """The service's client: one server, or (``settings.cluster``) a Redis Cluster reached through any node."""
    common: dict[str, Any] = {
        "decode_responses": True,  # hiredis decodes in C; the catalogue maps str ids
        "socket_timeout": max(settings.timeout_s, settings.write_timeout_s),
        "socket_connect_timeout": settings.connect_timeout_s,
        "max_connections": settings.max_connections,
        "health_check_interval": 0,
    }
    if settings.cluster:
        # no backoff inside a call: the request budget (asyncio.timeout) bounds it and the caller answers degraded;
        # after a connection error the client reloads its slot map, which is how a promoted replica is found
        return AsyncRedisCluster.from_url(url, retry=Retry(NoBackoff(), 1), **common)
    return aredis.Redis.from_url(url, retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)), **common)


class RedisSequenceStore:
    def __init__(
        self,
        client: AsyncRedis,
        timeout_s: float = 0.05,
        write_timeout_s: float = 1.0,
        *,
        event_dedup_s: float = 86400.0,
        user_ttl_s: float | None = None,
        durability: Durability | None = None,
    ) -> None:
        self._client = client
        self.timeout_s = timeout_s
        self.write_timeout_s = write_timeout_s
        self.dedup_ms = max(1, round(event_dedup_s * 1000))
        self.ttl_ms = 0 if user_ttl_s is None else max(1, round(user_ttl_s * 1000))
        self.durability = durability or Durability(timeout_ms=max(1, round(write_timeout_s * WAIT_SHARE * 1000)))
        self._waitaof: bool | None = None  # how ``fsync`` is given, once checked against the server
        self._node_waitaof: dict[str, bool] = {}  # the same per cluster node (name), once checked against it

    @classmethod
    def from_url(cls, url: str, settings: RedisSettings) -> RedisSequenceStore:
        wait_ms = max(1, round(settings.write_timeout_s * WAIT_SHARE * 1000))
        return cls(
            client_for(url, settings),
            settings.timeout_s,
            settings.write_timeout_s,
            event_dedup_s=settings.event_dedup_s,
            user_ttl_s=settings.user_ttl_s,
            durability=Durability(settings.durability, settings.wait_replicas, wait_ms),
        )

    async def _run(self, pipe: Any, timeout_s: float, raise_on_error: bool = True) -> list[Any]:
        try:
            async with asyncio.timeout(timeout_s):
                result: list[Any] = await pipe.execute(raise_on_error=raise_on_error)
                return result
        except TimeoutError as exc:
            raise StoreUnavailable("redis_timeout", f"no answer within {timeout_s * 1e3:.0f} ms") from exc
        except ResponseError as exc:  # the server answered, with an error (OOM, LOADING, READONLY, ...)
            raise StoreUnavailable("redis_error", str(exc)[:200]) from exc
        except (RedisError, OSError) as exc:
            raise StoreUnavailable("redis_unreachable", type(exc).__name__) from exc
        finally:
            await pipe.reset()

    async def _read_replies(self, pipe: Any) -> list[Any]:
        """A read pipeline's replies; a WRONGTYPE reply is that user's ``BadKey``, another error the store's."""
        replies = await self._run(pipe, self.timeout_s, raise_on_error=False)
        for r in replies:
            if isinstance(r, ResponseError):
                if str(r).startswith("WRONGTYPE"):
                    raise BadKey(str(r)[:200])
                raise StoreUnavailable("redis_error", str(r)[:200])
            if isinstance(r, Exception):
                raise StoreUnavailable("redis_unreachable", type(r).__name__)
        return replies

    async def read(self, user_id: str, domains: Sequence[str]) -> dict[str, list[str]]:
        pipe = self._client.pipeline(transaction=False)
        for domain in domains:
            pipe.lrange(seq_key(user_id, domain), 0, -1)
        lists = await self._read_replies(pipe)
        return dict(zip(domains, lists, strict=True))

    async def read_cached(
        self, user_id: str, domains: Sequence[str], emb_domain: str
    ) -> tuple[dict[str, list[str]], bytes | None]:
        pipe = self._client.pipeline(transaction=False)
        for domain in domains:
            pipe.lrange(seq_key(user_id, domain), 0, -1)
        pipe.execute_command("GET", emb_key(user_id, emb_domain), **{NEVER_DECODE: True})
        *lists, cached = await self._read_replies(pipe)
        return dict(zip(domains, lists, strict=True)), cached

    async def check_durability(self) -> None:
        """Check once that the server gives ``redis.durability`` (service.durability); ``DurabilityRefused``
        says what to change. StoreUnavailable when Redis does not answer (checked again before a write).
        On a cluster every node the client knows is checked, replicas included; one that does not answer now is
        checked before the first write to it."""
        if self._waitaof is not None or self.durability.mode == "reply":
            self._waitaof = False
            return
        if isinstance(self._client, AsyncRedisCluster):
            try:
                async with asyncio.timeout(self.write_timeout_s):
                    await self._client.initialize()
            except TimeoutError as exc:
                raise StoreUnavailable("redis_timeout", "cluster slot map") from exc
            except (RedisError, OSError) as exc:
                raise StoreUnavailable("redis_unreachable", type(exc).__name__) from exc
            await self._check_nodes(self._client.get_nodes(), skip_unreachable=True)
            self._waitaof = False  # per node: self._node_waitaof
            return
        pipe = self._client.pipeline(transaction=False)
        pipe.info("server")
        pipe.config_get("append*")
        info, config = await self._run(pipe, self.write_timeout_s)
        self._waitaof = use_waitaof(self.durability.mode, server_version(info), dict(config))

    async def _check_nodes(self, nodes: Sequence[ClusterNode], skip_unreachable: bool = False) -> None:
        """``fsync`` on cluster nodes: INFO server and CONFIG GET append* on each node's own connection."""

        async def config(node: ClusterNode) -> tuple[tuple[int, ...], dict[str, str]]:
            info = [PipelineCommand(0, "INFO", "server"), PipelineCommand(1, "CONFIG GET", "append*")]
            async with asyncio.timeout(self.write_timeout_s):
                await node.execute_pipeline(info)
            replies: list[Any] = [cmd.result for cmd in info]
            if error := next((r for r in replies if isinstance(r, Exception)), None):
                raise error
            return server_version(replies[0]), dict(replies[1])

        found = await asyncio.gather(*(config(n) for n in nodes), return_exceptions=True)
        answered: dict[str, tuple[tuple[int, ...], dict[str, str]]] = {}
        for node, got in zip(nodes, found, strict=True):
            if isinstance(got, (RedisError, OSError, TimeoutError)):
                if skip_unreachable:  # e.g. a replica down now: checked before it is first written to
                    continue
                raise StoreUnavailable("redis_unreachable", f"durability check of {node.name}: {got!r}"[:200])
            if isinstance(got, BaseException):
                raise got
            answered[node.name] = got
        self._node_waitaof.update(use_waitaof_per_node(self.durability.mode, answered))

    async def append(
        self, events: Mapping[str, Sequence[EventRecord]], max_len: int, domains: Sequence[str] = ()
    ) -> Appended:
        if self._waitaof is None:
            await self.check_durability()  # before anything is written: a refusal leaves nothing behind
        calls = {u: append_call(u, recs, max_len, domains, self.dedup_ms, self.ttl_ms) for u, recs in events.items()}
        per_user, waits = await self._write({u: ("EVALSHA", APPEND_SHA) for u in calls}, calls)
        missing = {u: ("EVAL", APPEND_EVENTS) for u, r in per_user.items() if isinstance(r, NoScriptError)}
        if missing:  # the server does not have the script yet (first use, restart, SCRIPT FLUSH): send it whole
            again, more = await self._write(missing, calls)
            per_user.update(again)
            waits += more
        appended = duplicates = 0
        for user, r in per_user.items():
            if isinstance(r, ResponseError) and str(r).startswith("WRONGTYPE"):
                raise BadKey(f"user {user!r}: {r}")
            if isinstance(r, Exception):
                raise OutcomeUnknown("redis_write_failed", repr(r)[:200])
            appended, duplicates = appended + int(r[0]), duplicates + int(r[1])
        for w in waits:  # one per pipeline that wrote: every node's (cluster) must be durable
            if isinstance(w, Exception):
                raise OutcomeUnknown("redis_wait_failed", str(w)[:200])
            if (short := self.durability.short(w)) is not None:
                raise OutcomeUnknown("redis_not_durable", short)
        return Appended(appended, duplicates)

    async def _write(
        self, how: Mapping[str, tuple[str, str]], calls: Mapping[str, tuple[list[str], list[str | int]]]
    ) -> tuple[dict[str, Any], list[Any]]:
        """A script call per user of ``how`` (command, script or sha) in one pipeline ending with the wait: each
        user's reply, and the wait's reply (none without a wait)."""
        if isinstance(self._client, AsyncRedisCluster) and self._waits_per_node:
            return await self._write_per_node(self._client, how, calls)
        wait = self.durability.command(bool(self._waitaof))
        pipe = self._client.pipeline(transaction=False)
        for user, (command, script) in how.items():
            keys, args = calls[user]
            pipe.execute_command(command, script, len(keys), *keys, *args)
        if wait is not None:
            pipe.execute_command(*wait)
        try:
            replies = await self._run(pipe, self.write_timeout_s, raise_on_error=False)
        except StoreUnavailable as exc:  # sent, maybe executed: only a retry with the same event ids can tell
            raise OutcomeUnknown(exc.reason, exc.detail) from exc
        return dict(zip(how, replies, strict=False)), replies[len(how) :]

    @property
    def _waits_per_node(self) -> bool:
        return self.durability.mode == "fsync" or self.durability.wait_replicas > 0

    async def _write_per_node(
        self,
        client: AsyncRedisCluster,
        how: Mapping[str, tuple[str, str]],
        calls: Mapping[str, tuple[list[str], list[str | int]]],
    ) -> tuple[dict[str, Any], list[Any]]:
        """``_write`` on a cluster with a wait: users grouped by the node that owns their slot (the client's slot
        map), and per node ONE pipeline on one connection: its users' script calls, then the wait, so the wait
        covers exactly them. A MOVED or ASK reply means Redis refused the call before running it (nothing
        written): the client's slot map is corrected the way redis-py does it (``move_slot``; ASKING on the
        named node) and those users are sent again, at most ``REDIRECTS`` times. A node that fails (connection
        lost, timeout) leaves its users' outcome unknown and has the client reload its slot map on the next
        call, which is how a promoted replica is found."""
        per_user: dict[str, Any] = {}
        waits: list[Any] = []
        asking: dict[str, ClusterNode] = {}  # users an ASK sent to another node (a slot being migrated)
        todo = list(how)
        try:
            async with asyncio.timeout(self.write_timeout_s):
                await client.initialize()
                for _ in range(1 + REDIRECTS):
                    groups: dict[str, tuple[ClusterNode, list[str]]] = {}
                    for user in todo:
                        node = asking.get(user) or client.get_node_from_key(calls[user][0][0])
                        assert node is not None  # get_node_from_key raises SlotNotCoveredError instead
                        groups.setdefault(node.name, (node, []))[1].append(user)
                    if self.durability.mode == "fsync" and (
                        new := [n for n, _ in groups.values() if n.name not in self._node_waitaof]
                    ):
                        await self._check_nodes(new)  # a node first seen now (e.g. promoted, added)
                    sent = [(node, users, self._node_write(node, users, how, calls, asking))
                            for node, users in groups.values()]  # fmt: skip
                    results = await asyncio.gather(*(w for _, _, w in sent), return_exceptions=True)
                    todo = []
                    for (node, users, _), result in zip(sent, results, strict=True):
                        todo += await self._node_outcome(client, node, users, result, per_user, waits, asking)
                    if not todo:
                        break
        except TimeoutError as exc:
            raise OutcomeUnknown("redis_timeout", f"no answer within {self.write_timeout_s * 1e3:.0f} ms") from exc
        except (RedisError, OSError) as exc:  # the slot map could not be loaded: nothing was sent
            raise StoreUnavailable("redis_unreachable", type(exc).__name__) from exc
        return per_user, waits

    async def _node_write(
        self,
        node: ClusterNode,
        users: Sequence[str],
        how: Mapping[str, tuple[str, str]],
        calls: Mapping[str, tuple[list[str], list[str | int]]],
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
        wait = self.durability.command(self._node_waitaof.get(node.name, False))
        if wait is not None:
            commands.append(PipelineCommand(len(commands), *wait))
        await node.execute_pipeline(commands)
        return [commands[i].result for i in at], commands[-1].result if wait is not None else NO_WAIT

    async def _node_outcome(
        self,
        client: AsyncRedisCluster,
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
                await client.nodes_manager.move_slot(r)
                again.append(user)
            elif isinstance(r, AskError) and (to := client.get_node(r.host, r.port)) is not None:
                asking[user] = to  # the slot is migrating and the user's keys are on ``to`` already
                again.append(user)
            else:
                ran = ran or not isinstance(r, Exception)
        if any(isinstance(r, (RedisConnectionError, RedisTimeoutError, OSError)) for r in (*replies, wait)):
            await client.aclose()  # as redis-py's cluster pipeline does: reload the slot map on the next call
        if ran and wait is not NO_WAIT:
            waits.append(wait)
        return again

    async def add_texts(self, domain: str, texts: Mapping[str, str]) -> dict[str, str]:
        pipe = self._client.pipeline(transaction=False)
        pipe.eval(ADD_TEXTS, 1, item_texts_key(domain), *(x for pair in texts.items() for x in pair))
        (taken,) = await self._run(pipe, self.write_timeout_s)
        return dict(zip(taken[::2], taken[1::2], strict=True))

    async def read_texts(self, domain: str) -> dict[str, str]:
        pipe = self._client.pipeline(transaction=False)
        pipe.hgetall(item_texts_key(domain))
        (texts,) = await self._run(pipe, self.write_timeout_s)  # a load-time read: the write budget applies
        return dict(texts)

    async def count_texts(self, domain: str) -> int:
        pipe = self._client.pipeline(transaction=False)
        pipe.hlen(item_texts_key(domain))
        (n,) = await self._run(pipe, self.timeout_s)
        return int(n)

    async def add_vectors(self, domain: str, fingerprint: str, vectors: Mapping[str, str]) -> None:
        pipe = self._client.pipeline(transaction=False)
        mapping: dict[Any, Any] = dict(vectors)  # redis-py's Mapping key type is invariant
        pipe.hset(item_vectors_key(domain, fingerprint), mapping=mapping)
        await self._run(pipe, self.write_timeout_s)

    async def read_vectors(self, domain: str, fingerprint: str, ids: Sequence[str]) -> list[str | None]:
        if not ids:
            return []
        pipe = self._client.pipeline(transaction=False)
        pipe.hmget(item_vectors_key(domain, fingerprint), list(ids))
        (values,) = await self._run(pipe, self.write_timeout_s)  # a load-time read: the write budget applies
        return list(values)

    async def ping(self) -> None:
        try:
            async with asyncio.timeout(max(self.timeout_s, 0.25)):
                await self._client.ping()
        except TimeoutError as exc:
            raise StoreUnavailable("redis_timeout", "PING") from exc
        except (RedisError, OSError) as exc:
            raise StoreUnavailable("redis_unreachable", type(exc).__name__) from exc

    async def aclose(self) -> None:
        await self._client.aclose()
