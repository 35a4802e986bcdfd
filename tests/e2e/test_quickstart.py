"""The README's quick start stays true: it names exactly the two commands, and the demo path runs."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the quick start has no bash block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_quick_start_is_exactly_make_demo_and_make_test() -> None:
    assert _quick_start_commands() == ["make demo", "make test"]


def test_makefile_demo_target_runs_the_demo_module() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    assert "install" in recipe.splitlines()[0] and "-m training.demo" in recipe


def test_demo_trains_evaluates_and_prints_the_table(tmp_path: Path) -> None:
    # the same module `make demo` runs (install is already done: we are running inside its venv)
    proc = subprocess.run(
        [sys.executable, "-m", "training.demo", "--epochs", "3", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for stage in ("==> data", "==> train: SASRec", "==> evaluate"):
        assert stage in out
    table = out.split("==> evaluate", 1)[1]
    assert re.search(r"popularity\s+\d\.\d{4}", table) and re.search(r"sasrec\s+\d\.\d{4}", table)
    assert list(tmp_path.glob("sasrec.*.pt")), "the demo wrote no checkpoint"
