"""The Protocols between the Recommender and the outside systems, and the one error a store may raise.

Each has one real adapter (service.adapters.redis_store, service.adapters.onnx_encoder, service.adapters.faiss_index,
service.adapters.text_encoder). ``SequenceStore``, ``Encoder`` and ``ItemIndex`` also have an in-memory fake
(tests/service/fakes.py) for the Recommender's unit tests; the item-adding path (``TextEncoder``,
``GrowableIndex``, ``ItemTextStore``) is tested against the real adapters only. ``Encoder``, ``TextEncoder`` and
``ItemIndex`` are blocking native calls: the Recommender and the item adder run them off the event loop.
``SequenceStore`` is async and bounds its own latency (a slow store is an unavailable one: it raises
``StoreUnavailable`` rather than keep a request waiting).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


class StoreUnavailable(Exception):
    """The sequence store did not answer in time or at all; ``reason`` is a short metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class BadKey(StoreUnavailable):
    """One user's key holds the wrong type (WRONGTYPE): that user's problem, not the store's. The request
    answers degraded; it never counts towards opening the circuit (service.breaker)."""

    def __init__(self, detail: str = "") -> None:
        super().__init__("redis_bad_key", detail)


class OutcomeUnknown(StoreUnavailable):
    """A write was sent but its acknowledgement (or the durability wait after it) did not come: the events may
    or may not be stored. Retrying with the same ``event_id`` is safe (the store deduplicates)."""


class EventRecord(NamedTuple):
    domain: str
    item_id: str
    event_id: str | None = None  # the client's id: a second event with it within the window is a duplicate


class Appended(NamedTuple):
    appended: int
    duplicates: int
    # per user, the lists of the domains ``append(read=...)`` asked back, as that append left them (None: not asked)
    lists: Mapping[str, Mapping[str, list[str]]] | None = None


class SequenceStore(Protocol):
    async def read(self, user_id: str, domains: Sequence[str]) -> dict[str, list[str]]:
        """Each domain's item ids of one user, oldest first (empty when none), in one round trip."""
        ...

    async def read_cached(
        self, user_id: str, domains: Sequence[str], emb_domain: str
    ) -> tuple[dict[str, list[str]], bytes | None]:
        """``read`` plus the raw cached embedding of ``emb_domain`` (core.redis_keys.pack_embedding; None when
        absent), still in one round trip."""
        ...

    async def append(
        self,
        events: Mapping[str, Sequence[EventRecord]],
        max_len: int,
        domains: Sequence[str] = (),
        read: Sequence[str] = (),
    ) -> Appended:
        """Append each user's events (oldest first) to their domain lists, keeping the newest ``max_len`` per
        list, atomically per user; an event whose ``event_id`` the user sent within the dedup window is skipped
        (a duplicate). ``domains``: every domain a user may have a list in (the TTL refresh touches them all).
        ``read``: domains whose lists (as this append left them, same atomic step) come back in ``lists``;
        a store that cannot may leave ``lists`` None (vector on write then reads them itself).
        Return only once the store acknowledged every write (and, per its durability setting, made it durable);
        raise ``OutcomeUnknown`` when that acknowledgement did not come, ``BadKey`` when a user's list is not a
        list (nothing of that user written)."""
        ...

    async def ping(self) -> None: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class VectorStore(Protocol):
    """What vector-on-write needs beyond ``SequenceStore`` (the Recommender uses it when the store has it)."""

    async def read_many(self, users: Sequence[str], domains: Sequence[str]) -> dict[str, dict[str, list[str]]]:
        """``read`` of several users at once, in one round trip."""
        ...

    async def write_vectors(self, vectors: Mapping[str, bytes]) -> None:
        """SET each ``emb_key`` -> packed vector (core.redis_keys.pack_embedding), with the users' TTL if any."""
        ...


class Encoder(Protocol):
    def __call__(self, feeds: Mapping[str, IntArray]) -> FloatArray:
        """Named (B, T) int64 sequences -> (B, D) float32 user vectors, or (B, K, D) for a K-vector user encoder
        (DSS: ``Graph.intents`` = K, one query per intent)."""
        ...


class ItemIndex(Protocol):
    @property
    def count(self) -> int: ...

    def search(self, query: FloatArray, k: int, exclude: Set[int]) -> tuple[list[int], list[float]]:
        """The ``k`` rows scoring highest against ``query`` (D,), best first, none of them in ``exclude`` (rows
        of this index); fewer only when the index holds fewer than ``k`` rows outside ``exclude``. A (K, D)
        ``query`` is a DSS user's K intent vectors: the rows with the best score over them (max), or drawn
        across them by an intent-aware merge (service.adapters.faiss_index ``search_intents``)."""
        ...

    def vector(self, row: int) -> FloatArray:
        """The stored vector (D,) of one row (item-to-item similarity)."""
        ...


class TextEncoder(Protocol):
    def __call__(self, texts: Sequence[str]) -> FloatArray:
        """Item texts -> (B, D) float32 item vectors in the item space of one domain's index."""
        ...


@runtime_checkable
class GrowableIndex(ItemIndex, Protocol):
    def extended(self, vectors: FloatArray) -> GrowableIndex:
        """A NEW index holding this one's rows and then ``vectors`` (B, D) as rows count .. count + B - 1; this
        one is left untouched, so searches already running on it are safe (copy on write)."""
        ...


class ItemTextStore(Protocol):
    async def add_texts(self, domain: str, texts: Mapping[str, str]) -> Mapping[str, str]:
        """Persist item id -> text for items added through the API, all or nothing; return once the store
        acknowledged it. When an id already holds ANOTHER text (another worker added it since this one looked),
        persist nothing and return those ids with their stored texts; else return an empty mapping."""
        ...

    async def read_texts(self, domain: str) -> dict[str, str]:
        """Every item id -> text persisted for ``domain``."""
        ...

    async def count_texts(self, domain: str) -> int:
        """How many items are persisted for ``domain`` (a cheap check for items another worker added)."""
        ...

    async def add_vectors(self, domain: str, fingerprint: str, vectors: Mapping[str, str]) -> None:
        """Cache item id -> encoded vector (service.items.pack_vector) for the text encoder ``fingerprint``."""
        ...

    async def read_vectors(self, domain: str, fingerprint: str, ids: Sequence[str]) -> list[str | None]:
        """The cached encoded vectors of ``ids`` (None where there is none), in order."""
        ...
