"""The README's quick start stays true: it names exactly the two commands, and the demo path runs."""

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from demo.serve import free_port

ROOT = Path(__file__).resolve().parents[2]


def _quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the quick start has no bash block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_quick_start_is_exactly_make_demo_and_make_test() -> None:
    assert _quick_start_commands() == ["make demo", "make test"]


def _recipe(target: str) -> str:
    makefile = (ROOT / "Makefile").read_text()
    return makefile.split(f"\n{target}:", 1)[1].split("\n\n", 1)[0]


def test_makefile_demo_target_runs_both_halves_and_demo_down_stops_them() -> None:
    recipe = _recipe("demo")
    assert "install" in recipe.splitlines()[0]
    assert "-m demo up" in recipe  # demo/cli.py: demo.train, then demo.serve up, each a child process
    assert "-m demo down" in _recipe("demo-down")


def test_demo_end_to_end_trains_serves_refreshes_and_answers_over_http(tmp_path: Path) -> None:
    # the command `make demo` runs (install is already done: we are running inside its venv)
    out = tmp_path / "demo"
    port = free_port()
    try:
        run = subprocess.run(
            [sys.executable, "-m", "demo", "up", "--epochs", "2", "--out", str(out), "--port", str(port),
             "--export-arg=--random-sequences=64", "--export-arg=--real-sequences=64"],
            cwd=ROOT, capture_output=True, text=True, timeout=1200,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        train, text = run.stdout.split("==> export", 1)  # the training half's output, then the serving half's
        for stage in ("==> data", "==> train: SASRec", "==> train: CDSRec", "==> evaluate",
                      "==> train: cold-start bridge"):
            assert stage in train
        table = train.split("==> evaluate", 1)[1]
        for model in ("popularity", "sasrec", "cdsrec"):
            assert re.search(rf"{model}\s+\d\.\d{{4}}", table), table
        assert list(out.glob("cdsrec.*.pt")), "the demo wrote no CDSRec checkpoint"
        assert Path(json.loads((out / "demo.json").read_text())["checkpoint"]).name.startswith("cdsrec."), "not served"
        assert (out / "demo.json").exists() and (out / "sequences.json").exists()
        for stage in ("==> verify", "==> redis", "==> seed", "==> serve", "==> refresh", "==> ask", "==> done"):
            assert stage in text, text
        assert re.search(r"refresh music: (\d+) users scanned, \1 encoded", text), text
        warm, cold = text.split("\nwarm user", 1)[1].split("\ncold-start user", 1)
        assert "strategy gur, cached vector" in warm  # the refresh job's vector served the warm user
        assert "strategy bridge" in cold and "strategy bridge, from book" in cold  # recommend, then the lookup
        assert f"curl -s http://127.0.0.1:{port}/readyz" in text
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:  # left running
            assert json.loads(resp.read())["ready"] is True
    finally:
        stop = subprocess.run([sys.executable, "-m", "demo", "down", "--out", str(out)],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert stop.returncode == 0 and "stopped the service" in stop.stdout and "stopped Redis" in stop.stdout
    assert not (out / "service.pid").exists() and not (out / "redis.pid").exists()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2)


def test_the_readme_names_benches_and_checkpoints_that_exist() -> None:
    from training.train_unisrec import UniSRecArgs

    text = " ".join((ROOT / "README.md").read_text().split())
    listed = text.split("every other bench is `.venv/bin/python -m bench.<name>` (", 1)[1].split(")", 1)[0]
    names = re.findall(r"`(\w+)`", listed)
    assert len(names) >= 6 and all((ROOT / "bench" / f"{n}.py").exists() for n in names), names
    assert f"--checkpoint runs/unisrec-{UniSRecArgs().variant}.office.pt" in text  # what `cdrec train unisrec` saves
