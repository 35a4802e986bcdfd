"""The batcher hands each request its answer as soon as its own search is done (issue 16, item 1): the searches
of one batch run one after the other, and a request must not wait for the searches of the requests batched
after it. Native calls are stand-ins here (what matters is the order of delivery); every wait is bounded."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Set
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import numpy as np

from service.batcher import Batcher

BOUND_S = 10.0


class _GatedIndex:
    """Searches answer at once, except a search with k in ``gates``: it waits for that gate (bounded)."""

    count = 100

    def __init__(self) -> None:
        self.gates = {99: threading.Event(), 2: threading.Event()}

    def search(self, query: Any, k: int, exclude: Set[int]) -> tuple[list[int], list[float]]:
        gate = self.gates.get(k)
        if gate is not None and not gate.wait(BOUND_S):
            raise TimeoutError(f"search k={k}: its gate was never opened")
        return [k], [1.0]

    def release(self) -> None:
        for gate in self.gates.values():
            gate.set()


def test_a_request_gets_its_answer_while_a_later_one_of_its_batch_still_searches() -> None:
    graph: Any = SimpleNamespace(encoder=lambda feeds: np.zeros((len(feeds["x"]), 4), dtype=np.float32))
    feeds = {"x": np.zeros((1, 3), dtype=np.int64)}
    index = _GatedIndex()
    pool = ThreadPoolExecutor(1)

    async def scenario() -> None:
        batcher = Batcher(pool)
        blocker = asyncio.ensure_future(batcher.run(graph, index, feeds, 99, set()))  # holds the executor
        await asyncio.sleep(0)
        first = asyncio.ensure_future(batcher.run(graph, index, feeds, 1, set()))
        second = asyncio.ensure_future(batcher.run(graph, index, feeds, 2, set()))
        await asyncio.sleep(0)
        index.gates[99].set()  # the two queued requests now run as ONE batch; the second's search is held
        try:
            got = await asyncio.wait_for(asyncio.shield(first), BOUND_S)
        except TimeoutError:
            raise AssertionError("the first request waited for the search of the request batched after it") from None
        assert got == ([1], [1.0])
        assert not second.done()
        assert batcher.batches == 2 and batcher.jobs == 3  # the blocker alone, then both requests together
        index.gates[2].set()
        assert await asyncio.wait_for(second, BOUND_S) == ([2], [1.0])
        assert await asyncio.wait_for(blocker, BOUND_S) == ([99], [1.0])

    try:
        asyncio.run(scenario())
    finally:
        index.release()
        pool.shutdown(wait=True)
