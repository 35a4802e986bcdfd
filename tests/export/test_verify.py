"""A tampered bundle is refused, and the message names what disagrees (core.manifest + export.verify)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import pytest

from core.bundle_checks import verify_bundle
from core.manifest import MANIFEST, BundleError, sha256_file
from export.cli import main
from export.verify import verify


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / bundle.name
    shutil.copytree(bundle, dst)
    return dst


def _edit_manifest(bundle: Path, edit: Callable[[dict], None]) -> None:
    raw = json.loads((bundle / MANIFEST).read_text())
    edit(raw)
    (bundle / MANIFEST).write_text(json.dumps(raw))


def _rehash(bundle: Path, name: str) -> None:
    """Make the manifest's size and hash agree with a changed file, so a deeper check has to catch it."""

    def edit(raw: dict) -> None:
        raw["files"][name] = {"bytes": (bundle / name).stat().st_size, "sha256": sha256_file(bundle / name)}

    _edit_manifest(bundle, edit)


def _refused(bundle: Path, pattern: str) -> None:
    for check in (verify_bundle, verify):
        with pytest.raises(BundleError, match=pattern):
            check(bundle)


def test_untouched_copy_verifies(bundle: Path, tmp_path: Path) -> None:
    assert verify(_copy(bundle, tmp_path)).version == "v1"


def test_missing_file_is_named(bundle: Path, tmp_path: Path) -> None:
    b = _copy(bundle, tmp_path)
    (b / "items.music.faiss").unlink()
    _refused(b, "items.music.faiss is missing")


def test_index_of_the_wrong_dim_is_refused(bundle: Path, tmp_path: Path) -> None:
    b = _copy(bundle, tmp_path)
    index = faiss.IndexFlatIP(17)
    index.add(np.random.default_rng(0).standard_normal((40, 17)).astype(np.float32))
    faiss.write_index(index, str(b / "items.music.faiss"))
    _rehash(b, "items.music.faiss")
    _refused(b, r"items.music.faiss: index dim is 17 but the manifest says 16")


def test_manifest_dim_disagreeing_with_the_graph_is_refused(bundle: Path, tmp_path: Path) -> None:
    b = _copy(bundle, tmp_path)

    def edit(raw: dict) -> None:
        enc = next(g for g in raw["graphs"] if g["kind"] == "user_encoder")
        enc["outputs"][0]["shape"] = ["batch", 32]

    _edit_manifest(b, edit)
    _refused(
        b,
        r"user_encoder.music.onnx: the graph's outputs are \[\('user_vector', 'float32', \['batch', 16\]\)\]",
    )


def test_inconsistent_manifest_dims_are_refused(bundle: Path, tmp_path: Path) -> None:
    b = _copy(bundle, tmp_path)
    _edit_manifest(b, lambda raw: raw["indexes"]["music"].update(dim=32))
    _refused(b, "graph user_encoder.music outputs dim 16; index 'music' has dim 32")


def test_id_map_of_the_wrong_length_is_refused(bundle: Path, tmp_path: Path) -> None:
    b = _copy(bundle, tmp_path)
    ids = json.loads((b / "items.music.ids.json").read_text())
    (b / "items.music.ids.json").write_text(json.dumps(ids[:-1]))
    _rehash(b, "items.music.ids.json")
    _refused(b, "items.music.ids.json: 39 ids but the manifest says music has 40")


def test_corrupted_onnx_is_refused(bundle: Path, tmp_path: Path) -> None:
    b = _copy(bundle, tmp_path)
    path = b / "user_encoder.music.onnx"
    path.write_bytes(path.read_bytes()[:2000])
    _rehash(b, "user_encoder.music.onnx")
    _refused(b, "user_encoder.music.onnx: onnxruntime cannot load it")
    with pytest.raises(BundleError, match=r"user_encoder\.music\.onnx: not a valid ONNX model"):
        verify(b)


def test_a_file_changed_after_export_is_refused_by_its_hash(bundle: Path, tmp_path: Path) -> None:
    b = _copy(bundle, tmp_path)
    path = b / "bridge.book__music.onnx"
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 0xFF  # same size, one weight byte flipped: still a loadable graph
    path.write_bytes(bytes(blob))
    _refused(b, "bridge.book__music.onnx: sha256 differs from the manifest")


def test_a_renamed_bundle_directory_is_refused(bundle: Path, tmp_path: Path) -> None:
    b = _copy(bundle, tmp_path)
    _refused(b.rename(tmp_path / "v2"), "says version 'v1' but the directory is 'v2'")


def test_a_manifest_failing_its_schema_is_refused(bundle: Path, tmp_path: Path) -> None:
    b = _copy(bundle, tmp_path)
    _edit_manifest(b, lambda raw: raw["graphs"][0].update(opset=11))
    _refused(b, r"manifest.json: graphs.0.opset: Input should be greater than or equal to 17")


def test_cli_verify_exits_1_naming_the_problem(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", str(bundle)]) == 0
    b = _copy(bundle, tmp_path)
    (b / "popular.music.json").unlink()
    assert main(["verify", str(b)]) == 1
    assert "popular.music.json is missing" in capsys.readouterr().err
