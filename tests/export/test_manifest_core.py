"""core.manifest (the schema) stays light: importing it needs no torch, onnx, ORT or FAISS; the file-level checks
of core.bundle_checks run without ORT or FAISS."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.bundle_checks import verify_bundle
from core.manifest import BundleError

ROOT = Path(__file__).resolve().parents[2]


def test_core_manifest_imports_no_heavy_package() -> None:
    code = (
        "import sys, core.manifest; "
        "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'faiss') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_shallow_verify_runs_without_onnxruntime_or_faiss(bundle: Path) -> None:
    code = (
        "import sys; sys.modules['onnxruntime'] = None; sys.modules['faiss'] = None; "
        "from core.bundle_checks import verify_bundle; "
        f"print(verify_bundle({str(bundle)!r}, deep=False).version)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "v1"


def test_deep_verify_without_onnxruntime_says_what_is_missing(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BundleError, match="onnxruntime is not installed"):
        verify_bundle(bundle)
