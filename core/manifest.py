"""The artifact bundle contract (DESIGN §4): the manifest schema (export, service); checks: core/bundle_checks.py.

A bundle is one directory ``artifacts/<version>/`` written whole by ``cdrec export`` and published atomically;
``artifacts/current`` is a symlink to the serving version. ``manifest.json`` describes everything baked into
the bundle, so the service configures nothing twice: graph input/output names, dtypes and shapes, the item
indexes and the parameters to search them with, the id maps and the parity the export proved.

Ids: row ``r`` of ``items.<domain>.faiss`` and of ``items.<domain>.ids.json`` is the item whose model id
(the int fed to the ONNX graphs) is ``r + 1``; 0 is padding. Sequences are left padded (core.sequence) and
no longer than the input's ``max_len``.

This module is the schema and the reading of it (``read_manifest``, ``current_bundle``, ``sha256_file``) and
imports neither onnxruntime nor faiss (an import-linter contract): ``verify_bundle``, the one load-time check,
which loads the graphs and indexes, is in core/bundle_checks.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

FORMAT: Final = "cdrec-bundle/1"
MANIFEST = "manifest.json"
CURRENT = "current"

GraphKind = Literal["user_encoder", "bridge"]
# intent_score "head3": the slots drawn by the best score over the present intents before the intents take
# turns (training/models/dss.py ``intent_lists``, the service's FaissItemIndex draw)
HEAD3: Final = 3
IndexType = Literal["flat", "hnsw", "ivf"]


class BundleError(ValueError):
    """A bundle that must not be served; ``problems`` lists every disagreement found, one line each."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"bundle {path} refused:\n  - " + "\n  - ".join(problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    name: str
    dtype: Literal["int64", "float32"]
    shape: list[int | str]  # a str is a named dynamic axis
    domain: str | None = None  # sequence inputs: the domain whose model item ids they hold
    max_len: int | None = Field(default=None, ge=1)  # sequence inputs: the longest length the graph accepts


class ParityReport(_Strict):
    """What the export proved before publishing: torch vs onnxruntime on the same inputs."""

    passed: bool
    random_sequences: int
    real_sequences: int
    batch_sizes: list[int]
    lengths: list[list[int]]  # the (T,) or (T_target, T_source) input lengths exercised
    max_abs_diff: float
    tolerance: float
    top10_overlap: float  # mean over queries of |top10(torch) ∩ top10(ort)| / 10, through the bundle's index
    min_top10_overlap: float
    required_overlap: float
    all_padding_finite: bool


class QuantizedSpec(_Strict):
    """A quantized variant of a user encoder and the export's gate on it (export/quantize.py): NDCG@10 on the
    VALIDATION split against the fp32 graph's, and top-10 overlap with fp32 on the parity inputs (a quantized
    graph is compared with fp32 at a tolerance that matches quantization, never the fp32 parity's 1e-4)."""

    method: Literal["int8-dynamic"]
    file: str | None  # written into the bundle only when the gate passed
    split: Literal["valid"]
    users: int
    ndcg10_fp32: float
    ndcg10_quantized: float
    max_drop: float  # relative NDCG@10 loss allowed
    max_abs_diff_vs_fp32: float
    top10_overlap_vs_fp32: float
    required_overlap: float
    passed: bool


class GraphSpec(_Strict):
    name: str  # "user_encoder.<domain>" or "bridge.<src>__<dst>"
    kind: GraphKind
    file: str
    target_domain: str
    source_domain: str | None
    model: str  # what was exported, e.g. "sasrec" or "training.models.bridge:InductiveBridge"
    checkpoint_sha256: str | None
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    dim: int = Field(ge=1)  # size of the output user vector
    index: str  # key into Manifest.indexes: the item vectors this graph's output is scored against
    opset: int = Field(ge=17)
    parity: ParityReport
    # a K-vector user encoder (DSS): the output is (batch, intents, dim), one query per intent, and an item
    # scores its best over them (intent_score "max"). None (bundles before it, every other graph): one vector.
    intents: int | None = Field(default=None, ge=1)
    # "quota" / "round-robin" (training/models/dss.py ``intent_lists``): the list is drawn across the intents; the
    # graph then outputs each intent's unit vector times its presence (0 for an intent below the threshold)
    intent_score: Literal["max", "quota", "round-robin", "head3"] | None = None
    # the output does not depend on leading all-padding columns: export measured max |ORT(max_len) - ORT(cut)|
    # (trim_max_abs_diff) within the parity tolerance, so the service feeds every input cut by
    # core.sequence.trim_padding. False (bundles before it; a graph with absolute positions): always max_len.
    trims_padding: bool = False
    trim_max_abs_diff: float | None = None
    # onnxruntime's graph of ``file`` optimized at export at ``optimized_level`` (portable: ORT_ENABLE_EXTENDED):
    # the file the service opens, with optimization off, so workers do not re-optimize; the parity above is
    # measured on it. None (bundles before it): the service opens ``file`` at the manifest's onnxruntime level.
    optimized_file: str | None = None
    optimized_level: str | None = None
    # the int8 variant export measured (``cdrec export --quantize int8``) and which graph serves: "int8" only when
    # its gate passed (then ``quantized.file`` is in the bundle, optimized like ``optimized_file``)
    quantized: QuantizedSpec | None = None
    serving_variant: Literal["fp32", "int8"] = "fp32"


