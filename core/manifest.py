"""The artifact bundle contract (DESIGN §4): the manifest schema and ``verify_bundle`` (export and service).

A bundle is one directory ``artifacts/<version>/`` written whole by ``cdrec export`` and published atomically;
``artifacts/current`` is a symlink to the serving version. ``manifest.json`` describes everything baked into
the bundle, so the service configures nothing twice: graph input/output names, dtypes and shapes, the item
indexes and the parameters to search them with, the id maps and the parity the export proved.

Ids: row ``r`` of ``items.<domain>.faiss`` and of ``items.<domain>.ids.json`` is the item whose model id
(the int fed to the ONNX graphs) is ``r + 1``; 0 is padding. Sequences are left padded (core.sequence) and
no longer than the input's ``max_len``.

``verify_bundle`` is the one load-time check. This module imports neither onnxruntime nor faiss (core is
torch-free and dependency-light); the graph and index checks import them inside the function, so the service
(which has both) runs every check, and a caller without them may pass ``deep=False`` for the file, schema,
id-map and hash checks only. Export adds ONNX-level checks (opset, checker) on top, in export/verify.py.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

FORMAT: Final = "cdrec-bundle/1"
MANIFEST = "manifest.json"
CURRENT = "current"

GraphKind = Literal["user_encoder", "bridge"]
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
    intent_score: Literal["max", "quota", "round-robin"] | None = None


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


def _check_json_files(bundle: Path, m: Manifest, problems: list[str]) -> None:
    for name, dom in m.domains.items():
        try:
            ids = json.loads((bundle / dom.ids_file).read_text())
        except (OSError, ValueError) as exc:  # ValueError: bad JSON, and bytes that are not UTF-8
            problems.append(f"{dom.ids_file}: not readable JSON ({exc})")
            continue
        if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
            problems.append(f"{dom.ids_file}: not a JSON list of string item ids")
            continue
        if len(ids) != dom.n_items:
            problems.append(f"{dom.ids_file}: {len(ids)} ids but the manifest says {name} has {dom.n_items}")
        if len(set(ids)) != len(ids):
            problems.append(f"{dom.ids_file}: item ids repeat")
        if dom.popular_file:
            try:
                popular = json.loads((bundle / dom.popular_file).read_text())
                unknown = set(popular["item_ids"]) - set(ids)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                problems.append(f"{dom.popular_file}: not a popularity list ({exc!r})")
                continue
            if unknown:
                problems.append(f"{dom.popular_file}: {len(unknown)} item ids not in {dom.ids_file}")


_ORT_DTYPES = {"tensor(int64)": "int64", "tensor(float)": "float32"}


def _check_graphs(bundle: Path, m: Manifest, problems: list[str]) -> None:
    try:
        import onnxruntime as ort
    except ImportError:
        problems.append("onnxruntime is not installed: cannot check the ONNX graphs (deep=False skips them)")
        return
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    declared = [(g.file, g.inputs, g.outputs) for g in m.graphs]
    declared += [(t.graph, t.inputs, t.outputs) for t in m.text_items.values()]
    for file, inputs, outputs in declared:
        try:
            session = ort.InferenceSession(str(bundle / file), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            problems.append(f"{file}: onnxruntime cannot load it ({str(exc).strip()[:200]})")
            continue
        for role, want_specs, actual in (
            ("input", inputs, session.get_inputs()),
            ("output", outputs, session.get_outputs()),
        ):
            got = [(a.name, _ORT_DTYPES.get(a.type, a.type), list(a.shape)) for a in actual]
            want = [(t.name, t.dtype, list(t.shape)) for t in want_specs]
            if got != want:
                problems.append(f"{file}: the graph's {role}s are {got} but the manifest says {want}")


TEXT_INPUTS: Final = ("input_ids", "attention_mask")


def _check_text_items(bundle: Path, m: Manifest, problems: list[str]) -> None:
    """The text item graphs take exactly (input_ids, attention_mask) and their tokenizers load."""
    if not m.text_items:
        return
    for domain, t in m.text_items.items():
        names = tuple(i.name for i in t.inputs)
        if names != TEXT_INPUTS or any(i.dtype != "int64" for i in t.inputs):
            problems.append(f"{t.graph}: text item inputs are {names}, expected int64 {TEXT_INPUTS} ({domain})")
        if len(t.outputs) != 1 or t.outputs[0].dtype != "float32" or t.outputs[0].shape[-1:] != [t.dim]:
            problems.append(f"{t.graph}: the output is not one float32 (batch, {t.dim}) item vector ({domain})")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        problems.append("tokenizers is not installed: cannot check the text item tokenizers (deep=False skips)")
        return
    for t in m.text_items.values():
        try:
            Tokenizer.from_file(str(bundle / t.tokenizer))
        except Exception as exc:  # tokenizers raises a bare Exception for a malformed file
            problems.append(f"{t.tokenizer}: the tokenizers library cannot load it ({str(exc).strip()[:200]})")


def _check_indexes(bundle: Path, m: Manifest, problems: list[str]) -> None:
    try:
        import faiss
    except ImportError:
        problems.append("faiss is not installed: cannot check the item indexes (pass deep=False to skip)")
        return
    kinds = {"flat": "IndexFlat", "hnsw": "IndexHNSW", "ivf": "IndexIVF"}
    for key, spec in m.indexes.items():
        try:
            index = faiss.read_index(str(bundle / spec.file))
        except Exception as exc:  # faiss raises RuntimeError with a C++ message for a bad file
            problems.append(f"{spec.file}: faiss cannot read it ({str(exc).strip()[:200]})")
            continue
        if index.d != spec.dim:
            problems.append(f"{spec.file}: index dim is {index.d} but the manifest says {spec.dim} ({key!r})")
        if index.ntotal != spec.count:
            problems.append(f"{spec.file}: index holds {index.ntotal} vectors, the manifest {spec.count}")
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            problems.append(f"{spec.file}: index metric is not inner product")
        if not type(index).__name__.startswith(kinds[spec.type]):
            problems.append(f"{spec.file}: index is a {type(index).__name__}, the manifest says {spec.type}")


def verify_bundle(path: Path, deep: bool = True, hashes: bool = True) -> Manifest:
    """Check a bundle before serving it; return its manifest or raise ``BundleError`` naming what disagrees.

    Always: the manifest parses and is self-consistent, its version names the directory, every listed file is
    present, the id maps have one unique id per indexed item, the popularity lists name known items. ``deep``:
    the ONNX graphs (text item graphs too) load in onnxruntime with exactly the manifest's inputs and outputs,
    the text tokenizers load, the FAISS indexes have its dims, counts, metric and type. ``hashes``: every
    file's sha256 matches the manifest.
    """
    bundle = Path(path)
    if not bundle.is_dir():
        raise BundleError(bundle, ["not a directory"])
    bundle = bundle.resolve()
    m = read_manifest(bundle)
    problems: list[str] = []
    if m.version != bundle.name:
        problems.append(f"{MANIFEST} says version {m.version!r} but the directory is {bundle.name!r}")
    missing = sorted(name for name in m.files if not (bundle / name).is_file())
    problems += [f"{name} is missing" for name in missing]
    if missing:
        raise BundleError(bundle, problems)
    for name, spec in m.files.items():
        size = os.path.getsize(bundle / name)
        if size != spec.bytes:
            problems.append(f"{name}: {size} bytes but the manifest says {spec.bytes}")
    _check_json_files(bundle, m, problems)
    if deep:
        _check_graphs(bundle, m, problems)
        _check_text_items(bundle, m, problems)
        _check_indexes(bundle, m, problems)
    if hashes:
        for name, spec in m.files.items():
            if sha256_file(bundle / name) != spec.sha256:
                problems.append(f"{name}: sha256 differs from the manifest (file changed after export)")
    if problems:
        raise BundleError(bundle, problems)
    return m
