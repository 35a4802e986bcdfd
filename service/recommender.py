"""The ``Recommender``: the service's behaviour, between the HTTP routes and the three adapters.

It knows nothing of HTTP or of which Redis, onnxruntime or FAISS it talks to (service.ports), so its unit
tests run on in-memory fakes. One request reads the user's live sequences in one store round trip, chooses
the path from them (target history -> the user encoder, "gur"; none but source history -> a bridge, "bridge";
nothing -> popularity, "popular"), and runs the encoder and the index search in the executor, off the event
loop (onnxruntime and FAISS release the GIL, so the loop keeps serving meanwhile), micro-batched with the
other requests waiting for it (service.batcher). At light load (``inline_max_active``: at most that many
recommend requests in progress in this worker, this one included, and the executor idle) the two calls run on
the loop itself instead: the hand-off to the executor's thread and back costs two thread wake-ups, which is
what a request waits for at half load, while the loop blocked for one request's ~1 ms keeps Redis replies late
by no more than that. Busier, every request goes through the batcher as before.

Degraded, not down: when the store fails or is slow the answer is popularity flagged ``degraded``, for that
request only; requests skip the store only once the circuit breaker (service.breaker) opened on a failure
rate or on consecutive refused connections, so a dead Redis costs no request its timeout while one slow read
costs one request. A wrong-type key degrades its user's requests and never counts against the store. A
user-encoder request also fetches, in the same round trip, the refresh job's cached vector (service.refresh)
and searches with it, skipping the encoder, when it was made by the serving bundle version from the very
sequences just read (fingerprint). The bundle is swapped whole (``swap``): a request keeps the bundle it
started with.

Vector on write (``encode_on_write``): once the store acknowledged an append, each user whose sequences a user
encoder reads is re-read and encoded (batched with the requests through the batcher) and the vector stored
under the same key and format as the refresh job's (version + fingerprint of the lists it was encoded from), so
the user's next read takes the cached path. The ack waits for that at most ``write_wait_s`` (the events are
stored either way); past it the work finishes in the background. A vector that lost a race with a newer
append carries the older fingerprint and is never served; when the write path is slow, failing or off, reads
encode live as before.

Multi-interest retrieval: a K-vector user encoder (a DSS bundle, ``Graph.intents``) gives (K, D) per user;
the index searches the K queries in one batched FAISS call and merges them by each item's best score
(service.adapters.faiss_index ``search_intents``), with the same exclusions, and the answer's strategy is ``dss``. A
graph whose manifest ``intent_score`` is intent-aware ("quota", "round-robin") draws the list across the
intents instead (the index's ``intent_view``, ``_intent_merged``). The refresh job caches such a user's K * D
floats, read back here as K queries (``_intent_rows``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence, Set
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Literal, cast

from core.redis_keys import FORBIDDEN_IN_IDS, emb_key, pack_embedding, sequence_fingerprint, unpack_embedding
from service.batcher import Batcher, Ranked
from service.breaker import BreakerPolicy, CircuitBreaker
from service.bundle import Catalogue, Graph, ServingBundle
from service.errors import InvalidRequest, NotFound
from service.ports import (
    Appended,
    BadKey,
    EventRecord,
    FloatArray,
    IntArray,
    ItemIndex,
    SequenceStore,
    StoreUnavailable,
    VectorStore,
)
from service.schemas import CONTROL

log = logging.getLogger("cdrec.service")


Strategy = Literal["gur", "dss", "bridge", "popular", "similar"]
# vector-on-write batches still running past their ack beyond which new ones are shed (memory stays bounded
# when writes outpace the encoder; a shed user's next read encodes live)
MAX_PENDING_VECTOR_WRITES = 256


@dataclass(frozen=True)
class Limits:
    max_k: int = 100
    max_batch: int = 1000
    max_exclude: int = 1000
    max_id_len: int = 128

    def k(self, k: int) -> int:
        if not 1 <= k <= self.max_k:
            raise InvalidRequest(f"k must be between 1 and {self.max_k}, got {k}")
        return k

    def id(self, what: str, value: str) -> str:
        if not value or len(value) > self.max_id_len:
            raise InvalidRequest(f"{what} must be 1 to {self.max_id_len} characters long, got {len(value)}")
        if what == "user_id" and FORBIDDEN_IN_IDS & set(value):
            raise InvalidRequest("user_id must not contain '{' or '}'")
        if CONTROL.search(value):
            raise InvalidRequest(f"{what} must not contain control characters")
        return value


@dataclass
class Recommendation:
    items: list[tuple[str, float]]
    strategy: Strategy
    model_version: str
    degraded: bool = False
    fallback: str | None = None  # why it degraded: a metric label
    source_domain: str | None = None
    cached: bool = False  # the user vector came from the refresh job (same version, same sequences)


@dataclass(frozen=True)
class Event:
    user_id: str
    domain: str
    item_id: str
    event_id: str | None = None


class Recommender:
    def __init__(
        self,
        bundle: ServingBundle,
        store: SequenceStore,
        executor: Executor | None = None,
        limits: Limits | None = None,
        retry_after_s: float = 1.0,
        executor_threads: int = 1,
        breaker: CircuitBreaker | None = None,
        encode_on_write: bool = False,
        write_wait_s: float = 0.02,
        inline_max_active: int = 0,
    ) -> None:
        self.bundle = bundle
        self.store = store
        self.limits = limits or Limits()
        self.health = breaker or CircuitBreaker(BreakerPolicy(open_s=retry_after_s))
        self._executor = executor  # None: native calls run inline on the loop (benchmarks only)
        self.batcher = None if executor is None else Batcher(executor, max_inflight=max(1, executor_threads))
        self.encode_on_write = encode_on_write and isinstance(store, VectorStore)
        self.write_wait_s = write_wait_s
        self.written_vectors = {"stored": 0, "failed": 0, "skipped": 0}  # vector-on-write outcomes (tests, bench)
        self._vector_tasks: set[asyncio.Future[None]] = set()  # referenced until done (asyncio keeps weak refs)
        self.inline_max_active = inline_max_active
        self.active = 0  # recommend / cold_start requests in progress in this worker
        self.inlined = 0  # model calls run on the loop at light load (tests, bench)

    def swap(self, bundle: ServingBundle) -> ServingBundle:
        old, self.bundle = self.bundle, bundle
        return old

    # -- reads --------------------------------------------------------------------------------------------
    async def recommend(
        self, user_id: str, domain: str, k: int, exclude_seen: bool = True, exclude: Sequence[str] = ()
    ) -> Recommendation:
        with self._in_progress():
            return await self._recommend(user_id, domain, k, exclude_seen, exclude)

    async def _recommend(
        self, user_id: str, domain: str, k: int, exclude_seen: bool, exclude: Sequence[str]
    ) -> Recommendation:
        b = self.bundle
        cat = self._served(b, domain)
        self._check(user_id, k, exclude)
        encoder, bridges = b.encoders.get(domain), b.bridges.get(domain, [])
        reads = [*(encoder.read_domains() if encoder else ()), *(d for g in bridges for d in g.read_domains())]
        needed = _unique([domain, *reads])
        excluded = set(cat.known_rows(exclude))
        try:
            seqs, cached = await self._read(user_id, needed, domain if encoder is not None else None)
        except StoreUnavailable as exc:
            return self._popular(b, cat, k, excluded, degraded=True, fallback=exc.reason)
        history = seqs.get(domain, ())
        if exclude_seen:
            excluded.update(cat.known_rows(history))
        # items added by text after the bundle was made are not encoder input: a history of only those is none
        if encoder is not None and cat.encodable_rows(history):
            vector = _fresh_vector(cached, b.version, encoder, seqs)
            if vector is not None:
                return await self._cached(b, encoder, vector, k, excluded)
            return await self._model(b, encoder, seqs, k, excluded, _encoder_strategy(encoder))
        bridge = _best_bridge(bridges, seqs, b.catalogues)
        if bridge is not None:
            return await self._model(b, bridge, seqs, k, excluded, "bridge")
        return self._popular(b, cat, k, excluded)

    async def cold_start(self, user_id: str, domain: str, k: int) -> Recommendation:
        """The bridge's answer from the user's source history (the lookup for a user new to ``domain``)."""
        with self._in_progress():
            return await self._cold_start(user_id, domain, k)

    async def _cold_start(self, user_id: str, domain: str, k: int) -> Recommendation:
        b = self.bundle
        cat = self._served(b, domain)
        self._check(user_id, k, ())
        bridges = b.bridges.get(domain, [])
        if not bridges:
            served = ", ".join(sorted(b.bridges)) or "none"
            raise InvalidRequest(f"no bridge into domain {domain!r} in bundle {b.version} (bridged: {served})")
        needed = _unique([domain, *(d for g in bridges for d in g.read_domains())])
        try:
            seqs, _ = await self._read(user_id, needed)
        except StoreUnavailable as exc:
            return self._popular(b, cat, k, set(), degraded=True, fallback=exc.reason)
        excluded = set(cat.known_rows(seqs.get(domain, ())))
        bridge = _best_bridge(bridges, seqs, b.catalogues)
        if bridge is None:
            return self._popular(b, cat, k, excluded)
        return await self._model(b, bridge, seqs, k, excluded, "bridge")

    async def similar(self, item_id: str, domain: str, k: int) -> Recommendation:
        b = self.bundle
        self.limits.id("item_id", item_id)
        self.limits.k(k)
        key = b.similar_index.get(domain)
        if key is None:
            known = ", ".join(sorted(b.similar_index)) or "none"
            raise InvalidRequest(f"domain {domain!r} has no item index in bundle {b.version} (indexed: {known})")
        row = b.catalogues[domain].rows.get(item_id)
        if row is None:
            raise NotFound(f"item {item_id!r} is not in the {domain} catalogue of bundle {b.version}", "unknown_item")
        index = b.indexes[key]
        rows, scores = await self._call(partial(_similar, index, row, k))
        items = [(b.catalogues[domain].ids[r], s) for r, s in zip(rows, scores, strict=True)]
        return Recommendation(items, "similar", b.version)

    # -- writes -------------------------------------------------------------------------------------------
    def validate_events(self, events: Sequence[Event]) -> dict[str, list[EventRecord]]:
        """Group a batch by user (arrival order kept); refuse it whole, naming what is unknown."""
        if not events:
            raise InvalidRequest("no events")
        if len(events) > self.limits.max_batch:
            raise InvalidRequest(f"at most {self.limits.max_batch} events per request, got {len(events)}")
        b = self.bundle
        grouped: dict[str, list[EventRecord]] = {}
        for n, e in enumerate(events):
            self.limits.id("user_id", e.user_id)
            self.limits.id("item_id", e.item_id)
            if e.event_id is not None:
                self.limits.id("event_id", e.event_id)
            cat = b.catalogues.get(e.domain)
            if cat is None:
                known = ", ".join(sorted(b.catalogues))
                raise InvalidRequest(f"event {n}: unknown domain {e.domain!r} (known: {known})", "unknown_domain")
            if e.item_id not in cat.rows:
                raise InvalidRequest(
                    f"event {n}: unknown item {e.item_id!r} in domain {e.domain!r} (bundle {b.version})", "unknown_item"
                )
            grouped.setdefault(e.user_id, []).append(EventRecord(e.domain, e.item_id, e.event_id))
        return grouped

    async def append(self, events: Sequence[Event]) -> Appended:
        """Validate, then append every event not already stored under its ``event_id``; return once the store
        acknowledged them (else StoreUnavailable: OutcomeUnknown when they may have been stored)."""
        grouped = self.validate_events(events)
        b = self.bundle
        try:
            if self.encode_on_write:  # the lists to encode come back from the append itself: one round trip
                read = _written_reads(b, grouped)
                done = await self.store.append(grouped, b.max_len, sorted(b.catalogues), read=read)
            else:
                done = await self.store.append(grouped, b.max_len, sorted(b.catalogues))
        except StoreUnavailable as exc:
            self._failed(exc)
            raise
        self.health.success()
        if self.encode_on_write and done.appended:  # only duplicates: the lists (and their vectors) are unchanged
            await self._encode_written(b, grouped, done.lists)
        return done

    async def _encode_written(
        self,
        b: ServingBundle,
        grouped: Mapping[str, Sequence[EventRecord]],
        lists: Mapping[str, Mapping[str, list[str]]] | None = None,
    ) -> None:
        """Start vector-on-write for the users of an acknowledged append; wait for it at most ``write_wait_s``.
        ``lists``: the users' lists as the append left them (read back by the append itself), else re-read."""
        plan = _write_plan(b, grouped)
        if not plan:
            return
        if len(self._vector_tasks) >= MAX_PENDING_VECTOR_WRITES:  # encoding cannot keep up: shed, reads encode live
            self.written_vectors["skipped"] += 1
            return
        task = asyncio.ensure_future(self._store_vectors(b, plan, lists))
        self._vector_tasks.add(task)
        task.add_done_callback(self._vector_tasks.discard)
        await asyncio.wait({task}, timeout=self.write_wait_s)  # never raises; past the bound the task carries on

    async def _store_vectors(
        self,
        b: ServingBundle,
        plan: Sequence[tuple[Graph, Sequence[str]]],
        lists: Mapping[str, Mapping[str, list[str]]] | None = None,
    ) -> None:
        store = self.store
        assert isinstance(store, VectorStore)
        try:
            users = _unique([u for _, us in plan for u in us])
            domains = _unique([d for g, _ in plan for d in g.read_domains()])
            if lists is not None and all(d in lists.get(u, {}) for u in users for d in domains):
                seqs: Mapping[str, Mapping[str, Sequence[str]]] = lists
            else:  # a store that did not answer them with the append: one more round trip
                seqs = await store.read_many(users, domains)
            todo: list[tuple[str, str, asyncio.Future[FloatArray]]] = []
            for graph, us in plan:
                cat = b.catalogues[graph.target_domain]
                for u in us:
                    if not cat.encodable_rows(seqs[u].get(graph.target_domain, ())):
                        continue  # no target history: reads take the bridge or popularity, no vector to cache
                    key = emb_key(u, graph.target_domain)
                    fingerprint = sequence_fingerprint(seqs[u], graph.read_domains())
                    todo.append((key, fingerprint, asyncio.ensure_future(self._encode(graph, seqs[u], b))))
            vectors = await asyncio.gather(*(f for _, _, f in todo))
            await store.write_vectors(
                {key: pack_embedding(b.version, fp, v) for (key, fp, _), v in zip(todo, vectors, strict=True)}
            )
            self.written_vectors["stored"] += len(todo)
        except Exception:  # the events are stored: a read without a cached vector encodes live
            self.written_vectors["failed"] += 1
            log.warning("vector on write failed; those users' next reads encode live", exc_info=True)

    async def _encode(self, graph: Graph, seqs: Mapping[str, Sequence[str]], b: ServingBundle) -> FloatArray:
        feeds = graph.feeds(seqs, b.catalogues)
        if self.batcher is not None:
            return await self.batcher.encode(graph, feeds)
        vector: FloatArray = graph.encoder(feeds)[0]
        return vector

    async def drain_writes(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for vector-on-write work still running (shutdown, tests); True when none is."""
        if self._vector_tasks:
            await asyncio.wait(set(self._vector_tasks), timeout=timeout_s)
        return not self._vector_tasks

    async def check_store(self) -> bool:
        """Probe the store now (readiness); a success ends the skip window at once."""
        try:
            await self.store.ping()
        except StoreUnavailable as exc:
            self._failed(exc)
            return False
        self.health.close()
        return True

    # -- internals ----------------------------------------------------------------------------------------
    def _served(self, b: ServingBundle, domain: str) -> Catalogue:
        if domain not in b.encoders and domain not in b.bridges:
            served = ", ".join(b.served_domains()) or "none"
            raise InvalidRequest(f"domain {domain!r} is not served by bundle {b.version} (served: {served})")
        return b.catalogues[domain]

    def _check(self, user_id: str, k: int, exclude: Sequence[str]) -> None:
        self.limits.id("user_id", user_id)
        self.limits.k(k)
        if len(exclude) > self.limits.max_exclude:
            raise InvalidRequest(f"exclude holds at most {self.limits.max_exclude} ids, got {len(exclude)}")
        for item in exclude:
            self.limits.id("exclude item_id", item)

    async def _read(
        self, user_id: str, domains: Sequence[str], emb_domain: str | None = None
    ) -> tuple[dict[str, list[str]], bytes | None]:
        """The user's lists (and, with ``emb_domain``, the refresh job's cached vector) in one round trip."""
        if not self.health.allow():
            raise StoreUnavailable("redis_skipped", self.health.last_error or "")
        cached = None
        try:
            if emb_domain is None:
                seqs = await self.store.read(user_id, domains)
            else:
                seqs, cached = await self.store.read_cached(user_id, domains, emb_domain)
        except StoreUnavailable as exc:
            self._failed(exc)
            raise
        self.health.success()
        return seqs, cached

    def _failed(self, exc: StoreUnavailable) -> None:
        """One failed store call: the request degrades; the breaker decides whether the next ones skip."""
        if isinstance(exc, BadKey):  # one user's key, not the store: the store answered
            log.warning("a user key has the wrong type (%s): that user's request answers degraded", exc)
            self.health.success()
            return
        if self.health.failure(exc.reason, exc.detail):
            log.warning("sequence store failing (%s): skipping it for %.1f s", exc, self.health.policy.open_s)

    async def _call(self, fn: Callable[[], Ranked]) -> Ranked:
        """One native call: on the loop without an executor or at light load (``_inline_now``), else in it."""
        if self._executor is None or self._inline_now():
            return fn()
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def _model(
        self,
        b: ServingBundle,
        graph: Graph,
        seqs: Mapping[str, Sequence[str]],
        k: int,
        excluded: set[int],
        strategy: Strategy,
    ) -> Recommendation:
        feeds = graph.feeds(seqs, b.catalogues)
        cat = b.catalogues[graph.target_domain]
        index = _intent_merged(b.indexes[graph.index], graph)
        try:
            if self.batcher is not None and not self._inline_now():
                rows, scores = await self.batcher.run(graph, index, feeds, k, excluded)
            else:
                rows, scores = _encode_and_search(graph, index, feeds, k, excluded)
        except Exception as exc:  # a native failure on one request must not take the route down
            log.exception("%s failed on a request; answering popularity", graph.name)
            return self._popular(b, cat, k, excluded, degraded=True, fallback=f"model_error:{type(exc).__name__}")
        items = [(cat.ids[r], s) for r, s in zip(rows, scores, strict=True)]
        source = graph.source_domain if strategy == "bridge" else None
        return Recommendation(items, strategy, b.version, source_domain=source)

    @contextmanager
    def _in_progress(self) -> Iterator[None]:
        """Count a recommend / cold-start request in ``active`` until it is answered or fails."""
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1

    def _inline_now(self) -> bool:
        """Light load: few requests in progress here and nothing queued for or running in the executor."""
        if self.batcher is not None and 0 < self.active <= self.inline_max_active and self.batcher.idle:
            self.inlined += 1
            return True
        return False

    async def _cached(
        self, b: ServingBundle, encoder: Graph, vector: FloatArray, k: int, excluded: set[int]
    ) -> Recommendation:
        """The user encoder's answer from the refresh job's vector: the search alone, no encoder call."""
        cat = b.catalogues[encoder.target_domain]
        try:
            index = _intent_merged(b.indexes[encoder.index], encoder)
            rows, scores = await self._call(partial(index.search, vector, k, excluded))
        except Exception as exc:
            log.exception("search on a cached vector failed; answering popularity")
            return self._popular(b, cat, k, excluded, degraded=True, fallback=f"model_error:{type(exc).__name__}")
        items = [(cat.ids[r], s) for r, s in zip(rows, scores, strict=True)]
        return Recommendation(items, _encoder_strategy(encoder), b.version, cached=True)

    def _popular(
        self,
        b: ServingBundle,
        cat: Catalogue,
        k: int,
        excluded: Set[int],
        degraded: bool = False,
        fallback: str | None = None,
    ) -> Recommendation:
        items: list[tuple[str, float]] = []
        for row, score in zip(cat.popular, cat.popular_scores, strict=True):
            if row not in excluded:
                items.append((cat.ids[row], score))
                if len(items) == k:
                    break
        return Recommendation(items, "popular", b.version, degraded, fallback)


def _encode_and_search(
    graph: Graph, index: ItemIndex, feeds: Mapping[str, IntArray], k: int, excluded: set[int]
) -> Ranked:
    """The one blocking call per request: user vector, then the top-k rows outside ``excluded``."""
    vector = graph.encoder(feeds)[0]  # (1, D) -> (D,)
    return index.search(vector, k, excluded)


def _fresh_vector(
    raw: bytes | None, version: str, encoder: Graph, seqs: Mapping[str, Sequence[str]]
) -> FloatArray | None:
    """The cached vector when it was made by this bundle version from exactly these sequences, else None."""
    cached = unpack_embedding(raw)
    if cached is None or cached[0] != version:
        return None
    if cached[1] != sequence_fingerprint(seqs, encoder.read_domains()):
        return None
    return _intent_rows(cached[2], encoder)


def _encoder_strategy(encoder: Graph) -> Strategy:
    """A K-vector user encoder (DSS) answers ``dss`` (multi-interest retrieval); a one-vector one ``gur``."""
    return "gur" if encoder.intents is None else "dss"


def _intent_merged(index: ItemIndex, graph: Graph) -> ItemIndex:
    """The index a DSS graph searches: with an intent-aware ``intent_score`` (quota, round-robin) its view that
    draws the list across the K intents (service.adapters.faiss_index ``intent_view``); otherwise the index itself."""
    if graph.intents is None or graph.intent_score in (None, "max"):
        return index
    view = getattr(index, "intent_view", None)
    if view is None:
        raise TypeError(f"{type(index).__name__} cannot merge intents by {graph.intent_score!r}")
    return cast(ItemIndex, view(graph.intent_score))


def _intent_rows(vector: FloatArray, encoder: Graph) -> FloatArray | None:
    """The refresh job stores a K-vector encoder's K * D floats flat (pack_embedding of its (K, D) row): back to
    (K, D), so the cached path searches the K queries as the live one does (None when the length disagrees)."""
    if encoder.intents is None:
        return vector
    if vector.size % encoder.intents:
        return None
    return vector.reshape(encoder.intents, -1)


def _similar(index: ItemIndex, row: int, k: int) -> Ranked:
    return index.search(index.vector(row), k, {row})


def _best_bridge(
    bridges: Sequence[Graph], seqs: Mapping[str, Sequence[str]], cats: Mapping[str, Catalogue]
) -> Graph | None:
    """The bridge whose source history is longest (items it can encode only); None when there is none."""
    best, best_len = None, 0
    for g in bridges:
        if g.source_domain is None:
            continue
        n = len(cats[g.source_domain].encodable_rows(seqs.get(g.source_domain, ())))
        if n > best_len:
            best, best_len = g, n
    return best


def _write_plan(
    b: ServingBundle, grouped: Mapping[str, Sequence[EventRecord]]
) -> list[tuple[Graph, list[str]]]:
    """Per user encoder, the users of an append whose events touch a domain it reads (they need a new vector)."""
    return [
        (graph, users)
        for graph in b.encoders.values()
        if (users := [u for u, recs in grouped.items() if any(r.domain in graph.read_domains() for r in recs)])
    ]


def _written_reads(b: ServingBundle, grouped: Mapping[str, Sequence[EventRecord]]) -> list[str]:
    """The domains whose lists vector on write encodes from after this append (asked back from the append)."""
    return _unique([d for graph, _ in _write_plan(b, grouped) for d in graph.read_domains()])


def _unique(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))
