"""Checkpoints that rebuild themselves (DESIGN §3, §7.5): config + weights + JSON metadata + item ids in one file.

``save(path, model, meta, items)`` stores the model's class path, its config dataclass as a dict, its state dict,
free-form JSON metadata (data, domains, metrics), the model's domains and ``max_len``, and (format 2) the
**catalogue** of every domain its graphs read: the external id of each model item, the items' interaction counts
(the popularity fallback) and a small sample of real users' histories (the export's parity inputs). So
``cdrec export --checkpoint X`` needs no ``--data``. ``load(path)`` rebuilds the module with no other input;
``read(path)`` also returns the catalogue (``None`` for a format-1 checkpoint, written before it was carried).
A file whose class or config does not fit raises a ``CheckpointError`` saying what is off.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.data.interactions import Interactions

FORMAT = "cdrec-checkpoint/2"
OLD_FORMATS = ("cdrec-checkpoint/1",)  # no catalogue: export needs --data for these
SAMPLE_USERS = 256  # users whose histories a checkpoint carries for the export's parity on real inputs


class CheckpointError(RuntimeError):
    pass


@dataclass
class Catalogue:
    """One domain's items as the model saw them: model item r + 1 is external id ``ids[r]``."""

    ids: list[str]
    counts: list[int]  # interactions per item in the data (same order as ids): the popularity fallback
    histories: dict[int, list[int]] = field(default_factory=dict)  # sampled user -> model item ids, oldest first


@dataclass
class Checkpoint:
    model: nn.Module
    meta: dict[str, Any]
    items: dict[str, Catalogue] | None  # None: a format-1 checkpoint (no id maps)
    format: str


def catalogue(
    data: Interactions, domains: Iterable[str | None], sample_users: int = SAMPLE_USERS, seed: int = 0
) -> dict[str, Catalogue]:
    """The catalogue of each named domain of ``data`` (None entries skipped), histories of one shared sample of
    users (so a two-domain graph gets both sides of the same users)."""
    names = [d for d in dict.fromkeys(domains) if d is not None]
    for d in names:
        if d not in data.item_ids:
            raise CheckpointError(f"domain {d!r} is not in the data (it has {data.domains})")
    seqs = {d: data.sequences(d) for d in names}
    users = sorted(set().union(*(s.keys() for s in seqs.values()))) if seqs else []
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(users, size=min(sample_users, len(users)), replace=False).tolist()) if users else []
    out: dict[str, Catalogue] = {}
    frame = data.frame
    for d in names:
        n = data.n_items(d)
        counts = np.bincount(frame.loc[frame["domain"] == d, "item"].to_numpy(), minlength=n + 1)[1:]
        hist = {int(u): seqs[d][u][0].tolist() for u in pick if u in seqs[d]}
        out[d] = Catalogue([str(x) for x in data.item_ids[d][1:]], counts.tolist(), hist)
    return out


def save(path: Path, model: nn.Module, meta: dict[str, Any] | None = None,
         items: dict[str, Catalogue] | None = None) -> Path:
    """Write ``model`` with ``meta`` and the ``items`` catalogue of every domain it reads (``catalogue()``)."""
    cfg = model.cfg  # every cdrec model keeps its config dataclass as .cfg
    if not is_dataclass(cfg) or isinstance(cfg, type):
        raise CheckpointError(f"{type(model).__name__}.cfg is not a dataclass")
    meta = json.loads(json.dumps(meta or {}))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    max_len = getattr(cfg, "max_len", None) or meta.get("max_len")
    blob = {
        "format": FORMAT,
        "class": f"{type(model).__module__}:{type(model).__qualname__}",
        "config_class": f"{type(cfg).__module__}:{type(cfg).__qualname__}",
        "config": json.loads(json.dumps(asdict(cfg))),
        "meta": meta,
        "domains": {"target": meta.get("target") or meta.get("domain"), "source": meta.get("source")},
        "max_len": None if max_len is None else int(max_len),
        "items": None if items is None else {d: asdict(c) for d, c in items.items()},
        "state_dict": model.state_dict(),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)  # never leave a half-written checkpoint under the real name
    return path


def _resolve(dotted: str) -> Any:
    module, _, name = dotted.partition(":")
    if not module.startswith("training.models."):
        raise CheckpointError(f"refusing to import {dotted!r}: not a cdrec model")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _items(raw: Any) -> dict[str, Catalogue] | None:
    if raw is None:
        return None
    return {
        d: Catalogue(list(c["ids"]), list(c["counts"]), {int(u): list(s) for u, s in c["histories"].items()})
        for d, c in raw.items()
    }


def read(path: Path) -> Checkpoint:
    """Rebuild the model stored at ``path`` (in eval mode); with its metadata and catalogue."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc})") from exc
    if not isinstance(blob, dict) or blob.get("format") not in (FORMAT, *OLD_FORMATS):
        raise CheckpointError(f"{path}: not a cdrec checkpoint")
    cfg_cls, cls = _resolve(blob["config_class"]), _resolve(blob["class"])
    config = dict(blob["config"])
    for key, value in list(config.items()):  # JSON turned tuples into lists
        if isinstance(value, list):
            config[key] = tuple(value)
    model = cls(cfg_cls(**config))
    missing, unexpected = model.load_state_dict(blob["state_dict"], strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit {blob['class']}: missing {missing}, unexpected {unexpected}")
    model.eval()
    return Checkpoint(model, blob["meta"], _items(blob.get("items")), blob["format"])


def load(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored at ``path`` (in eval mode) and return it with its metadata."""
    ck = read(path)
    return ck.model, ck.meta
