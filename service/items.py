"""New items by their text (``POST /v1/items``): encoded, persisted, in the live index, no restart.

A bundle whose manifest has ``text_items`` for a domain carries that domain's text item encoder (item text ->
item vector in the domain's item space, exported from a UniSRec-style model: export/text_items.py). Adding a
batch of items:

1. validates it: the domain is in the bundle (else 422 ``unknown_domain``) and has a text item encoder (else
   409 ``no_text_encoder``); ids do not repeat within the batch (422); an id the catalogue already has is 409
   ``item_exists`` naming it, unless it was added through this API with the very same text: then it counts
   as ``existing`` and nothing changes (so a client may retry a request whose answer it lost);
2. encodes the texts (tokenizers + onnxruntime, off the event loop);
3. persists them in Redis (``cdrec:items:<domain>``, core.redis_keys.item_texts_key) BEFORE serving them, so
   an item that was ever answered 200 survives a restart (Redis down: 503, nothing added);
4. builds a new index (copy on write, service.adapters.faiss_index) and catalogue with the items appended, model ids
   continuing from the current count, and swaps the whole bundle into the Recommender: requests already
   running keep the bundle they started with; the next one can return the new items and /v1/events accepts
   them. The answer is sent only after that swap.

Adds run one at a time, and never while a reload is swapping a bundle in (one lock, ``lock``). With several
worker processes, the one that answered holds the items at once, the others within a watch tick (``sync``:
the bundle watch compares the Redis hash's length with what the worker holds, every ``watch_s``; an add does
the same first). Two workers adding the SAME new id at the same instant cannot both win: the write to Redis
checks and sets the whole batch atomically, and the worker that comes second with another text answers 409
``item_exists`` having added nothing (with the same text, both hold the same item). Every bundle the
service loads (start, reload) gets the persisted items replayed into it (``replay``: re-encoded from their
text, skipping ids that bundle already has), so added items outlive a restart and a hot reload; an export that
includes them in the bundle itself (trained, or appended by text) makes that replay a no-op. Their vectors are
cached in Redis per text encoder (``cdrec:items:<domain>:vec:<fingerprint>``, each naming the text it came from),
so a replay reads them instead of re-encoding: 20k items then replay in seconds, not minutes (issue 15, item 6);
whatever the cache lacks is encoded in chunks, and the index is extended once for the whole replay.

The user encoders were not trained on added items and cannot read them: a history's added items are left out
of the encoder input (service.bundle.Catalogue.encode), though they are still excluded from its answers.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import numpy as np

from service.bundle import ServingBundle, TextItems
from service.errors import Conflict, InvalidRequest
from service.ports import FloatArray, GrowableIndex, ItemTextStore, StoreUnavailable

log = logging.getLogger("cdrec.service")

T = TypeVar("T")


@dataclass(frozen=True)
class NewItem:
    item_id: str
    text: str


@dataclass(frozen=True)
class Added:
    domain: str
    added: list[str]
    existing: list[str]
    n_items: int
    model_version: str


def _text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def pack_vector(text: str, vector: FloatArray) -> str:
    """``<sha256(text)[:16]>:<base64 float32 bytes>``: a cached vector that names the text it was encoded from."""
    return f"{_text_hash(text)}:{base64.b64encode(np.asarray(vector, dtype=np.float32).tobytes()).decode()}"


def unpack_vector(packed: str, text: str) -> FloatArray | None:
    """The vector ``packed`` holds when it was encoded from ``text``; None otherwise (the text changed)."""
    digest, _, data = packed.partition(":")
    if digest != _text_hash(text):
        return None
    return np.frombuffer(base64.b64decode(data), dtype=np.float32)


def with_items(b: ServingBundle, text: TextItems, ids: Sequence[str], vectors: FloatArray) -> ServingBundle:
    """A new bundle whose ``text.domain`` catalogue and index hold ``ids`` (with ``vectors``) after their rows."""
    cat = b.catalogues[text.domain]
    index = b.indexes[text.index]
    if not isinstance(index, GrowableIndex):
        raise TypeError(f"index {text.index!r} ({type(index).__name__}) cannot grow")
    if index.count != len(cat.ids):
        raise RuntimeError(f"index {text.index!r} holds {index.count} rows for {len(cat.ids)} {text.domain} items")
    catalogues = {**b.catalogues, text.domain: cat.extended(ids)}
    indexes = {**b.indexes, text.index: index.extended(vectors)}
    return dataclasses.replace(b, catalogues=catalogues, indexes=indexes)


class ItemAdder:
    def __init__(
        self,
        current: Callable[[], ServingBundle],
        swap: Callable[[ServingBundle], object],
        store: ItemTextStore,
        executor: Executor | None = None,
        max_id_len: int = 128,
    ) -> None:
        self._current = current
        self._swap = swap
        self.store = store
        self.executor = executor
        self.max_id_len = max_id_len
        self.lock = asyncio.Lock()
        self._texts: dict[str, dict[str, str]] = {}  # domain -> id -> text of items added through the API

    async def _call(self, fn: Callable[[], T]) -> T:
        if self.executor is None:
            return fn()
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    def _check(self, b: ServingBundle, domain: str, items: Sequence[NewItem]) -> TextItems:
        if domain not in b.catalogues:
            known = ", ".join(sorted(b.catalogues))
            raise InvalidRequest(f"unknown domain {domain!r} (known: {known})", "unknown_domain")
        text = b.texts.get(domain)
        if text is None:
            with_text = ", ".join(sorted(b.texts)) or "none"
            raise Conflict(
                f"bundle {b.version} has no text item encoder for domain {domain!r}, so items cannot be added by "
                f"their text (domains with one: {with_text}); export a text model (cdrec train unisrec) for it",
                "no_text_encoder",
            )
        seen: set[str] = set()
        for n, item in enumerate(items):
            if not item.item_id or len(item.item_id) > self.max_id_len:
                raise InvalidRequest(f"items.{n}.item_id must be 1 to {self.max_id_len} characters long")
            if not item.text.strip():
                raise InvalidRequest(f"items.{n}.text is blank")
            if item.item_id in seen:
                raise InvalidRequest(f"items.{n}: item id {item.item_id!r} appears twice in the request")
            seen.add(item.item_id)
        return text

    async def add(self, domain: str, items: Sequence[NewItem]) -> Added:
        """Add ``items`` to ``domain`` (module docstring); raise StoreUnavailable when they cannot be persisted."""
        async with self.lock:
            self._check(self._current(), domain, items)
            # first what other workers added, so an id one of them took is seen as existing here too
            b = await self._synced()
            text = self._check(b, domain, items)
            cat = b.catalogues[domain]
            ours = self._texts.get(domain, {})
            fresh: list[NewItem] = []
            existing: list[str] = []
            for item in items:
                if item.item_id not in cat.rows:
                    fresh.append(item)
                elif ours.get(item.item_id) == item.text:
                    existing.append(item.item_id)
                else:
                    why = "with another text" if item.item_id in ours else f"in bundle {b.version}"
                    raise Conflict(f"item {item.item_id!r} already exists in domain {domain!r} ({why})", "item_exists")
            if fresh:
                vectors = await self._call(partial(text.encoder, [i.text for i in fresh]))
                taken = await self.store.add_texts(domain, {i.item_id: i.text for i in fresh})
                if taken:  # another worker persisted one of these ids, with another text, since _synced looked
                    first = min(taken)
                    raise Conflict(f"item {first!r} already exists in domain {domain!r} (another worker just added "
                                   f"it with another text; nothing of this request was added)", "item_exists")
                await self._cache(text, {i.item_id: i.text for i in fresh}, vectors)
                b = await self._call(partial(with_items, b, text, [i.item_id for i in fresh], vectors))
                self._swap(b)
                self._texts.setdefault(domain, {}).update((i.item_id, i.text) for i in fresh)
                log.info("added %d %s items (catalogue now %d)", len(fresh), domain, len(b.catalogues[domain].ids))
            added = [i.item_id for i in fresh]
            return Added(domain, added, existing, len(b.catalogues[domain].ids), b.version)

    async def _vectors(self, text: TextItems, texts: dict[str, str]) -> tuple[FloatArray, int]:
        """The vectors of ``texts`` (id -> text, in order): from the cache where it holds one for this text and
        encoder, the rest encoded in chunks (the loop keeps serving in between) and cached. Returns (vectors,
        how many were encoded)."""
        ids = list(texts)
        try:
            cached = await self.store.read_vectors(text.domain, text.fingerprint, ids) if text.fingerprint else []
        except StoreUnavailable as exc:
            log.warning("cached vectors of added %s items unreadable (%s): re-encoding them", text.domain, exc)
            cached = []
        vectors: dict[str, FloatArray] = {}
        for i, packed in zip(ids, cached, strict=True):
            vec = None if packed is None else unpack_vector(packed, texts[i])
            if vec is not None:
                vectors[i] = vec
        todo = [i for i in ids if i not in vectors]
        for start in range(0, len(todo), 256):
            chunk = todo[start : start + 256]
            encoded = await self._call(partial(text.encoder, [texts[i] for i in chunk]))
            vectors.update(zip(chunk, encoded, strict=True))
            await self._cache(text, {i: texts[i] for i in chunk}, encoded)
        return np.stack([vectors[i] for i in ids]).astype(np.float32, copy=False), len(todo)

    async def _cache(self, text: TextItems, texts: dict[str, str], vectors: FloatArray) -> None:
        """Remember the vectors of added items (best effort: the text is what is persisted; a vector missing
        from the cache is encoded again at the next replay)."""
        if not text.fingerprint or not texts:
            return
        packed = {i: pack_vector(t, v) for (i, t), v in zip(texts.items(), vectors, strict=True)}
        try:
            await self.store.add_vectors(text.domain, text.fingerprint, packed)
        except StoreUnavailable as exc:
            log.warning("vectors of %d added %s items not cached: %s", len(packed), text.domain, exc)

    async def sync(self) -> None:
        """Replay into the serving bundle the items another worker process added (each worker holds its own
        index; the watch calls this every ``watch_s``). StoreUnavailable propagates."""
        async with self.lock:
            await self._synced()

    async def _synced(self) -> ServingBundle:
        """The serving bundle, first brought up to the items in Redis when their count differs (under lock)."""
        b = self._current()
        for domain in sorted(b.texts):
            if await self.store.count_texts(domain) != len(self._texts.get(domain, {})):
                b = await self.replay(b)
                self._swap(b)
                break
        return b

    async def replay(self, b: ServingBundle) -> ServingBundle:
        """``b`` with every persisted added item it lacks (call under ``lock``, before swapping ``b`` in).

        A Redis that cannot be read leaves ``b`` as it is, logged: the items come with the next ``sync``."""
        texts: dict[str, dict[str, str]] = {}
        for domain, text in sorted(b.texts.items()):
            try:
                stored = await self.store.read_texts(domain)
            except StoreUnavailable as exc:
                log.warning("added %s items not replayed into bundle %s: %s", domain, b.version, exc)
                continue
            texts[domain] = stored
            cat = b.catalogues[domain]
            missing = sorted(i for i in stored if i not in cat.rows)  # sorted: the same rows at every load
            if not missing:
                continue
            vectors, encoded = await self._vectors(text, {i: stored[i] for i in missing})
            b = await self._call(partial(with_items, b, text, missing, vectors))  # ONE index extension
            log.info("replayed %d added %s items into bundle %s (%d re-encoded from their text)", len(missing),
                     domain, b.version, encoded)
        self._texts = texts
        return b
