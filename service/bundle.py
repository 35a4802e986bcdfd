"""A bundle made ready to serve: catalogues, popularity rankings, encoders and indexes, all from one manifest.

``load_bundle`` runs the one load-time check (core.bundle_checks.verify_bundle: files, hashes, id maps, ONNX
inputs/outputs and index dims agree with the manifest) plus what serving needs on top (every sequence input
names its domain and length), then opens the graphs and indexes and warms them up. It raises ``BundleError``
listing every problem, so a bad bundle is refused at start and never replaces a good one. A graph that
export saved optimized (``optimized_file``) opens from that file with optimization off: no worker redoes it.

Ids: row ``r`` of a domain's ids file and index is model item id ``r + manifest.model_id_offset`` (0 is
padding); Redis and the API speak external ids, the graphs model ids, the indexes rows.

Items added through ``POST /v1/items`` (service.items) extend a catalogue and its index past the rows the
bundle shipped: rows ``>= Catalogue.model_items`` are retrievable and accepted in events, but the graphs were
never trained on them, so they are left out of every encoder input (``encode``; a history made only of them
encodes like an empty one).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.bundle_checks import verify_bundle
from core.manifest import BundleError, GraphSpec, Manifest, TextItemsSpec
from core.sequence import encode_batch, encode_sequence
from service.ports import Encoder, FloatArray, IntArray, ItemIndex, TextEncoder

# a graph export saved already optimized (GraphSpec.optimized_file) opens with optimization off: nothing to redo
PRE_OPTIMIZED_LEVEL = "ORT_DISABLE_ALL"


@dataclass(frozen=True)
class Catalogue:
    """One domain's items: external id of row r at ``ids[r]``, and the popularity fallback ranking."""

    domain: str
    ids: list[str]
    popular: list[int]  # rows, most popular first, then every other row (the ranking covers the catalogue)
    popular_scores: list[float]  # interaction counts; 0 for rows without any
    offset: int = 1  # model id = row + offset
    model_items: int = -1  # rows the graphs know (the bundle's own); later rows were added by text. -1: all
    rows: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", {item: row for row, item in enumerate(self.ids)})
        if self.model_items < 0:
            object.__setattr__(self, "model_items", len(self.ids))

    def extended(self, new_ids: Sequence[str]) -> Catalogue:
        """A new catalogue with ``new_ids`` appended as rows len(ids).. (added items: unranked by popularity)."""
        rows = list(range(len(self.ids), len(self.ids) + len(new_ids)))
        return Catalogue(
            self.domain,
            [*self.ids, *new_ids],
            [*self.popular, *rows],
            [*self.popular_scores, *([0.0] * len(rows))],
            self.offset,
            self.model_items,
        )

    @classmethod
    def build(
        cls,
        domain: str,
        ids: list[str],
        popular: Sequence[str] = (),
        counts: Sequence[float] = (),
        offset: int = 1,
        model_items: int = -1,
    ) -> Catalogue:
        rows = {item: row for row, item in enumerate(ids)}
        ranked = [rows[i] for i in popular if i in rows]
        scores = [float(c) for c in counts][: len(ranked)] or [0.0] * len(ranked)
        seen = set(ranked)
        rest = [r for r in range(len(ids)) if r not in seen]
        return cls(domain, ids, ranked + rest, scores + [0.0] * len(rest), offset, model_items)

    def known_rows(self, items: Sequence[str]) -> list[int]:
        """Rows of the ids this catalogue knows, in order (ids from an older catalogue are skipped)."""
        rows = self.rows
        return [rows[i] for i in items if i in rows]

    def encodable_rows(self, items: Sequence[str]) -> list[int]:
        """Rows of the ids the graphs can read: known to the bundle, not added later by text."""
        rows, n = self.rows, self.model_items
        return [r for i in items if (r := rows.get(i)) is not None and r < n]

    def encode(self, items: Sequence[str], max_len: int) -> IntArray:
        return encode_sequence((r + self.offset for r in self.encodable_rows(items)), max_len)

    def encode_many(self, histories: Sequence[Sequence[str]], max_len: int) -> IntArray:
        """(B, max_len): row b equals ``encode(histories[b], max_len)`` (the refresh job's batch form)."""
        return encode_batch([[r + self.offset for r in self.encodable_rows(items)] for items in histories], max_len)


@dataclass(frozen=True)
class GraphInput:
    name: str
    domain: str | None  # None: the graph ignores it; fed padding
    max_len: int


