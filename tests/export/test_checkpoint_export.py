"""Self-describing checkpoints: `cdrec train X` then `cdrec export --checkpoint X` with NO --data gives a bundle
`cdrec export verify` accepts, for every model export supports; with --data, ids (not counts) are checked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.cli import main as cdrec
from core.manifest import read_manifest
from export.bundle import domains_from_checkpoints
from export.towers import ExportError
from training import checkpoint
from training.data.interactions import Interactions

FAST = ["--random-sequences", "32", "--real-sequences", "32"]
TINY = ["--dim", "16", "--layers", "1", "--heads", "2", "--max-len", "12", "--epochs", "1", "--patience", "1",
        "--batch-size", "64", "--negatives", "64"]


@pytest.fixture(scope="module")
def runs(data_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every exportable model, trained by `cdrec train` on the tiny csv (one epoch each)."""
    out = tmp_path_factory.mktemp("runs")
    common = ["--data", str(data_path), "--target-domain", "music", "--out", str(out)]
    assert cdrec(["train", "sasrec", *common, *TINY]) == 0
    assert cdrec(["train", "guru", *common, *TINY]) == 0
    assert cdrec(["train", "cdsrec", *common, *TINY, "--short-layers", "1"]) == 0
    assert cdrec(["train", "bridge", "inductive", "--data", str(data_path), "--source-domain", "book",
                  "--target-domain", "music", "--out", str(out), "--dim", "16", "--max-len", "12",
                  "--mf-epochs", "1", "--epochs", "1", "--negatives", "64", "--hidden", "16"]) == 0
    assert cdrec(["train", "dss", *common, *TINY, "--intents", "2"]) == 0
    return out


@pytest.mark.parametrize(
    ("towers", "bridges", "graphs"),
    [
        (["sasrec.music.pt"], [], {"user_encoder.music"}),
        (["gur.music.pt"], [], {"user_encoder.music"}),
        (["cdsrec.music.pt"], ["bridge.book__music.pt"], {"user_encoder.music", "bridge.book__music"}),
        (["dss.music.pt"], ["bridge.book__music.pt"], {"user_encoder.music", "bridge.book__music"}),  # K vectors
        (["sasrec.music.pt"], ["bridge-shared.book__music.pt"], {"user_encoder.music", "bridge.book__music"}),
    ],
)
def test_export_needs_no_data_and_verify_accepts_the_bundle(
    runs: Path,
    data: Interactions,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    towers: list[str],
    bridges: list[str],
    graphs: set[str],
) -> None:
    capsys.readouterr()
    args = [a for t in towers for a in ("--checkpoint", str(runs / t))]
    args += [a for b in bridges for a in ("--bridge-checkpoint", str(runs / b))]
    out = tmp_path / "artifacts"
    assert cdrec(["export", *args, "--out", str(out), *FAST]) == 0, capsys.readouterr().err
    assert set(json.loads(capsys.readouterr().out)["graphs"]) == graphs
    assert cdrec(["export", "verify", str(out / "current")]) == 0
    m = read_manifest(out / "current")
    assert m.data == data.name
    for d in ("music", "book"):  # the same ids the data gives, row for row
        assert json.loads((out / "current" / f"items.{d}.ids.json").read_text()) == data.item_ids[d][1:]
    popular = json.loads((out / "current" / "popular.music.json").read_text())
    counts = data.frame.loc[data.frame["domain"] == "music", "item"].value_counts()
    assert popular["counts"][0] == counts.max()


