"""``RedisSequenceStore``: users' live sequences in Redis (DESIGN §5 layout, core.redis_keys).

* read: one pipeline of LRANGEs, one per domain the request needs: one round trip, bounded by ``timeout_s``;
  ``read_cached`` adds the GET of the refresh job's cached vector (raw bytes, never decoded) to that pipeline;
* append: one pipeline holding, per user, ONE call of the ``APPEND_EVENTS`` Lua script (service.adapters.append_script:
  dedup by the client's ``event_id``, RPUSH, LTRIM, the user TTL, the lists vector on write encodes from
  read back; all keys under the user's hash tag), so
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
With a wait for durability (``redis.wait_replicas`` > 0, ``durability=fsync``) a cluster append goes through
service.adapters.cluster_writes instead: per node one pipeline of its users' script calls ending with the wait, on the
same connection, so each WAIT/WAITAOF covers exactly that node's writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.client import NEVER_DECODE
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError

from core.redis_keys import emb_key, item_texts_key, item_vectors_key, seq_key
from core.settings import RedisSettings
from service.adapters.append_script import APPEND_EVENTS, APPEND_SHA, append_call
from service.adapters.cluster_writes import NodeWrites
from service.durability import WAIT_SHARE, Durability, server_version, use_waitaof
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
        # on a cluster, a wait for durability runs per node (service.adapters.cluster_writes)
        waits = self.durability.mode == "fsync" or self.durability.wait_replicas > 0
        self._nodes: NodeWrites | None = None
        if waits and isinstance(client, AsyncRedisCluster):
            self._nodes = NodeWrites(client, self.durability, write_timeout_s)

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
        except (RedisError, RedisClusterException, OSError) as exc:  # a cluster's SlotNotCoveredError is no RedisError
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

    async def read_many(self, users: Sequence[str], domains: Sequence[str]) -> dict[str, dict[str, list[str]]]:
        """Vector-on-write's read: every user's lists of ``domains`` in one pipeline (one round trip)."""
        pipe = self._client.pipeline(transaction=False)
        for user in users:
            for domain in domains:
                pipe.lrange(seq_key(user, domain), 0, -1)
        lists = iter(await self._run(pipe, self.write_timeout_s))
        return {user: {domain: next(lists) for domain in domains} for user in users}

    async def write_vectors(self, vectors: Mapping[str, bytes]) -> None:
        """Vector-on-write's write: SET each cached user vector (``emb_key`` -> packed bytes), expiring with the
        user's lists when ``user_ttl_s`` is set (as the refresh job's do). Single-key SETs, so a cluster
        pipeline splits them by slot."""
        if not vectors:
            return
        pipe = self._client.pipeline(transaction=False)
        for key, raw in vectors.items():
            pipe.set(key, raw, px=self.ttl_ms or None)
        await self._run(pipe, self.write_timeout_s)

    async def check_durability(self) -> None:
        """Check once that the server gives ``redis.durability`` (service.durability); ``DurabilityRefused``
        says what to change. StoreUnavailable when Redis does not answer (checked again before a write).
        On a cluster every node the client knows is checked, replicas included; one that does not answer now is
        checked before the first write to it."""
        if self._waitaof is not None or self.durability.mode == "reply":
            self._waitaof = False
            return
        if self._nodes is not None:
            await self._nodes.check_all()
            self._waitaof = False  # per node: NodeWrites.waitaof
            return
        pipe = self._client.pipeline(transaction=False)
        pipe.info("server")
        pipe.config_get("append*")
        info, config = await self._run(pipe, self.write_timeout_s)
        self._waitaof = use_waitaof(self.durability.mode, server_version(info), dict(config))

    async def append(
        self,
        events: Mapping[str, Sequence[EventRecord]],
        max_len: int,
        domains: Sequence[str] = (),
        read: Sequence[str] = (),
    ) -> Appended:
        if self._waitaof is None:
            await self.check_durability()  # before anything is written: a refusal leaves nothing behind
        calls = {
            u: append_call(u, recs, max_len, domains, self.dedup_ms, self.ttl_ms, read) for u, recs in events.items()
        }
        per_user, waits = await self._write({u: ("EVALSHA", APPEND_SHA) for u in calls}, calls)
        missing = {u: ("EVAL", APPEND_EVENTS) for u, r in per_user.items() if isinstance(r, NoScriptError)}
        if missing:  # the server does not have the script yet (first use, restart, SCRIPT FLUSH): send it whole
            again, more = await self._write(missing, calls)
            per_user.update(again)
            waits += more
        appended = duplicates = 0
        lists: dict[str, dict[str, list[str]]] = {}
        for user, r in per_user.items():
            if isinstance(r, ResponseError) and str(r).startswith("WRONGTYPE"):
                raise BadKey(f"user {user!r}: {r}")
            if isinstance(r, Exception):
                raise OutcomeUnknown("redis_write_failed", repr(r)[:200])
            appended, duplicates = appended + int(r[0]), duplicates + int(r[1])
            lists[user] = dict(zip(read, r[2:], strict=True))
        for w in waits:  # one per pipeline that wrote: every node's (cluster) must be durable
            if isinstance(w, Exception):
                raise OutcomeUnknown("redis_wait_failed", str(w)[:200])
            if (short := self.durability.short(w)) is not None:
                raise OutcomeUnknown("redis_not_durable", short)
        return Appended(appended, duplicates, lists if read else None)

    async def _write(
        self, how: Mapping[str, tuple[str, str]], calls: Mapping[str, tuple[list[str], list[str | int]]]
    ) -> tuple[dict[str, Any], list[Any]]:
        """A script call per user of ``how`` (command, script or sha) in one pipeline ending with the wait: each
        user's reply, and the wait's reply (none without a wait)."""
        if self._nodes is not None:
            return await self._nodes.write(how, calls)
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
        except (RedisError, RedisClusterException, OSError) as exc:
            raise StoreUnavailable("redis_unreachable", type(exc).__name__) from exc

    async def aclose(self) -> None:
        await self._client.aclose()