@dataclass(frozen=True)
class Graph:
    """One exported graph: which sequences it reads, the index its output is scored against."""

    name: str
    kind: str  # "user_encoder" | "bridge"
    target_domain: str
    source_domain: str | None
    inputs: list[GraphInput]
    index: str
    encoder: Encoder
    intents: int | None = None  # a K-vector user encoder (DSS): (B, K, D) out, searched as K queries (max)
    intent_score: str | None = None  # how the K lists merge (manifest GraphSpec.intent_score; None = "max")

    def read_domains(self) -> list[str]:
        return [i.domain for i in self.inputs if i.domain is not None]

    def feeds(self, sequences: Mapping[str, Sequence[str]], catalogues: Mapping[str, Catalogue]) -> dict[str, IntArray]:
        out: dict[str, IntArray] = {}
        for i in self.inputs:
            if i.domain is None:
                out[i.name] = np.zeros((1, i.max_len), dtype=np.int64)
            else:
                out[i.name] = catalogues[i.domain].encode(sequences.get(i.domain, ()), i.max_len)[None, :]
        return out

    def source_input(self) -> GraphInput | None:
        return next((i for i in self.inputs if i.domain is not None and i.domain != self.target_domain), None)


@dataclass(frozen=True)
class TextItems:
    """A domain's text item encoder: texts -> vectors that join ``index`` (POST /v1/items)."""

    domain: str
    index: str
    encoder: TextEncoder
    text_model: str
    fingerprint: str = ""  # the graph's and tokenizer's hashes: whose vectors may be reused (service.items)


@dataclass(frozen=True)
class ServingBundle:
    version: str
    catalogues: dict[str, Catalogue]
    encoders: dict[str, Graph]  # target domain -> its user encoder
    bridges: dict[str, list[Graph]]  # target domain -> bridges into it, manifest order
    indexes: dict[str, ItemIndex]
    similar_index: dict[str, str]  # domain -> the index key item-to-item queries use
    max_len: int  # the longest sequence any graph reads: Redis lists are trimmed to it
    path: Path | None = None
    texts: dict[str, TextItems] = field(default_factory=dict)  # domain -> its text item encoder, if any

    def served_domains(self) -> list[str]:
        return sorted(set(self.encoders) | set(self.bridges))


def text_fingerprint(m: Manifest, graph: str, tokenizer: str) -> str:
    """A text item encoder's identity: the same graph and tokenizer make the same vectors, in any bundle."""
    return m.files[graph].sha256[:16] + m.files[tokenizer].sha256[:8]


def _catalogue(bundle: Path, m: Manifest, domain: str) -> Catalogue:
    spec = m.domains[domain]
    ids = json.loads((bundle / spec.ids_file).read_text())
    n = -1 if spec.model_items is None else spec.model_items
    if spec.popular_file is None:
        return Catalogue.build(domain, ids, offset=m.model_id_offset, model_items=n)
    popular = json.loads((bundle / spec.popular_file).read_text())
    return Catalogue.build(domain, ids, popular["item_ids"], popular.get("counts", ()), m.model_id_offset, n)


def _graph(spec: GraphSpec, encoder: Encoder, problems: list[str]) -> Graph:
    inputs: list[GraphInput] = []
    for t in spec.inputs:
        if t.name not in ("target_seq", "source_seq") or t.dtype != "int64":
            problems.append(f"{spec.file}: input {t.name} ({t.dtype}) is not a target_seq/source_seq of int64 ids")
        if t.max_len is None:
            problems.append(f"{spec.file}: input {t.name} does not declare its max_len")
        inputs.append(GraphInput(t.name, t.domain, t.max_len or 1))
    if spec.kind == "user_encoder" and not any(i.domain == spec.target_domain for i in inputs):
        problems.append(f"{spec.file}: a user encoder that reads no {spec.target_domain} sequence")
    if spec.kind == "bridge" and not any(i.domain == spec.source_domain for i in inputs):
        problems.append(f"{spec.file}: a bridge that reads no {spec.source_domain} sequence")
    return Graph(
        spec.name, spec.kind, spec.target_domain, spec.source_domain, inputs, spec.index, encoder, spec.intents,
        spec.intent_score,
    )