def test_with_data_the_ids_are_checked_and_the_first_difference_is_named(
    runs: Path, data_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ck = checkpoint.read(runs / "sasrec.music.pt")
    assert ck.items is not None and ck.format == checkpoint.FORMAT
    items = dict(ck.items)
    ids = list(items["music"].ids)
    ids[4], ids[5] = ids[5], ids[4]  # same count, two ids swapped: a count check would not see it
    items["music"] = checkpoint.Catalogue(ids, items["music"].counts, items["music"].histories)
    bad = checkpoint.save(tmp_path / "swapped.pt", ck.model, ck.meta, items)
    capsys.readouterr()
    code = cdrec(["export", "--checkpoint", str(bad), "--data", str(data_path), "--out", str(tmp_path / "a"), *FAST])
    err = capsys.readouterr().err
    assert code == 1 and f"model item 5 is {ids[4]!r} in the checkpoint but {ids[5]!r} in the data" in err
    # the same checkpoint beside one that disagrees with it, without --data: named as well
    with pytest.raises(ExportError, match="item ids are not those of"):
        domains_from_checkpoints([runs / "gur.music.pt", bad])
    # the untouched one passes the same check
    assert cdrec(["export", "--checkpoint", str(runs / "sasrec.music.pt"), "--data", str(data_path),
                  "--out", str(tmp_path / "b"), *FAST]) == 0


def test_an_old_checkpoint_without_ids_gets_a_message_saying_how_to_export_it(
    runs: Path, data_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blob = torch.load(runs / "sasrec.music.pt", map_location="cpu", weights_only=False)
    blob["format"] = "cdrec-checkpoint/1"  # as written before the catalogue existed
    for key in ("items", "domains", "max_len"):
        del blob[key]
    old = tmp_path / "old.pt"
    torch.save(blob, old)
    capsys.readouterr()
    assert cdrec(["export", "--checkpoint", str(old), "--out", str(tmp_path / "a"), *FAST]) == 1
    err = capsys.readouterr().err
    assert "before checkpoints carried their item ids" in err and "--data" in err and "retrain" in err
    assert cdrec(["export", "--checkpoint", str(old), "--data", str(data_path), "--out", str(tmp_path / "b"),
                  *FAST]) == 0  # with the data it was trained on, it still exports


def test_every_trainer_writes_the_catalogue_of_the_domains_it_reads(runs: Path, data: Interactions) -> None:
    for name in ("sasrec.music.pt", "gur.music.pt", "cdsrec.music.pt", "bridge.book__music.pt", "dss.music.pt"):
        ck = checkpoint.read(runs / name)
        assert ck.items is not None and set(ck.items) == {"music", "book"}, name
        assert ck.items["music"].ids == data.item_ids["music"][1:]
        assert ck.meta["target"] == "music" and 0 < len(ck.items["music"].histories) <= checkpoint.SAMPLE_USERS
        blob = torch.load(runs / name, map_location="cpu", weights_only=False)
        assert blob["domains"]["target"] == "music" and blob["max_len"] == 12, name


def test_a_text_model_exports_without_data_with_its_text_item_graph(
    data: Interactions, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """UniSRec (items from text): its checkpoint alone gives the user encoder, the ids and the text item graph
    (the real default sentence model, offline)."""
    from training.data.splits import leave_one_out
    from training.train_unisrec import UniSRecArgs, train_unisrec

    rng = np.random.default_rng(0)
    text = {}
    for d in data.domains:  # stand-in sentence vectors of the sentence model's width (384)
        v = rng.normal(size=(data.n_items(d) + 1, 384)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        v[0] = 0
        text[d] = v
    args = UniSRecArgs(pretrain_epochs=0, epochs=1, dim=16, layers=1, max_len=12, negatives=64)
    ckpt = tmp_path / "unisrec-inductive.music.pt"
    train_unisrec(leave_one_out(data, "music"), args, ckpt, text=text)
    out = tmp_path / "artifacts"
    capsys.readouterr()
    assert cdrec(["export", "--checkpoint", str(ckpt), "--out", str(out), *FAST]) == 0, capsys.readouterr().err
    assert set(json.loads(capsys.readouterr().out)["graphs"]) == {"user_encoder.music", "item_text.music"}
    assert cdrec(["export", "verify", str(out / "current")]) == 0
