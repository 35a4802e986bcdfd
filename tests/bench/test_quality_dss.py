"""bench.quality's DSS rows: the merge rule is picked per seed from validation figures alone, and a run with
``--cells`` resumes from the cells an interrupted run finished."""

from __future__ import annotations

import json
from pathlib import Path

import bench.quality as quality


def _cell() -> dict[str, float]:
    figures = {  # rule -> (valid NDCG, ILD, coverage), test NDCG
        "max": ((0.050, 0.50, 0.30), 0.051),
        "weighted": ((0.040, 0.58, 0.20), 0.041),
        "quota": ((0.045, 0.60, 0.45), 0.044),
        "round-robin": ((0.030, 0.65, 0.50), 0.031),
    }
    out: dict[str, float] = {}
    for rule, ((ndcg, ild, cov), test) in figures.items():
        out.update({f"valid dss[{rule}]|NDCG@10": ndcg, f"valid dss[{rule}]|ILD@10": ild,
                    f"valid dss[{rule}]|coverage@10": cov, f"dss[{rule}]|NDCG@10": test})
    return out


def test_the_dss_row_is_the_rule_validation_picks_never_the_test_figures() -> None:
    picked = quality.pick_dss(_cell(), {"ILD@10": 0.55, "coverage@10": 0.40})
    assert picked["chose quota"] == 1.0 and picked["NDCG@10"] == 0.044  # quota's TEST figure, chosen on valid
    assert picked["valid ILD@10"] == 0.60
    assert quality.pick_dss(_cell(), None)["NDCG@10"] == 0.051  # no reference: the best valid NDCG (max)


def test_sasrec_reference_prefers_this_runs_cell() -> None:
    results = {("office", "sasrec", 1): ({"valid ILD@10": 0.5, "valid coverage@10": 0.4}, 1.0)}
    assert quality.sasrec_reference(results, "office", 1) == {"ILD@10": 0.5, "coverage@10": 0.4}


def test_cached_cells_read_back_what_a_run_appended_for_the_same_diversity_setting(tmp_path: Path) -> None:
    path = tmp_path / "cells.jsonl"
    rows = [{"target": "art", "model": "dss", "seed": 0, "diversity": True, "metrics": {"NDCG@10": 0.1},
             "epoch_s": 2.0},
            {"target": "art", "model": "dss", "seed": 1, "diversity": False, "metrics": {"NDCG@10": 0.2},
             "epoch_s": 2.0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert quality.cached_cells(path, True) == {("art", "dss", 0): ({"NDCG@10": 0.1}, 2.0)}
    assert quality.cached_cells(tmp_path / "none.jsonl", True) == {}
