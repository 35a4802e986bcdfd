"""The one place a synchronous Redis client is built: a single server or a Redis Cluster (``RedisSettings.cluster``).

Used by the refresh job, the demo seeder and ``cdrec export --added-items``; the service's asyncio client is built
beside it in service/adapters/redis_store.py (``client_for``). With ``cluster`` the URL names any one node: redis-py's
``RedisCluster`` discovers the others (CLUSTER SLOTS), routes each command to its slot's master and refreshes its
slot map after MOVED or a connection error (a failover). Every multi-key command cdrec sends stays inside one hash
slot (core.redis_keys), so the same calls run on both. ``redis`` is imported lazily: core stays importable without
the serve extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    import redis
    import redis.cluster

    SyncRedis: TypeAlias = redis.Redis | redis.cluster.RedisCluster
else:
    SyncRedis = Any


def sync_client(url: str, cluster: bool = False, **kwargs: Any) -> SyncRedis:
    """A client of the server (or cluster, any node's URL) at ``url``; ``kwargs`` go to redis-py's ``from_url``."""
    if cluster:
        from redis.cluster import RedisCluster

        return RedisCluster.from_url(url, **kwargs)
    import redis

    return redis.Redis.from_url(url, **kwargs)


def is_cluster(client: SyncRedis) -> bool:
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster)