class TextParityReport(_Strict):
    """The text item graph's parity: the torch reference (sentence-transformers ``encode`` -> the model's text
    tower) against the serving path (``tokenizers`` with the manifest's settings -> onnxruntime)."""

    passed: bool
    texts: int
    batch_sizes: list[int]
    max_abs_diff: float
    tolerance: float
    max_tokens_seen: int  # the longest tokenized text (truncation to max_tokens exercised when it equals it)


class TextItemsSpec(_Strict):
    """A domain's text item encoder: item text -> item vector in that domain's item space (POST /v1/items).

    ``graph`` takes ``input_ids`` and ``attention_mask`` (int64, (batch, tokens)) as ``tokenizer`` (a Hugging
    Face ``tokenizer.json``) produces them with truncation to ``max_tokens`` and padding to the batch's longest
    text with ``pad_id``; ``lowercase`` texts are lowercased first (the sentence model's ``do_lower_case``).
    """

    graph: str
    tokenizer: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    dim: int = Field(ge=1)
    index: str  # key into Manifest.indexes: the item space the vectors join
    max_tokens: int = Field(ge=1)
    pad_id: int = Field(ge=0)
    lowercase: bool
    text_model: str  # the sentence-transformers model the graph embeds
    text_dim: int = Field(ge=1)  # its sentence vector size (the text tower's input)
    opset: int = Field(ge=17)
    parity: TextParityReport


class IndexSpec(_Strict):
    domain: str
    file: str
    ids_file: str
    type: IndexType
    description: str  # human readable, e.g. "IndexHNSWFlat M=32"
    metric: Literal["inner_product"]
    dim: int = Field(ge=1)
    count: int = Field(ge=1)
    params: dict[str, int]  # search parameters to set at load: efSearch (hnsw), nprobe (ivf)
    recall_at_10: float  # against exact inner-product search (1.0 for flat)
    recall_queries: int
    build_s: float


class DomainSpec(_Strict):
    n_items: int = Field(ge=1)
    ids_file: str
    popular_file: str | None
    # rows the graphs were trained on (the first ones); the rest were added by their text (POST /v1/items, then
    # folded in by `cdrec export --added-items`) and are never encoder input. None: every row.
    model_items: int | None = Field(default=None, ge=1)


class FileSpec(_Strict):
    bytes: int
    sha256: str


class OrtSpec(_Strict):
    """The onnxruntime session settings the parity was measured with (the ones to serve with)."""

    graph_optimization_level: str
    intra_op_num_threads: int


