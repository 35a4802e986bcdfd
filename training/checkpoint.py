"""Checkpoints that rebuild themselves (DESIGN §3, §7.5): config + weights + JSON metadata in one file.

``save(path, model, meta)`` stores the model's class path, its config dataclass as a dict, its state dict and
free-form JSON metadata (data, domains, metrics, id maps); ``load(path)`` rebuilds the module with no other
input. A file whose class or config does not fit raises a ``CheckpointError`` saying what is off.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


class CheckpointError(RuntimeError):
    pass


def save(path: Path, model: nn.Module, meta: dict[str, Any] | None = None) -> Path:
    cfg = model.cfg  # every cdrec model keeps its config dataclass as .cfg
    if not is_dataclass(cfg):
        raise CheckpointError(f"{type(model).__name__}.cfg is not a dataclass")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "format": "cdrec-checkpoint/1",
        "class": f"{type(model).__module__}:{type(model).__qualname__}",
        "config_class": f"{type(cfg).__module__}:{type(cfg).__qualname__}",
        "config": json.loads(json.dumps(asdict(cfg))),
        "meta": json.loads(json.dumps(meta or {})),
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


def load(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored at ``path`` (in eval mode) and return it with its metadata."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc})") from exc
    if not isinstance(blob, dict) or blob.get("format") != "cdrec-checkpoint/1":
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
    return model, blob["meta"]
