"""``FaissItemIndex``: one domain's item vectors in a FAISS index, searched with exclusions.

Exclusions (the user's seen items and the request's ``exclude`` list) are honoured by searching deeper,
``k + |exclude|``, and filtering: an exact (flat) index then always yields ``k`` rows while the catalogue
has them. An approximate index searches as deep (HNSW: with ``efSearch`` raised to the depth, per call, the
index itself untouched) and when it still comes back short, exact scores over the stored vectors finish the
job, so the "never fewer than k" promise does not depend on the graph's reach.

``exclusion="selector"`` instead has an approximate index skip the excluded rows inside FAISS
(``IDSelectorNot(IDSelectorBatch(...))``, efSearch at least ``k``). Measured by ``python -m bench.faiss_exclude``
(docs/results.md) on 100k items: slower than searching deeper up to a few hundred exclusions (building the
selector costs more than the extra depth), 3.4x faster on HNSW at 1,000 but at recall@10 0.965 against 0.998.

The service's default, ``auto``, takes the cheaper of the two per request: searching deeper while the depth
``k + |exclude|`` fits in what the index visits anyway (HNSW: ``efSearch``; IVF and flat: up to ``DEEPER_MAX``),
so the usual request (a sequence's <= 50 seen items) costs what a plain search costs; the selector beyond it,
so a long ``exclude`` list never makes HNSW walk an efSearch of 1,000+. Whatever way comes back short, exact
scores finish the job. Measured by ``python -m bench.faiss_exclude`` (its ``plain`` column: the same queries
without exclusions, in the same run).

Search parameters (efSearch, nprobe) come from the manifest, where the export measured their recall. FAISS
parallelises with OpenMP, whose thread count is per calling thread: ``set_threads`` must run in every thread
that searches (the executor's initializer does it), or batch-1 search gets ~3x slower (PERFORMANCE.md).
"""

from __future__ import annotations

from collections.abc import Set
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
import numpy.typing as npt

from core.manifest import HEAD3, IndexSpec
from service.ports import FloatArray


def set_threads(n: int) -> None:
    faiss.omp_set_num_threads(n)


def interrupt_checks(on: bool) -> None:
    """FAISS' Python build installs an interrupt callback that every search calls (after each block of queries,
    so once per single-query search) to let Ctrl-C stop a long search: it takes the GIL in the middle of a search
    that had released it. A worker's searches run in the executor while the event loop holds the GIL, so each one
    paid a second GIL hand-off (py-spy under load: 9-12 % of a worker's samples waited in
    ``InterruptCallback::check``). Off (``clear_instance``): a search takes the GIL once, when it returns; on
    (``PythonInterruptCallback.reset``): FAISS' default. Process-wide."""
    if on:
        faiss.PythonInterruptCallback.reset()
    else:
        faiss.InterruptCallback.clear_instance()  # type: ignore[attr-defined]


def interrupt_checks_on() -> bool:
    """Whether searches call the interrupt callback (FAISS answers a period of 2**30 queries when none is set)."""
    return bool(faiss.InterruptCallback.get_period_hint(10**6) < 1 << 30)  # type: ignore[attr-defined]


Exclusion = Literal["selector", "deeper", "auto"]
# ``auto``: the deepest post-filtered search of an IVF or flat index before the selector takes over (a deeper
# heap costs per row; the selector's per-request set costs per exclusion: bench.faiss_exclude puts the crossing
# between 200 and 1,000 exclusions)
DEEPER_MAX = 256