class Manifest(_Strict):
    format: Literal["cdrec-bundle/1"]
    version: str
    created_at: str
    git_commit: str | None
    data: str | None
    max_len: int = Field(ge=1)
    pad_id: Literal[0] = 0
    padding: Literal["left"] = "left"
    model_id_offset: Literal[1] = 1  # row r of an index / ids map is model item id r + 1
    domains: dict[str, DomainSpec]
    graphs: list[GraphSpec]
    indexes: dict[str, IndexSpec]
    onnxruntime: OrtSpec
    libraries: dict[str, str]
    files: dict[str, FileSpec]
    text_items: dict[str, TextItemsSpec] = Field(default_factory=dict)  # domain -> its text item encoder

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        problems: list[str] = []
        names = [g.name for g in self.graphs]
        if len(set(names)) != len(names):
            problems.append(f"graph names repeat: {names}")
        for g in self.graphs:
            idx = self.indexes.get(g.index)
            if idx is None:
                problems.append(f"graph {g.name} scores against index {g.index!r}, which the manifest lacks")
            elif idx.dim != g.dim:
                problems.append(f"graph {g.name} outputs dim {g.dim}; index {g.index!r} has dim {idx.dim}")
            elif idx.domain != g.target_domain:
                problems.append(f"graph {g.name} targets {g.target_domain}; index {g.index!r}: {idx.domain}")
            if g.intents is not None and (
                g.kind != "user_encoder"
                or g.intent_score is None
                or [len(o.shape) for o in g.outputs] != [3]
                or g.outputs[0].shape[1:] != [g.intents, g.dim]
            ):
                shapes = [o.shape for o in g.outputs]
                problems.append(
                    f"graph {g.name} declares {g.intents} intents (score {g.intent_score}) but is a {g.kind} with "
                    f"outputs {shapes}: a K-vector user encoder outputs (batch, {g.intents}, {g.dim}), with a score"
                )
            elif g.intents is None and g.intent_score is not None:
                problems.append(f"graph {g.name} has an intent_score but no intents")
            if g.serving_variant == "int8" and (g.quantized is None or not g.quantized.passed or not g.quantized.file):
                problems.append(f"graph {g.name} serves int8 but records no int8 graph that passed its gate")
            for t in g.inputs:
                if t.domain is not None and t.domain not in self.domains:
                    problems.append(f"graph {g.name} input {t.name} reads unknown domain {t.domain!r}")
        for name, d in self.domains.items():
            if d.model_items is not None and d.model_items > d.n_items:
                problems.append(f"domain {name}: model_items {d.model_items} > n_items {d.n_items}")
        for key, idx in self.indexes.items():
            dom = self.domains.get(idx.domain)
            if dom is None:
                problems.append(f"index {key!r} is of domain {idx.domain!r}, not in domains")
            elif idx.count != dom.n_items or idx.ids_file != dom.ids_file:
                problems.append(
                    f"index {key!r} holds {idx.count} items ({idx.ids_file}) but domain {idx.domain} has "
                    f"{dom.n_items} ({dom.ids_file})"
                )
        for domain, text in self.text_items.items():
            idx = self.indexes.get(text.index)
            if domain not in self.domains:
                problems.append(f"text_items: domain {domain!r} is not in domains")
            if idx is None:
                problems.append(f"text_items.{domain} joins index {text.index!r}, which the manifest lacks")
            elif idx.dim != text.dim or idx.domain != domain:
                problems.append(
                    f"text_items.{domain}: dim {text.dim} into index {text.index!r} ({idx.domain}, dim {idx.dim})"
                )
        listed = set(self.files)
        wanted = {g.file for g in self.graphs} | {i.file for i in self.indexes.values()}
        wanted |= {g.optimized_file for g in self.graphs if g.optimized_file}
        wanted |= {g.quantized.file for g in self.graphs if g.quantized and g.quantized.file}
        wanted |= {f for t in self.text_items.values() for f in (t.graph, t.tokenizer)}
        wanted |= {d.ids_file for d in self.domains.values()}
        wanted |= {d.popular_file for d in self.domains.values() if d.popular_file}
        if wanted - listed:
            problems.append(f"files not listed with their hashes: {sorted(wanted - listed)}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def user_encoder(self, domain: str) -> GraphSpec | None:
        return next((g for g in self.graphs if g.kind == "user_encoder" and g.target_domain == domain), None)

    def bridge(self, source: str, target: str) -> GraphSpec | None:
        pair = (source, target)
        found = (g for g in self.graphs if g.kind == "bridge" and (g.source_domain, g.target_domain) == pair)
        return next(found, None)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def current_bundle(root: Path) -> Path:
    """The bundle directory ``root/current`` points at (resolved once, so a later switch does not move it)."""
    link = Path(root) / CURRENT
    if not link.exists():
        raise FileNotFoundError(f"no published bundle: {link} does not exist")
    return link.resolve(strict=True)


def read_manifest(bundle: Path) -> Manifest:
    path = Path(bundle) / MANIFEST
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(Path(bundle), [f"{MANIFEST} is missing"]) from None
    except (OSError, ValueError) as exc:  # ValueError: bad JSON, and bytes that are not UTF-8
        raise BundleError(Path(bundle), [f"{MANIFEST} is not readable JSON ({exc})"]) from exc
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        where = [".".join(str(p) for p in e["loc"]) or "(root)" for e in exc.errors()]
        lines = [f"{MANIFEST}: {w}: {e['msg']}" for w, e in zip(where, exc.errors(), strict=True)]
        raise BundleError(Path(bundle), lines) from exc
