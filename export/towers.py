"""What export needs of a model, as two small protocols, and the loaders that turn checkpoints into them.

* a **user tower**: ``forward(target_seq (B, T), source_seq (B, S)) -> (B, D)`` plus ``item_vectors()`` of the
  target domain (N + 1, D), row 0 padding (CDSRec's serving module; SASRec through ``SASRecTower``; a
  UniSRec-style text model, ``forward(target_seq)`` plus ``text_tower()``, through ``TextSeqTower``);
* a **bridge**: ``forward(source_seq (B, S)) -> (B, D)`` in the target item space plus the ``item_vectors()``
  it is scored against (the inductive bridge of models/bridge.py).

``Graph`` is one such module made ready to export: which domains it reads and writes, how long its sequences
may be, where it came from. ``MeanPoolBridge`` is a tiny untrained bridge for tests and the bench when no
bridge checkpoint is at hand; it is never exported by the CLI.
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import nn

from training import checkpoint
from training.models.sasrec import SASRec


class UserTower(Protocol):
    def __call__(self, target_seq: torch.Tensor, source_seq: torch.Tensor) -> torch.Tensor: ...
    def item_vectors(self) -> torch.Tensor: ...


class Bridge(Protocol):
    def __call__(self, source_seq: torch.Tensor) -> torch.Tensor: ...
    def item_vectors(self) -> torch.Tensor: ...


class ExportError(RuntimeError):
    """The export cannot produce a bundle to publish; the message says why."""


class SASRecTower(nn.Module):
    """SASRec as a user tower: reads the target sequence, ignores the source one (single-domain baseline)."""

    def __init__(self, model: SASRec | nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, target_seq: torch.Tensor, source_seq: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(target_seq)  # (B, T) -> (B, D); source_seq is unused
        return out

    def item_vectors(self) -> torch.Tensor:
        out: torch.Tensor = self.model.item_vectors()  # type: ignore[operator]
        return out


class TextSeqTower(SASRecTower):
    """A single-domain model whose items come from text (UniSRec): the user tower reads the target sequence and
    ignores the source one, as SASRec's does; ``text_tower()`` (sentence vectors (B, E) -> item vectors (B, D))
    goes to the text item graph (export/text_items.py), so new items can be added by their text alone."""

    def text_tower(self) -> nn.Module:
        tower: nn.Module = self.model.text_tower()  # type: ignore[operator]
        return tower


def is_text_model(model: nn.Module) -> bool:
    return _n_args(model) == 1 and hasattr(model, "text_tower") and hasattr(model, "item_vectors")


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


def _first(cfg: object, *names: str) -> int:
    return next((int(v) for n in names if (v := getattr(cfg, n, None))), 0)


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _n_args(module: nn.Module) -> int:
    return len(inspect.signature(module.forward).parameters)


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


def tower_graph(
    model: nn.Module,
    meta: dict[str, Any],
    path: Path | None = None,
    target: str | None = None,
    source: str | None = None,
) -> Graph:
    """A loaded model (SASRec or a two-input tower such as CDSRec) as a user-encoder ``Graph``."""
    where = path or Path("<model>")
    tgt, src = _domains(meta, target, source, where)
    if isinstance(model, SASRec):
        if meta.get("merged"):
            raise ExportError(
                f"{where}: sasrec-merged reads one interleaved two-domain sequence, which the "
                "(target_seq, source_seq) serving signature cannot carry; export sasrec or cdsrec instead"
            )
        module: nn.Module = SASRecTower(model)
        n_src = None
    elif is_text_model(model):
        module, n_src = TextSeqTower(model), None
    elif _n_args(model) == 2 and hasattr(model, "item_vectors"):
        # a model may provide a leaner module with the same output for serving (CDSRec: CDSRecServing)
        module = model.serving_module() if callable(getattr(model, "serving_module", None)) else model
        cfg = getattr(model, "cfg", None)
        n_src = meta.get("n_source_items") or getattr(cfg, "n_source_items", None) or getattr(cfg, "n_source", None)
    else:
        raise ExportError(f"{where}: {type(model).__name__} is not a user tower: forward(target_seq, source_seq)")
    cfg = getattr(model, "cfg", None)
    max_len = int(getattr(cfg, "max_len", 0) or meta.get("max_len") or 0)
    if max_len <= 0:
        raise ExportError(f"{where}: the model config does not give max_len")
    text_model = None
    if isinstance(module, TextSeqTower):
        text_model = str(meta.get("text_model") or getattr(cfg, "text_model", "") or "") or None
    n_target = int(meta.get("n_target_items") or _first(cfg, "n_target_items", "n_target", "n_items"))
    return Graph(
        kind="user_encoder",
        module=module.eval(),
        target_domain=tgt,
        source_domain=src,
        target_max_len=max_len,
        source_max_len=int(getattr(cfg, "source_max_len", max_len)),
        n_target_items=n_target,
        n_source_items=int(n_src or 0) or None,
        model=str(meta.get("model") or type(model).__name__),
        checkpoint_sha256=_sha256(path) if path else None,
        data=meta.get("data"),
        text_model=text_model,
    )


def bridge_graph(
    model: nn.Module,
    meta: dict[str, Any],
    path: Path | None = None,
    target: str | None = None,
    source: str | None = None,
) -> Graph:
    """A loaded inductive bridge (``forward(source_seq)``) as a bridge ``Graph``."""
    where = path or Path("<model>")
    tgt, src = _domains(meta, target, source, where)
    if src is None:
        raise ExportError(f"{where}: the bridge checkpoint does not name its source domain; pass --source-domain")
    if _n_args(model) != 1 or not hasattr(model, "item_vectors"):
        raise ExportError(
            f"{where}: {type(model).__name__} is not an inductive bridge: forward(source_seq) -> user vector "
            "(PTUPCDR and EMCDR take user ids and cannot serve users the model has not seen)"
        )
    cfg = getattr(model, "cfg", None)
    max_len = int(getattr(cfg, "max_len", 0) or meta.get("max_len") or 0)
    n_target = int(meta.get("n_target_items") or getattr(cfg, "n_target_items", 0) or 0)
    n_src = int(meta.get("n_source_items") or getattr(cfg, "n_source_items", 0) or 0)
    if max_len <= 0 or n_target <= 0 or n_src <= 0:
        raise ExportError(f"{where}: the bridge config must give max_len, n_source_items and n_target_items")
    return Graph(
        kind="bridge",
        module=model.eval(),
        target_domain=tgt,
        source_domain=src,
        target_max_len=None,
        source_max_len=max_len,
        n_target_items=n_target,
        n_source_items=n_src,
        model=str(meta.get("model") or f"{type(model).__module__}:{type(model).__qualname__}"),
        checkpoint_sha256=_sha256(path) if path else None,
        data=meta.get("data"),
    )


def load_tower(path: Path, target: str | None = None, source: str | None = None) -> Graph:
    model, meta = _load(path)
    from export import dss  # DSS is its own case (K intent vectors): export/dss.py

    if dss.is_dss(model):
        return dss.dss_graph(model, meta, path, target, source)
    return tower_graph(model, meta, path, target, source)


def load_bridge(path: Path, target: str | None = None, source: str | None = None) -> Graph:
    model, meta = _load(path)
    return bridge_graph(model, meta, path, target, source)


def _load(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    try:
        return checkpoint.load(path)
    except checkpoint.CheckpointError as exc:
        raise ExportError(str(exc)) from exc