class FaissItemIndex:
    def __init__(self, path: Path, spec: IndexSpec, exclusion: Exclusion = "auto") -> None:
        index = faiss.read_index(str(path))
        self.type = spec.type
        self.exclusion = exclusion
        self._ef = self._nprobe = 0
        if spec.type == "hnsw":
            hnsw: Any = faiss.downcast_index(index)
            self._ef = int(spec.params.get("efSearch") or hnsw.hnsw.efSearch)
            hnsw.hnsw.efSearch = self._ef
        elif spec.type == "ivf":
            ivf = faiss.extract_index_ivf(index)
            self._nprobe = ivf.nprobe = int(spec.params.get("nprobe") or ivf.nprobe)
            ivf.make_direct_map()  # reconstruct() by row below
        self._index = index
        # the stored vectors: item-to-item queries and the exact fallback read them
        self._vectors = np.ascontiguousarray(index.reconstruct_n(0, index.ntotal), dtype=np.float32)
        self._count = int(index.ntotal)

    def extended(self, vectors: FloatArray) -> FaissItemIndex:
        """A new index: these rows, then ``vectors`` (B, D) appended (POST /v1/items). Copy on write: FAISS
        does not allow an add while another thread searches, so the add goes to a clone that the caller swaps
        in whole; searches on this one carry on untouched. The copy costs a memcpy of the index (flat) or a
        clone of its graph (HNSW), paid per added batch, never per request."""
        new = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self._vectors.shape[1])
        index = faiss.clone_index(self._index)
        index.add(new)  # an IVF index files them under its trained centroids; its direct map follows the add
        out = object.__new__(FaissItemIndex)
        out.type, out.exclusion, out._ef, out._nprobe, out._index = self.type, self.exclusion, self._ef, \
            self._nprobe, index
        out._vectors = np.concatenate([self._vectors, new])
        out._count = int(index.ntotal)
        return out

    @property
    def count(self) -> int:
        return self._count

    def vector(self, row: int) -> FloatArray:
        vec: FloatArray = self._vectors[row]
        return vec

    def search(self, query: FloatArray, k: int, exclude: Set[int]) -> tuple[list[int], list[float]]:
        if query.ndim == 2:  # K intent vectors (a DSS user encoder's (K, D) row): one batched search, merged
            return self.search_intents(query, k, exclude)
        n = self._count
        want = min(k, n - len(exclude))  # exclude holds rows of this index (the Recommender's catalogue rows)
        if want <= 0:
            return [], []
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        if exclude and self._selects(k + len(exclude)):
            scores, ids = self._search_selected(q, k, exclude)
        else:
            scores, ids = self._search_deep(q, min(n, k + len(exclude)))
        rows: list[int] = []
        out: list[float] = []
        for row, score in zip(ids[0].tolist(), scores[0].tolist(), strict=True):
            if row >= 0 and row not in exclude:
                rows.append(row)
                out.append(score)
                if len(rows) == k:
                    break
        if len(rows) < want:  # an approximate index came back short: exact scores finish the job
            return self._exact(q[0], want, exclude)
        return rows, out

    def _search_deep(self, q: FloatArray, depth: int) -> tuple[FloatArray, Any]:
        """``depth`` rows per query of ``q``; HNSW's efSearch raised to ``depth`` for this call when it is lower
        (the index's own parameters untouched)."""
        if self.type == "hnsw" and depth > self._ef:
            params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # missing from faiss' stubs
            params.efSearch = depth
            return self._index.search(q, depth, params=params)
        return self._index.search(q, depth)

    def _selects(self, depth: int) -> bool:
        """Whether excluding with FAISS' selector beats post-filtering a search ``depth`` rows deep."""
        if self.type == "flat" or self.exclusion == "deeper":
            return False
        if self.exclusion == "selector":
            return True
        return depth > (self._ef if self.type == "hnsw" else DEEPER_MAX)

    def search_intents(
        self, queries: FloatArray, k: int, exclude: Set[int], merge: str = "max"
    ) -> tuple[list[int], list[float]]:
        """Multi-interest retrieval: the ``k`` rows outside ``exclude`` with the highest best score over the K
        intent vectors ``queries`` (K, D), best first, each with that best score (``merge="max"``); an
        intent-aware ``merge`` ("quota", "round-robin") draws the list across the intents instead
        (``_drawn``).

        ONE FAISS search of the K queries, each ``k + |exclude|`` deep (no further over-fetch is needed for an
        exact index: a row in the true top k, where it scores best with intent j, is in j's list, since every row
        above it there also scores at least as high overall and at most |exclude| of those are excluded). The
        union of the K lists is de-duplicated and every candidate re-scored exactly against all K intents from
        the stored vectors (K * |candidates| dot products), so an item found through one intent still gets its
        best score. An approximate index that comes back short is finished by exact scores, as ``search``."""
        n = self._count
        want = min(k, n - len(exclude))
        if want <= 0:
            return [], []
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(queries.shape[0], -1)  # (K, D)
        if merge != "max":
            return self._drawn(q, want, exclude, merge)
        _, ids = self._search_deep(q, min(n, k + len(exclude)))  # (K, depth)
        found = np.unique(ids[ids >= 0])
        if exclude:
            found = found[~np.isin(found, np.fromiter(exclude, dtype=np.int64, count=len(exclude)))]
        if len(found) < want:  # an approximate index came back short: exact best scores over every row
            return self._ranked_best(np.arange(n), q, want, exclude)
        return self._ranked_best(found, q, want, frozenset())

    def _drawn(self, q: FloatArray, k: int, exclude: Set[int], merge: str) -> tuple[list[int], list[float]]:
        """An intent-aware merge (training/models/dss.py ``intent_lists``, the same rule in numpy): the export
        wrote each intent as ``unit(phi_k) * pi_k``, so a row's norm is its presence and 0 marks an intent below
        the threshold (export/dss.py). ``quota``: slot after slot to the present intent with the highest
        pi_k / (2 taken_k + 1) (Sainte-Lague), ``round-robin``: turns, strongest first; each slot takes that
        intent's best row outside ``exclude`` not yet listed. A row's score is its dot product with the intent
        that drew it. ONE FAISS search of the K queries, ``k + |exclude|`` deep: an intent's list then holds at
        least k rows outside ``exclude``, and fewer than k are taken, so a slot always finds one; an approximate
        index that comes back short is finished by exact scores of that intent. ``head3``: the first ``HEAD3`` rows
        are the best by max over the present intents' unit vectors (each row divided by its norm), then the intents
        take turns as in round-robin; those rows carry that unit score."""
        if merge not in ("quota", "round-robin", "head3"):
            raise ValueError(f"unknown intent merge {merge!r}: max, quota, round-robin or head3")
        presence = np.linalg.norm(q, axis=1)  # (K,)
        present = presence > 0
        if not present.any():  # no intent at all (cannot come from the export, which keeps the strongest)
            present = np.ones_like(present)
        depth = min(self._count, k + len(exclude))
        scores, ids = self._search_deep(q, depth)  # (K, depth)
        lists: list[list[tuple[int, float]]] = []
        for j in range(len(q)):
            found = [(int(r), float(s)) for r, s in zip(ids[j], scores[j], strict=True) if r >= 0 and r not in exclude]
            if present[j] and len(found) < k:  # an approximate index came back short: exact scores finish it
                rows, best = self._exact(q[j], k, exclude)
                found = list(zip(rows, best, strict=True))
            lists.append(found)
        weight = np.where(present, presence if merge == "quota" else 1.0, -np.inf)
        tiebreak = presence * 1e-6 if merge != "quota" else 0.0
        count = np.zeros(len(q))
        ptr = [0] * len(q)
        taken: set[int] = set()
        out_rows: list[int] = []
        out_scores: list[float] = []
        if merge == "head3":  # the first HEAD3 rows by the best score over the present intents' unit vectors
            unit = q[present] / presence[present][:, None]
            union = np.unique([r for j in np.flatnonzero(present) for r, _ in lists[j]]).astype(np.int64)
            rows, best = self._ranked_best(union, unit, min(HEAD3, k), frozenset())
            out_rows, out_scores = list(rows), list(best)
            taken.update(rows)
        while len(out_rows) < k:
            j = int(np.argmax(weight / (2 * count + 1) + tiebreak))
            while lists[j][ptr[j]][0] in taken:
                ptr[j] += 1
            row, score = lists[j][ptr[j]]
            taken.add(row)
            out_rows.append(row)
            out_scores.append(score)
            count[j] += 1
        return out_rows, out_scores

    def _ranked_best(
        self, rows: npt.NDArray[np.int64], q: FloatArray, k: int, exclude: Set[int]
    ) -> tuple[list[int], list[float]]:
        """The ``k`` of ``rows`` (outside ``exclude``) with the highest max over intents ``q`` (K, D)."""
        best = (self._vectors[rows] @ q.T).max(axis=1)  # (R,): each row's best intent score
        if exclude:
            best[np.isin(rows, np.fromiter(exclude, dtype=np.int64, count=len(exclude)))] = -np.inf
        top = np.argpartition(-best, k - 1)[:k] if k < len(rows) else np.arange(len(rows))
        top = top[np.lexsort((rows[top], -best[top]))]  # best first; ties by row (deterministic)
        return rows[top].tolist(), best[top].tolist()

    def intent_view(self, merge: str) -> IntentMergedIndex:
        """This index as an ``ItemIndex`` whose (K, D) queries merge by ``merge`` (a DSS graph's manifest
        ``intent_score``); one-vector queries and ``vector`` unchanged."""
        return IntentMergedIndex(self, merge)

    def _search_selected(self, q: FloatArray, k: int, exclude: Set[int]) -> tuple[FloatArray, Any]:
        """One approximate search that skips ``exclude`` inside FAISS; the index's own parameters untouched."""
        batch = faiss.IDSelectorBatch(np.fromiter(exclude, dtype=np.int64, count=len(exclude)))
        keep = faiss.IDSelectorNot(batch)  # does not own batch: both stay referenced until the search returns
        if self.type == "hnsw":
            params: Any = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
            params.efSearch = max(self._ef, k)
        else:
            params = faiss.SearchParametersIVF()
            params.nprobe = self._nprobe
        params.sel = keep
        scores, ids = self._index.search(q, k, params=params)
        return scores, ids

    def _exact(self, query: FloatArray, k: int, exclude: Set[int]) -> tuple[list[int], list[float]]:
        scores = self._vectors @ query  # (N,)
        if exclude:
            scores[np.fromiter(exclude, dtype=np.int64, count=len(exclude))] = -np.inf
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return top.tolist(), scores[top].tolist()


class IntentMergedIndex:
    """``FaissItemIndex.intent_view``: the same index, K-vector queries merged by one rule (the serving port
    ``ItemIndex`` has no merge argument; the recommender wraps a DSS graph's index in this view)."""

    def __init__(self, index: FaissItemIndex, merge: str) -> None:
        self.index, self.merge = index, merge

    @property
    def count(self) -> int:
        return self.index.count

    def search(self, query: FloatArray, k: int, exclude: Set[int]) -> tuple[list[int], list[float]]:
        if query.ndim == 2:
            return self.index.search_intents(query, k, exclude, self.merge)
        return self.index.search(query, k, exclude)

    def vector(self, row: int) -> FloatArray:
        return self.index.vector(row)
