"""The graphs export writes, built from each model's own serving declaration (training/models/serving.py).

A model's ``serving()`` says its role, the module to write and what it reads; ``declared`` fetches it (a model
that declares nothing, or declares itself not servable, gets an ExportError saying so) and ``graph_from`` turns
it into a ``Graph``, with no guessing from signatures or attribute names and no branch per model kind. The roles
and their ONNX signatures:

* a **user tower**: ``forward(target_seq (B, T), source_seq (B, S)) -> (B, D)`` plus ``item_vectors()`` of the
  target domain (N + 1, D), row 0 padding; a text-item model's tower (``Serving.text``) is wrapped in
  ``TextSeqTower``, whose ``text_tower()`` export/text_items.py writes as the text item graph;
* **intents** (DSS): routed to export/dss.py, which writes K vectors (B, K, D) or their weighted sum;
* a **bridge**: ``forward(source_seq (B, S)) -> (B, D)`` in the target item space plus the ``item_vectors()``
  it is scored against (the inductive bridge of models/bridge.py).

``Graph`` is one such module made ready to export: which domains it reads and writes, how long its sequences
may be, where it came from. ``MeanPoolBridge`` is a tiny untrained bridge for tests and the bench when no
bridge checkpoint is at hand; it is never exported by the CLI.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import nn

from training import checkpoint
from training.models.serving import NotServable, Serving, TextItems


class UserTower(Protocol):
    def __call__(self, target_seq: torch.Tensor, source_seq: torch.Tensor) -> torch.Tensor: ...
    def item_vectors(self) -> torch.Tensor: ...


class Bridge(Protocol):
    def __call__(self, source_seq: torch.Tensor) -> torch.Tensor: ...
    def item_vectors(self) -> torch.Tensor: ...


class ExportError(RuntimeError):
    """The export cannot produce a bundle to publish; the message says why."""


class TextSeqTower(nn.Module):
    """The user tower of a model whose items come from text (UniSRec; its ``Serving.text``): forwards as the
    declared tower, and ``text_tower()`` (sentence vectors (B, E) -> item vectors (B, D)) goes to the text item
    graph (export/text_items.py), so new items can be added by their text alone."""

    def __init__(self, tower: nn.Module, text: TextItems) -> None:
        super().__init__()
        self.tower = tower
        self.text = text.tower

    def forward(self, target_seq: torch.Tensor, source_seq: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.tower(target_seq, source_seq)
        return out

    def item_vectors(self) -> torch.Tensor:
        out: torch.Tensor = self.tower.item_vectors()  # type: ignore[operator]
        return out

    def text_tower(self) -> nn.Module:
        return self.text


class MeanPoolBridge(nn.Module):
    """Mean source item embedding through a linear map into the target item space: (B, S) -> (B, D)."""

    def __init__(self, n_source_items: int, item_vectors: torch.Tensor, dim: int = 16) -> None:
        super().__init__()
        self.source_items = nn.Embedding(n_source_items + 1, dim, padding_idx=0)
        self.map = nn.Linear(dim, item_vectors.shape[1])
        self.register_buffer("target_items", item_vectors.detach().clone())

    def forward(self, source_seq: torch.Tensor) -> torch.Tensor:
        keep = (source_seq != 0).to(torch.float32)[..., None]  # (B, S, 1)
        pooled = (self.source_items(source_seq) * keep).sum(1) / keep.sum(1).clamp(min=1.0)  # (B, dim)
        out: torch.Tensor = self.map(pooled)  # (B, D)
        return out

    def item_vectors(self) -> torch.Tensor:
        return self.get_buffer("target_items")

    def serving(self) -> Serving:
        n_src = self.source_items.num_embeddings - 1
        n_tgt = self.get_buffer("target_items").shape[0] - 1
        # max_len 0: any length; the caller's meta gives it (tests, bench)
        return Serving("bridge", self, ("source",), n_tgt, 0, n_source_items=n_src)


@dataclass
class Graph:
    """One module to export as ``<kind>.<domains>.onnx`` and the facts the manifest records about it."""

    kind: Literal["user_encoder", "bridge"]
    module: nn.Module
    target_domain: str
    source_domain: str | None
    target_max_len: int | None  # longest target sequence (None: a bridge reads no target sequence)
    source_max_len: int  # longest source sequence
    n_target_items: int
    n_source_items: int | None  # None: the tower reads no source ids (then random source inputs use 1..n)
    model: str
    checkpoint_sha256: str | None = None
    data: str | None = None  # the data the checkpoint was trained on, as its meta names it
    text_model: str | None = None  # a text model (TextSeqTower): the sentence model its text tower reads
    intents: int | None = None  # a K-vector user encoder (DSS, export/dss.py): output (B, K, D), max over K
    intent_score: str | None = None  # how a K-vector encoder's lists merge (manifest GraphSpec.intent_score)

    @property
    def name(self) -> str:
        if self.kind == "user_encoder":
            return f"user_encoder.{self.target_domain}"
        return f"bridge.{self.source_domain}__{self.target_domain}"

    def item_vectors(self) -> torch.Tensor:
        """(N, D) float32 vectors of the real target items (padding row dropped), row r = model id r + 1."""
        with torch.no_grad():
            vecs: torch.Tensor = self.module.item_vectors()  # type: ignore[operator]
        vecs = vecs.detach().to(torch.float32)
        if vecs.shape[0] < self.n_target_items + 1:
            raise ExportError(f"{self.name}: item_vectors() has {vecs.shape[0]} rows for {self.n_target_items} items")
        return vecs[1 : self.n_target_items + 1].contiguous()


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _domains(meta: dict[str, Any], target: str | None, source: str | None, path: Path) -> tuple[str, str | None]:
    """The checkpoint's own domains; the CLI's --target-domain / --source-domain fill in what it does not name."""
    named = {
        "target": meta.get("target") or meta.get("target_domain") or meta.get("domain"),
        "source": meta.get("source") or meta.get("source_domain"),
    }
    for role, given in (("target", target), ("source", source)):
        if given and named[role] and given != named[role]:
            raise ExportError(f"{path}: the checkpoint's {role} domain is {named[role]!r}, not {given!r}")
    tgt, src = named["target"] or target, named["source"] or source
    if not tgt:
        raise ExportError(f"{path}: the checkpoint does not name its target domain; pass --target-domain")
    return str(tgt), (str(src) if src else None)


def declared(model: nn.Module, where: Path | str = "<model>") -> Serving:
    """The model's own serving declaration (training/models/serving.py), or an ExportError saying why not."""
    serving = getattr(model, "serving", None)
    if not callable(serving):
        raise ExportError(
            f"{where}: {type(model).__name__} declares no serving role: an exportable model has a serving() method "
            "returning training.models.serving.Serving (see training/models/sasrec.py)"
        )
    try:
        spec = serving()
    except NotServable as exc:
        raise ExportError(f"{where}: {exc}") from exc
    if not isinstance(spec, Serving):
        raise ExportError(f"{where}: {type(model).__name__}.serving() returned {type(spec).__name__}, not a Serving")
    return spec


