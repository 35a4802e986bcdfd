"""The service imports core only: never torch, training or export (DESIGN §1)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_app_and_cli_leaves_torch_training_and_export_out() -> None:
    code = (
        "import sys\n"
        "import service.app, service.cli, service.server, service.bundle\n"
        "import service.adapters.faiss_index, service.adapters.onnx_encoder\n"
        "import service.refresh, demo.serve, demo.cli\n"
        "from core.settings import Settings\n"
        "service.app.create_app(Settings())\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'training', 'export'))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_serve_extra_lists_no_torch() -> None:
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert not [d for d in extras["serve"] if d.lower().startswith("torch")]
