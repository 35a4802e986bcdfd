"""The refresh job on a Redis Cluster: users partitioned by hash slot, written back one MSET per slot.

    CDREC_REDIS__CLUSTER=true cdrec refresh --redis-url redis://any-node:7000/0 [--domain music]

A cluster cannot MSET vectors of many slots together with one cursor key, and a SCAN cursor means nothing on
another node (or after a failover). So the unit of work is the slot (core.redis_keys):

1. the pass id ``cdrec:refresh:<domain>:pass`` is read (resume) or created (a new pass);
2. per master, one pipeline of ``CLUSTER COUNTKEYSINSLOT`` + GET of the slot's marker
   ``cdrec:{s<n>}:refresh:<domain>:done`` (a key placed in that very slot) over the slots it serves: the slots
   holding keys whose marker is not the current pass id are the work left;
3. slots are taken in order, ``CLUSTER GETKEYSINSLOT`` lists their users, and the shared code of
   ``service.refresh.RefreshJob`` reads (pipelines split by node), encodes (one ONNX batch of ~batch_size users)
   and packs the vectors;
4. per slot, one MSET of that slot's vectors *and* its marker: atomic, since every key is in the slot; a killed
   job resumes at the first unmarked slot; when every slot is done the markers and the pass key are deleted.

``refresh_slots`` (one group of slots, no pass bookkeeping beyond the markers) is what a Ray actor runs on its
partition (service.refresh_ray).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from redis.cluster import RedisCluster

from core.redis_keys import SLOTS, emb_key, refresh_pass_key, refresh_slot_key, user_from_seq_key
from service.bundle import ServingBundle
from service.refresh import RefreshJob, RefreshStats


class ClusterRefreshJob(RefreshJob):
    """One domain's refresh against a Redis Cluster (``client``: a ``RedisCluster`` of it)."""

    def __init__(
        self,
        client: RedisCluster,
        bundle: ServingBundle,
        domain: str,
        batch_size: int = 512,
        ttl_s: int | None = None,
    ) -> None:
        super().__init__(client, bundle, domain, batch_size, ttl_s)  # type: ignore[arg-type]
        self.pass_key = refresh_pass_key(domain)

    @staticmethod
    def _decoding(client: Any) -> Any:
        node = client.get_default_node()
        keep = ("username", "password", "socket_timeout", "socket_connect_timeout", "ssl")
        kwargs = {k: v for k, v in client.get_connection_kwargs().items() if k in keep}
        return RedisCluster(host=node.host, port=node.port, decode_responses=True, **kwargs)

    def close(self) -> None:
        self.client.close()

    def stored_cursor(self) -> int:
        """The number of this pass' slots already stored (0: no pass under way)."""
        pass_id = self.client.get(self.pass_key)
        if not pass_id:
            return 0
        return sum(1 for _, _, done in self.slot_states(pass_id) if done)

    def open_pass(self, restart: bool) -> str:
        pass_id = None if restart else self.client.get(self.pass_key)
        if not pass_id:
            pass_id = f"{time.time_ns():x}"
            self.client.set(self.pass_key, pass_id)
        return str(pass_id)

    def pending_slots(self, pass_id: str) -> list[int]:
        """Slots holding keys and not yet stored in pass ``pass_id``, in slot order."""
        return sorted(slot for slot, count, done in self.slot_states(pass_id) if count and not done)

    def slot_states(self, pass_id: str) -> Iterator[tuple[int, int, bool]]:
        """(slot, keys in it, stored in pass ``pass_id``) of every slot: one pipeline per master."""
        by_node: dict[str, list[int]] = {}
        for slot in range(SLOTS):
            node = self.client.nodes_manager.get_node_from_slot(slot)
            by_node.setdefault(node.name, []).append(slot)
        for name, slots in by_node.items():
            pipe = self.client.get_redis_connection(self.client.get_node(node_name=name)).pipeline(transaction=False)
            for slot in slots:
                pipe.execute_command("CLUSTER COUNTKEYSINSLOT", slot)
                pipe.get(refresh_slot_key(self.domain, slot))
            replies = pipe.execute()
            for i, slot in enumerate(slots):
                yield slot, int(replies[2 * i]), replies[2 * i + 1] == pass_id

    def slot_users(self, slot: int) -> list[str]:
        node = self.client.nodes_manager.get_node_from_slot(slot)
        conn = self.client.get_redis_connection(node)
        count = int(conn.execute_command("CLUSTER COUNTKEYSINSLOT", slot))
        keys = conn.execute_command("CLUSTER GETKEYSINSLOT", slot, count) if count else []
        return [u for k in keys if (u := user_from_seq_key(str(k), self.domain)) is not None]

    def refresh_slots(
        self, slots: Sequence[int], pass_id: str, only_stale: bool, stats: RefreshStats,
        on_batch: Callable[[RefreshStats, int], None] | None = None,
    ) -> None:  # fmt: skip
        """Refresh ``slots``: batches of ~batch_size users (whole slots), each slot's vectors + marker in one MSET;
        ``on_batch(stats, slots_in_batch)`` after each stored batch."""
        group: list[tuple[int, list[str]]] = []
        size = 0
        for n, slot in enumerate(slots):
            users = self.slot_users(slot)
            group.append((slot, users))
            size += len(users)
            if size >= self.batch_size or n == len(slots) - 1:
                self._store(group, pass_id, only_stale, stats)
                stats.batches += 1
                if on_batch is not None:
                    on_batch(stats, len(group))
                group, size = [], 0

    def _store(self, group: list[tuple[int, list[str]]], pass_id: str, only_stale: bool, stats: RefreshStats) -> None:
        users = [u for _, slot_users in group for u in slot_users]
        writes = self.encode(users, self.read(users, only_stale) if users else [], only_stale, stats)
        pipe = self.client.pipeline(transaction=False)
        for slot, slot_users in group:
            mset: dict[str, bytes | str] = {refresh_slot_key(self.domain, slot): pass_id}
            for user in slot_users:
                key = self._emb_key(user)
                if key in writes:
                    mset[key] = writes[key]
            flat = [x for pair in mset.items() for x in pair]
            # one slot: the vectors and the marker saying they are stored, atomically (redis-py refuses pipe.mset on
            # a cluster whatever the keys; as a raw command it is routed by its slot)
            pipe.execute_command("MSET", *flat)
            self.expire(pipe, (k for k in mset if k in writes))
        pipe.execute()

    def _emb_key(self, user: str) -> str:
        return emb_key(user, self.domain)

    def finish_pass(self) -> None:
        """Forget the pass: its markers (whatever pass id they hold) and the pass key."""
        pipe = self.client.pipeline(transaction=False)
        for slot in range(SLOTS):
            pipe.delete(refresh_slot_key(self.domain, slot))
        pipe.delete(self.pass_key)
        pipe.execute()

    def run(
        self,
        only_stale: bool = False,
        restart: bool = False,
        max_batches: int | None = None,
        on_batch: Callable[[RefreshStats], None] | None = None,
        progress: bool = True,
    ) -> RefreshStats:
        from tqdm import tqdm

        resumed = 0 if restart else self.stored_cursor()
        pass_id = self.open_pass(restart)
        todo = self.pending_slots(pass_id)
        stats = RefreshStats(resumed_from=resumed)
        started = time.perf_counter()
        bar = tqdm(desc=f"refresh {self.domain} (slots)", total=len(todo), disable=not progress, mininterval=0.5)

        class _Stop(Exception):
            pass

        def step(s: RefreshStats, n_slots: int) -> None:
            bar.update(n_slots)
            if on_batch is not None:
                on_batch(s)
            if max_batches is not None and s.batches >= max_batches:
                raise _Stop

        try:
            self.refresh_slots(todo, pass_id, only_stale, stats, step)
            stats.finished = True
        except _Stop:
            pass
        finally:
            bar.close()
        if stats.finished:
            self.finish_pass()
        stats.seconds = time.perf_counter() - started
        return stats
