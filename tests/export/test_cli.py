"""`cdrec export` end to end: checkpoints + data on disk -> a bundle that `cdrec export verify` accepts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.cli import main as cdrec
from core.manifest import current_bundle, read_manifest
from training import checkpoint
from training.data.interactions import Interactions


def _bridge_checkpoint(data: Interactions, path: Path) -> Path:
    bridge = pytest.importorskip("training.models.bridge")
    torch.manual_seed(0)
    cfg = bridge.InductiveBridgeConfig(
        n_source_items=data.n_items("book"),
        n_target_items=data.n_items("music"),
        dim=8,
        target_dim=16,
        hidden=16,
        max_len=20,
    )
    model = bridge.InductiveBridge(cfg)
    with torch.no_grad():
        model.target_items.normal_()  # an item space of its own (dim 17), not the tower's
    meta = {"model": "bridge-inductive", "source": "book", "target": "music", "data": data.name}
    return checkpoint.save(path, model, meta)


def test_cli_exports_a_tower_and_a_bridge_then_verifies(
    checkpoint_path: Path,
    data_path: Path,
    data: Interactions,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bridge = _bridge_checkpoint(data, tmp_path / "bridge.pt")
    out = tmp_path / "artifacts"
    code = cdrec(
        [
            "export",
            "--checkpoint",
            str(checkpoint_path),
            "--bridge-checkpoint",
            str(bridge),
            "--data",
            str(data_path),
            "--out",
            str(out),
            "--random-sequences",
            "64",
            "--real-sequences",
            "64",
        ]
    )
    assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["graphs"]) == {"user_encoder.music", "bridge.book__music"}
    m = read_manifest(current_bundle(out))
    assert m.bridge("book", "music").dim == 17 and m.bridge("book", "music").index == "music.bridge"  # type: ignore[union-attr]
    assert cdrec(["export", "verify", str(out / "current")]) == 0


def test_cli_refuses_bad_checkpoints(
    checkpoint_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cdrec(["export", "--checkpoint", str(tmp_path / "nope.pt"), "--data", "x", "--out", str(tmp_path)]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
    assert cdrec(["export", "--out", str(tmp_path)]) == 2
    assert cdrec(["export", "verify", str(tmp_path / "nothing")]) == 1
    assert "not a directory" in capsys.readouterr().err