def assemble(
    bundle: Path,
    m: Manifest,
    open_encoder: Callable[[Path, GraphSpec], Encoder],
    open_index: Callable[[Path, str], ItemIndex],
    open_text: Callable[[Path, TextItemsSpec], TextEncoder] | None = None,
) -> ServingBundle:
    """Build a ServingBundle from a verified bundle directory, opening graphs and indexes with the callables."""
    problems: list[str] = []
    catalogues = {d: _catalogue(bundle, m, d) for d in m.domains}
    indexes = {key: open_index(bundle, key) for key in m.indexes}
    encoders: dict[str, Graph] = {}
    bridges: dict[str, list[Graph]] = {}
    for spec in m.graphs:
        graph = _graph(spec, open_encoder(bundle, spec), problems)
        if spec.kind == "user_encoder":
            encoders[spec.target_domain] = graph
        else:
            bridges.setdefault(spec.target_domain, []).append(graph)
    if problems:
        raise BundleError(bundle, problems)
    similar = {}
    for key, ispec in m.indexes.items():  # a domain's own index (named after it) beats a bridge's item space
        if ispec.domain not in similar or key == ispec.domain:
            similar[ispec.domain] = key
    texts = {}
    if open_text is not None:
        texts = {
            d: TextItems(d, t.index, open_text(bundle, t), t.text_model, text_fingerprint(m, t.graph, t.tokenizer))
            for d, t in m.text_items.items()
        }
    return ServingBundle(m.version, catalogues, encoders, bridges, indexes, similar, m.max_len, bundle, texts)


def warm_up(b: ServingBundle) -> None:
    """One call through every graph and index: first calls allocate, and a broken graph fails here, not live."""
    for graph in [*b.encoders.values(), *(g for gs in b.bridges.values() for g in gs)]:
        vector: FloatArray = graph.encoder(graph.feeds({}, b.catalogues))[0]
        if not np.all(np.isfinite(vector)):
            raise BundleError(
                b.path or Path(b.version), [f"{graph.name}: an all-padding input gives a non-finite vector"]
            )
        b.indexes[graph.index].search(vector, 10, set())
    for t in b.texts.values():
        vectors = t.encoder(["warm up", "a longer text to warm up the text item encoder"])
        if vectors.shape[0] != 2 or not np.all(np.isfinite(vectors)):
            raise BundleError(b.path or Path(b.version), [f"item_text.{t.domain}: a non-finite or misshapen vector"])
        b.indexes[t.index].search(vectors[0], 10, set())


def load_bundle(path: Path, ort_threads: int = 1, text_items: bool = True) -> ServingBundle:
    """Verify, open and warm up the bundle at ``path`` (a version directory, or ``current`` resolved).
    ``text_items=False`` leaves the text item encoders closed (the refresh job adds no items)."""
    from service.adapters.faiss_index import FaissItemIndex  # native libraries only where a bundle is really opened
    from service.adapters.onnx_encoder import OnnxEncoder
    from service.adapters.text_encoder import OnnxTextEncoder

    bundle = Path(path).resolve()
    m = verify_bundle(bundle)
    level = m.onnxruntime.graph_optimization_level

    def open_encoder(root: Path, spec: GraphSpec) -> Encoder:
        served = spec.optimized_file
        if spec.serving_variant == "int8" and spec.quantized is not None:  # its gate passed (Manifest checks)
            served = spec.quantized.file
        if served is None:  # a bundle from before export saved the optimized graph
            return OnnxEncoder(root / spec.file, spec.outputs[0].name, ort_threads, level, spec.trims_padding)
        # verify_bundle's deep check opened ``file``; the served file gets its own check here
        try:
            encoder = OnnxEncoder(
                root / served, spec.outputs[0].name, ort_threads, PRE_OPTIMIZED_LEVEL, spec.trims_padding
            )
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            raise BundleError(root, [f"{served}: onnxruntime cannot load it ({str(exc).strip()[:200]})"]) from exc
        if encoder.input_names != [t.name for t in spec.inputs]:
            raise BundleError(root, [f"{served}: inputs {encoder.input_names}, not {spec.file}'s"])
        return encoder

    def open_index(root: Path, key: str) -> ItemIndex:
        return FaissItemIndex(root / m.indexes[key].file, m.indexes[key])

    def open_text(root: Path, spec: TextItemsSpec) -> TextEncoder:
        return OnnxTextEncoder(root, spec, ort_threads, level)

    served = assemble(bundle, m, open_encoder, open_index, open_text if text_items else None)
    warm_up(served)
    return served
