"""docs/results.json and docs/results.md: every bench adds its records and replaces only its own.

Records are ``{bench, dataset, task, model, metric, mean, std, seeds, split}`` (DESIGN §2). In results.md each
bench owns the text between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

DOCS = Path(__file__).resolve().parent.parent / "docs"


def data_parser(doc: str | None, seeds: Sequence[int] = (0, 1, 2)) -> argparse.ArgumentParser:
    """A bench's command line: its docstring as help, ``--data-root`` (../shared/data) and ``--seeds``."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    p.add_argument("--seeds", type=int, nargs="+", default=list(seeds))
    return p


SHUFFLED = "test-shuffled"  # split of records scored on the test users' source histories shuffled among them


def tested(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of the test users as they are (not those of split ``SHUFFLED``)."""
    return [r for r in records if r.get("split", "test") == "test"]


def ratio_cell(a: Sequence[float], b: Sequence[float]) -> str:
    """'mean ± std' of the per-seed ratios a / b (no spread for one seed)."""
    ratios = np.asarray(a, dtype=np.float64) / np.asarray(b, dtype=np.float64)
    return f"{ratios.mean():.2f}" + (f" ± {ratios.std(ddof=1):.2f}" if len(ratios) > 1 else "")


def record(
    bench: str, dataset: str, task: str, model: str, metric: str, values: Sequence[float], split: str = "test"
) -> dict[str, Any]:
    vals = [float(v) for v in values]
    return {
        "bench": bench,
        "dataset": dataset,
        "task": task,
        "model": model,
        "metric": metric,
        "mean": statistics.fmean(vals),
        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        "seeds": len(vals),
        "split": split,
        "values": vals,  # per seed, in seed order: paired comparisons between models of one run
    }


def update_json(bench: str, records: list[dict[str, Any]], docs: Path = DOCS) -> Path:
    path = docs / "results.json"
    docs.mkdir(parents=True, exist_ok=True)
    old = json.loads(path.read_text()) if path.exists() else []
    kept = [r for r in old if r.get("bench") != bench]
    path.write_text(json.dumps(kept + records, indent=1) + "\n")
    return path


def update_markdown(bench: str, section: str, docs: Path = DOCS) -> Path:
    path = docs / "results.md"
    docs.mkdir(parents=True, exist_ok=True)
    header = "# Results\n\nEvery figure here was printed by the command above its table.\n"
    text = path.read_text() if path.exists() else header
    begin, end = f"<!-- bench:{bench} -->", f"<!-- /bench:{bench} -->"
    block = f"{begin}\n{section.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
    return path


def table(records: list[dict[str, Any]], metrics: Sequence[str], rows: Sequence[str] = ("task", "model")) -> str:
    """A markdown table: one row per (task, model), one column per metric, cells `mean ± std`."""
    keys: list[tuple[str, ...]] = []
    cells: dict[tuple[tuple[str, ...], str], str] = {}
    for r in records:
        key = tuple(str(r[c]) for c in rows)
        if key not in keys:
            keys.append(key)
        digits = 2 if r["metric"] in ("epoch_s", "req/s") else 4
        cells[(key, r["metric"])] = f"{r['mean']:.{digits}f} ± {r['std']:.{digits}f}"
    head = "| " + " | ".join([*rows, *metrics]) + " |"
    sep = "|" + "---|" * (len(rows) + len(metrics))
    body = ["| " + " | ".join([*k, *(cells.get((k, m), "") for m in metrics)]) + " |" for k in keys]
    return "\n".join([head, sep, *body])