def graph_from(
    spec: Serving,
    meta: dict[str, Any],
    path: Path | None = None,
    target: str | None = None,
    source: str | None = None,
    name: str = "<model>",
) -> Graph:
    """The ``Graph`` a declaration describes. The checkpoint's meta names the domains (the CLI's flags fill in
    what it does not) and may pin the target item count (a model trained on a wider id space, sasrec-merged)."""
    where = path or Path("<model>")
    tgt, src = _domains(meta, target, source, where)
    if "source" in spec.reads and src is None:
        raise ExportError(f"{where}: the checkpoint does not name its source domain; pass --source-domain")
    max_len = int(spec.max_len or meta.get("max_len") or 0)
    n_target = int(meta.get("n_target_items") or spec.n_target_items)
    n_src = None if spec.n_source_items is None else int(meta.get("n_source_items") or spec.n_source_items) or None
    if max_len <= 0 or n_target <= 0 or ("source" in spec.reads and not n_src):
        raise ExportError(f"{where}: the model must declare max_len, n_target_items and (reading source) "
                          "n_source_items")
    bridge = spec.role == "bridge"
    module = spec.module if spec.text is None else TextSeqTower(spec.module, spec.text)
    return Graph(
        kind="bridge" if bridge else "user_encoder",
        module=module.eval(),
        target_domain=tgt,
        source_domain=src,
        target_max_len=None if bridge else max_len,
        source_max_len=max_len if bridge else int(spec.source_max_len or max_len),
        n_target_items=n_target,
        n_source_items=n_src,
        model=str(meta.get("model") or name),
        checkpoint_sha256=_sha256(path) if path else None,
        data=meta.get("data"),
        text_model=None if spec.text is None else (str(meta.get("text_model") or spec.text.text_model) or None),
        intents=spec.intents if spec.role == "intents" else None,
        intent_score=spec.intent_score if spec.role == "intents" else None,
    )


def model_graph(role: Literal["user_tower", "bridge"], model: nn.Module, meta: dict[str, Any], path: Path | None = None,
                target: str | None = None, source: str | None = None) -> Graph:
    """A loaded model as the Graph of ``role``, from its declaration: a user tower (or K intent vectors, which
    export/dss.py writes) or a bridge (``forward(source_seq)``). A model declaring the other role is refused."""
    where = path or Path("<model>")
    spec = declared(model, where)
    if (spec.role == "bridge") != (role == "bridge"):
        flag = "--bridge-checkpoint" if spec.role == "bridge" else "--checkpoint"
        raise ExportError(f"{where}: {type(model).__name__} serves as {spec.role}, not {role}: pass it as {flag}")
    if meta.get("merged"):
        raise ExportError(
            f"{where}: sasrec-merged reads one interleaved two-domain sequence, which the "
            "(target_seq, source_seq) serving signature cannot carry; export sasrec or cdsrec instead"
        )
    if spec.role == "intents":
        from export import dss  # K intent vectors: their graph lives in export/dss.py

        return dss.dss_graph(model, meta, path, target, source)
    name = f"{type(model).__module__}:{type(model).__qualname__}" if role == "bridge" else type(model).__name__
    return graph_from(spec, meta, path, target, source, name)


tower_graph = functools.partial(model_graph, "user_tower")  # (model, meta, path, target, source) -> Graph
bridge_graph = functools.partial(model_graph, "bridge")


def load_tower(path: Path, target: str | None = None, source: str | None = None) -> Graph:
    model, meta = _load(path)
    return tower_graph(model, meta, path, target, source)


def load_bridge(path: Path, target: str | None = None, source: str | None = None) -> Graph:
    model, meta = _load(path)
    return bridge_graph(model, meta, path, target, source)


def _load(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    try:
        return checkpoint.load(path)
    except checkpoint.CheckpointError as exc:
        raise ExportError(str(exc)) from exc
