"""In-memory fakes of the service's ports (service.ports), for Recommender unit tests without Redis,
onnxruntime or FAISS. They behave like the real adapters on everything the Recommender relies on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set

import numpy as np

from service.bundle import Catalogue, Graph, GraphInput, ServingBundle
from service.ports import Appended, EventRecord, FloatArray, IntArray, StoreUnavailable


class FakeStore:
    def __init__(self) -> None:
        self.lists: dict[tuple[str, str], list[str]] = {}
        self.down: str | None = None  # a reason: every call raises StoreUnavailable(reason)
        self.reads = 0
        self.cached: dict[tuple[str, str], bytes] = {}  # (user, domain) -> a packed embedding
        self.event_ids: set[tuple[str, str]] = set()  # (user, event_id) stored (no expiry: a fake)

    def _check(self) -> None:
        if self.down is not None:
            raise StoreUnavailable(self.down)

    async def read(self, user_id: str, domains: Sequence[str]) -> dict[str, list[str]]:
        self._check()
        self.reads += 1
        return {d: list(self.lists.get((user_id, d), [])) for d in domains}

    async def read_cached(
        self, user_id: str, domains: Sequence[str], emb_domain: str
    ) -> tuple[dict[str, list[str]], bytes | None]:
        seqs = await self.read(user_id, domains)
        return seqs, self.cached.get((user_id, emb_domain))

    async def append(
        self, events: Mapping[str, Sequence[EventRecord]], max_len: int, domains: Sequence[str] = ()
    ) -> Appended:
        self._check()
        appended = duplicates = 0
        for user, records in events.items():
            for r in records:
                if r.event_id is not None and (user, r.event_id) in self.event_ids:
                    duplicates += 1
                    continue
                if r.event_id is not None:
                    self.event_ids.add((user, r.event_id))
                kept = self.lists.setdefault((user, r.domain), [])
                kept.append(r.item_id)
                del kept[:-max_len]
                appended += 1
        return Appended(appended, duplicates)

    async def ping(self) -> None:
        self._check()

    async def aclose(self) -> None:
        pass


class FakeEncoder:
    """User vector = mean of the (fixed, random) vectors of the last items of every fed sequence."""

    def __init__(self, tables: Mapping[str, FloatArray]) -> None:
        self.tables = tables  # input name -> (n_items + 1, D) vectors by model id, row 0 zeros
        self.calls = 0

    def __call__(self, feeds: Mapping[str, IntArray]) -> FloatArray:
        self.calls += 1
        dim = next(iter(self.tables.values())).shape[1]
        out = np.zeros((next(iter(feeds.values())).shape[0], dim), np.float32)
        for name, seq in feeds.items():
            out += self.tables[name][seq].sum(axis=1)
        return out


class FakeIndex:
    """Exact inner-product search by brute force (the behaviour FaissItemIndex promises)."""

    def __init__(self, vectors: FloatArray) -> None:
        self.vectors = vectors

    @property
    def count(self) -> int:
        return len(self.vectors)

    def search(self, query: FloatArray, k: int, exclude: Set[int]) -> tuple[list[int], list[float]]:
        scores = self.vectors @ query
        order = [int(r) for r in np.argsort(-scores, kind="stable") if int(r) not in exclude][:k]
        return order, [float(scores[r]) for r in order]

    def vector(self, row: int) -> FloatArray:
        return self.vectors[row]


def fake_bundle(
    n_music: int = 30, n_book: int = 20, dim: int = 8, max_len: int = 10, version: str = "fake-1"
) -> ServingBundle:
    """Domains music (served: user encoder + bridge from book) and book (a source only)."""
    rng = np.random.default_rng(0)
    music = [f"m{i}" for i in range(1, n_music + 1)]
    book = [f"b{i}" for i in range(1, n_book + 1)]
    popular = music[::-1][: n_music // 2]  # a partial popularity list: the rest of the catalogue follows it
    cats = {
        "music": Catalogue.build("music", music, popular, list(range(len(popular), 0, -1))),
        "book": Catalogue.build("book", book),
    }

    def table(n: int) -> FloatArray:
        t = rng.standard_normal((n + 1, dim)).astype(np.float32)
        t[0] = 0
        return t

    music_items = table(n_music)
    encoder = Graph(
        "user_encoder.music",
        "user_encoder",
        "music",
        "book",
        [GraphInput("target_seq", "music", max_len), GraphInput("source_seq", "book", max_len)],
        "music",
        FakeEncoder({"target_seq": music_items, "source_seq": table(n_book)}),
    )
    bridge = Graph(
        "bridge.book__music",
        "bridge",
        "music",
        "book",
        [GraphInput("source_seq", "book", max_len)],
        "music",
        FakeEncoder({"source_seq": table(n_book)}),
    )
    return ServingBundle(
        version,
        cats,
        {"music": encoder},
        {"music": [bridge]},
        {"music": FakeIndex(music_items[1:])},
        {"music": "music"},
        max_len,
    )
