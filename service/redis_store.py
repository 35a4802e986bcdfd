"""``RedisSequenceStore``: users' live sequences in Redis (DESIGN §5 layout, core.redis_keys).

* read: one pipeline of LRANGEs, one per domain the request needs: one round trip, bounded by ``timeout_s``;
  ``read_cached`` adds the GET of the refresh job's cached vector (raw bytes, never decoded) to that pipeline;
* append: one pipeline holding, per user, ``MULTI; RPUSH; LTRIM; ...; EXEC`` over that user's lists (one hash
  slot), so each user's append is atomic and a whole batch is still one round trip; the call returns only
  after Redis acknowledged every EXEC;
* item texts (``POST /v1/items``): one EVAL per added batch (``ADD_TEXTS``: checks and HSETs the batch into
  ``cdrec:items:<domain>`` atomically, so two workers racing for one new id cannot both win), one HGETALL per
  domain when a bundle is loaded, one HLEN per domain and watch tick (``ItemTextStore``).

Anything that goes wrong on the way (refused connection, timeout, a reset) surfaces as ``StoreUnavailable``:
the Recommender answers degraded instead of failing. A stale pooled connection (Redis restarted) is retried
once on a fresh one; timeouts are not retried, since their budget is already spent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.client import NEVER_DECODE
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from core.redis_keys import emb_key, item_texts_key, item_vectors_key, seq_key
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


def client_for(url: str, settings: RedisSettings) -> aredis.Redis:
    return aredis.Redis.from_url(
        url,
        decode_responses=True,  # hiredis decodes in C; the catalogue maps str ids
        socket_timeout=max(settings.timeout_s, settings.write_timeout_s),
        socket_connect_timeout=settings.connect_timeout_s,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        max_connections=settings.max_connections,
        health_check_interval=0,
    )


class RedisSequenceStore:
    def __init__(self, client: aredis.Redis, timeout_s: float = 0.05, write_timeout_s: float = 1.0) -> None:
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
            pipe.execute_command("MULTI")
            for domain, items in by_domain.items():
                key = seq_key(user_id, domain)
                pipe.rpush(key, *items)
                pipe.ltrim(key, -max_len, -1)
            pipe.execute_command("EXEC")
        replies = await self._run(pipe, self.write_timeout_s)
        # per user: OK, QUEUED..., [results]; EXEC answers None if the transaction was aborted
        failed = [r for r in replies if isinstance(r, Exception)]
        execs = [r for r in replies if isinstance(r, list)]
        if failed or len(execs) != len(events) or any(isinstance(x, Exception) for e in execs for x in e):
            raise StoreUnavailable("redis_write_failed", repr(failed[:1] or execs[:1]))

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
