"""``RedisSequenceStore``: users' live sequences in Redis (DESIGN §5 layout, core.redis_keys).

* read: one pipeline of LRANGEs, one per domain the request needs: one round trip, bounded by ``timeout_s``;
  ``read_cached`` adds the GET of the refresh job's cached vector (raw bytes, never decoded) to that pipeline;
* append: one pipeline (no transaction) holding, per user, one EVAL of ``APPEND`` (RPUSH + LTRIM of each of that
  user's lists): the keys share the user's hash tag (one slot), so each user's append is atomic on one server and
  on a Redis Cluster alike (a cluster client cannot run MULTI inside a pipeline), and a batch is still one round
  trip per server; the call returns only after Redis answered every script;
* item texts (``POST /v1/items``): one EVAL per added batch (``ADD_TEXTS``: checks and HSETs the batch into
  ``cdrec:items:<domain>`` atomically, so two workers racing for one new id cannot both win), one HGETALL per
  domain when a bundle is loaded, one HLEN per domain and watch tick (``ItemTextStore``).

Anything that goes wrong on the way (refused connection, timeout, a reset) surfaces as ``StoreUnavailable``:
the Recommender answers degraded instead of failing. A stale pooled connection (Redis restarted) is retried
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
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.client import NEVER_DECODE
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from core.redis_keys import emb_key, item_texts_key, seq_key
from core.settings import RedisSettings
from service.ports import StoreUnavailable

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


# KEYS = one user's sequence lists (one hash tag, so one slot); ARGV[1] = max_len, then per key: n, item1..itemn.
# RPUSH then LTRIM each list, inside one script: atomic per user, and runnable on a Redis Cluster
APPEND = """
local max_len = tonumber(ARGV[1])
local at = 2
for k = 1, #KEYS do
  local n = tonumber(ARGV[at])
  if n > 0 then
    redis.call('RPUSH', KEYS[k], unpack(ARGV, at + 1, at + n))
    redis.call('LTRIM', KEYS[k], -max_len, -1)
  end
  at = at + n + 1
end
return #KEYS
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
    def __init__(self, client: AsyncRedis, timeout_s: float = 0.05, write_timeout_s: float = 1.0) -> None:
        self._client = client
        self.timeout_s = timeout_s
        self.write_timeout_s = write_timeout_s

    @classmethod
    def from_url(cls, url: str, settings: RedisSettings) -> RedisSequenceStore:
        return cls(client_for(url, settings), settings.timeout_s, settings.write_timeout_s)

    async def _run(self, pipe: Any, timeout_s: float) -> list[Any]:
        try:
            async with asyncio.timeout(timeout_s):
                result: list[Any] = await pipe.execute()
                return result
        except TimeoutError as exc:
            raise StoreUnavailable("redis_timeout", f"no answer within {timeout_s * 1e3:.0f} ms") from exc
        except (RedisError, OSError) as exc:
            raise StoreUnavailable("redis_unreachable", type(exc).__name__) from exc
        finally:
            await pipe.reset()

    async def read(self, user_id: str, domains: Sequence[str]) -> dict[str, list[str]]:
        pipe = self._client.pipeline(transaction=False)
        for domain in domains:
            pipe.lrange(seq_key(user_id, domain), 0, -1)
        lists = await self._run(pipe, self.timeout_s)
        return dict(zip(domains, lists, strict=True))

    async def read_cached(
        self, user_id: str, domains: Sequence[str], emb_domain: str
    ) -> tuple[dict[str, list[str]], bytes | None]:
        pipe = self._client.pipeline(transaction=False)
        for domain in domains:
            pipe.lrange(seq_key(user_id, domain), 0, -1)
        pipe.execute_command("GET", emb_key(user_id, emb_domain), **{NEVER_DECODE: True})
        *lists, cached = await self._run(pipe, self.timeout_s)
        return dict(zip(domains, lists, strict=True)), cached

    async def append(self, events: Mapping[str, Mapping[str, Sequence[str]]], max_len: int) -> None:
        pipe = self._client.pipeline(transaction=False)
        for user_id, by_domain in events.items():
            keys = [seq_key(user_id, domain) for domain in by_domain]
            args: list[str | int] = [max_len]
            for items in by_domain.values():
                args += [len(items), *items]
            pipe.eval(APPEND, len(keys), *keys, *args)
        replies = await self._run(pipe, self.write_timeout_s)
        # per user: the number of lists written; an error reply (raise_on_error off) is any other value
        if len(replies) != len(events) or any(isinstance(r, Exception) for r in replies):
            raise StoreUnavailable("redis_write_failed", repr([r for r in replies if isinstance(r, Exception)][:1]))

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
