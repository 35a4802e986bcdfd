"""Micro-batching of the native calls: concurrent requests share one onnxruntime call, off the event loop.

Every request's encode-and-search joins a queue; while no batch is running (or fewer than ``max_inflight``),
the queued work goes to the executor as one job: per graph, the requests' left-padded sequences are stacked
into one (B, T) feed for a single ``session.run`` (cheaper per row than B runs), then each row searches the
index with its own k and exclusions (an ``encode`` job, from vector-on-write, skips the search and gets its
vector). Under load a batch naturally grows to the requests that arrived while the
previous one ran, so the thread hop is paid once per batch rather than once per request; an idle service runs
batches of one. The event loop never waits on a native call, so Redis replies and health probes are read on
time however busy the executor is.

Each job's result is handed to the event loop as soon as ITS search is done (``call_soon_threadsafe``), not when
the whole batch is: the searches of a batch run one after the other (~0.1-0.8 ms each), so a batch of B used to
hold its first request for all B searches, which at half load (Poisson bursts of several requests per batch)
is where the tail latency grew (issue 16, item 1).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from service.bundle import Graph
from service.ports import FloatArray, IntArray, ItemIndex

Ranked = tuple[list[int], list[float]]
Result = Ranked | FloatArray  # a search's rows and scores, or an encode job's vector (D,)


@dataclass
class _Job:
    graph: Graph
    index: ItemIndex | None  # None: an encode job (the vector is the result)
    feeds: Mapping[str, IntArray]
    k: int
    exclude: set[int]
    future: asyncio.Future[Result]


Deliver = Callable[[int, "Result | BaseException"], None]


def run_batch(jobs: list[_Job], deliver: Deliver | None = None) -> list[Result | BaseException]:
    """The executor side: one encoder call per graph for all its jobs, then one search per job. ``deliver(i,
    result)``, when given, is called with each job's result as soon as it is known (the rest keep running)."""
    out: list[Result | BaseException] = [RuntimeError("not run")] * len(jobs)

    def done(i: int, result: Result | BaseException) -> None:
        out[i] = result
        if deliver is not None:
            deliver(i, result)

    groups: dict[int, list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(id(job.graph), []).append(i)
    for members in groups.values():
        graph = jobs[members[0]].graph
        try:
            feeds = {name: np.concatenate([jobs[i].feeds[name] for i in members]) for name in jobs[members[0]].feeds}
            vectors = graph.encoder(feeds)  # (B, D)
        except Exception as exc:  # the whole group shares the failure; the Recommender answers popularity
            for i in members:
                done(i, exc)
            continue
        for row, i in enumerate(members):
            job = jobs[i]
            if job.index is None:
                done(i, np.array(vectors[row], dtype=np.float32))  # its own copy: the batch's array is shared
                continue
            try:
                done(i, job.index.search(vectors[row], job.k, job.exclude))
            except Exception as exc:
                done(i, exc)
    return out


class Batcher:
    def __init__(self, executor: Executor, max_batch: int = 64, max_inflight: int = 1) -> None:
        self._executor = executor
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        self._queue: list[_Job] = []
        self._inflight = 0
        self.batches = 0  # counters for tests and the bench
        self.jobs = 0

    @property
    def idle(self) -> bool:
        """Nothing queued and no batch running."""
        return self._inflight == 0 and not self._queue

    async def run(
        self, graph: Graph, index: ItemIndex, feeds: Mapping[str, IntArray], k: int, exclude: set[int]
    ) -> Ranked:
        result = await self._submit(graph, index, feeds, k, exclude)
        assert isinstance(result, tuple)
        return result

    async def encode(self, graph: Graph, feeds: Mapping[str, IntArray]) -> FloatArray:
        """The user vector (D,) alone, batched with whatever else waits for the executor."""
        result = await self._submit(graph, None, feeds, 0, set())
        assert not isinstance(result, tuple)
        return result

    async def _submit(
        self, graph: Graph, index: ItemIndex | None, feeds: Mapping[str, IntArray], k: int, exclude: set[int]
    ) -> Result:
        loop = asyncio.get_running_loop()
        job = _Job(graph, index, feeds, k, exclude, loop.create_future())
        self._queue.append(job)
        if self._inflight < self.max_inflight:
            self._launch(loop)
        return await job.future

    def _launch(self, loop: asyncio.AbstractEventLoop) -> None:
        jobs = [j for j in self._queue[: self.max_batch] if not j.future.cancelled()]
        del self._queue[: self.max_batch]
        if not jobs:
            return
        self._inflight += 1
        self.batches += 1
        self.jobs += len(jobs)
        def deliver(i: int, result: Result | BaseException) -> None:  # on the executor's thread
            loop.call_soon_threadsafe(_settle, jobs[i].future, result)

        done = loop.run_in_executor(self._executor, run_batch, jobs, deliver)
        done.add_done_callback(lambda f: self._finish(loop, jobs, f))

    def _finish(
        self, loop: asyncio.AbstractEventLoop, jobs: list[_Job], f: asyncio.Future[list[Result | BaseException]]
    ) -> None:
        self._inflight -= 1
        results: list[Result | BaseException]
        if f.cancelled():
            results = [asyncio.CancelledError()] * len(jobs)
        elif f.exception() is not None:
            results = [f.exception() or RuntimeError("batch failed")] * len(jobs)
        else:
            results = f.result()
        for job, result in zip(jobs, results, strict=True):
            # delivered already (each job's call_soon_threadsafe ran before this callback: FIFO), or the request
            # went away; what is left is a batch that failed or was cancelled as a whole
            _settle(job.future, result)
        while self._queue and self._inflight < self.max_inflight:
            self._launch(loop)


def _settle(future: asyncio.Future[Result], result: Result | BaseException) -> None:
    if future.done():
        return  # settled already, or the request went away (client disconnected)
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
