"""bench.cold_start's report: the done-when lines read the right rows, and the plot draws both cold items."""

from __future__ import annotations

from pathlib import Path

import pytest

import bench.cold_start as cold_start
from bench.results import record


def _records() -> list[dict]:
    rows = []
    for direction, (ptupcdr, emcdr) in {"book->music": (0.64, 0.65), "music->book": (0.66, 0.65)}.items():
        for beta in (0.2, 0.5, 0.8):
            for model, value in {"global-mean": 0.70, "item-mean": 0.67, "tgt": 0.67, "cmf": 0.66,
                                 "emcdr": emcdr, "ptupcdr": ptupcdr}.items():
                for metric in ("MAE", "RMSE"):
                    rows.append(record("cold_start", "douban", f"{direction}@beta={beta}", model, metric, [value]))
    for item, bridge in (("first", 0.05), ("last", 0.02)):
        for model, value in {"popularity": 0.025, "cooc": 0.03, "bridge-shared": 0.02,
                             "bridge-inductive": bridge, "bridge-inductive-guru": 0.02}.items():
            for metric in cold_start.RANK_METRICS:
                rows.append(record("cold_start", "art-office", f"cold:art->office@beta=0.2:{item}", model, metric,
                                   [value, value + 0.002]))
    return rows


def test_checks_compare_ptupcdr_with_both_rivals_and_each_cold_item_with_popularity() -> None:
    lines = cold_start.checks(_records())
    assert ("- book->music@beta=0.2 MAE: ptupcdr 0.6400 vs emcdr 0.6500, global-mean 0.7000: lower than both"
            in lines)
    assert ("- music->book@beta=0.8 RMSE: ptupcdr 0.6600 vs emcdr 0.6500, global-mean 0.7000: NOT lower than both"
            in lines)
    assert ("- cold:art->office@beta=0.2:first NDCG@10: bridge-inductive 0.0510 = 1.96 x popularity (0.0260); "
            "the target for bridge-inductive is 2 x" in lines)
    assert any(line.startswith("- cold:art->office@beta=0.2:last NDCG@10: cooc 0.0310 = 1.19 x") for line in lines)
    assert len(lines) == 12 + 4


def test_checks_add_the_paired_difference_and_its_standard_error_when_seeds_allow() -> None:
    rows = [record("cold_start", "douban", "music->book@beta=0.2", m, "MAE", v) for m, v in
            {"global-mean": [0.7, 0.7, 0.7], "emcdr": [0.650, 0.640, 0.660], "ptupcdr": [0.652, 0.639, 0.656]}.items()]
    (line,) = cold_start.checks(rows)
    # diffs +0.002, -0.001, -0.004: mean -0.001, sd 0.003, se 0.003 / sqrt(3)
    assert line.endswith("lower than both (paired ptupcdr - emcdr: -0.0010 ± 0.0017 SE, 3 seeds)"), line


def _with_shuffled(rows: list[dict]) -> list[dict]:
    """``rows`` plus the art-office ones again on shuffled histories: the bridge halves, the others stay."""
    out = list(rows)
    for r in rows:
        if r["dataset"] == "art-office":
            values = [v / 2 if r["model"] == "bridge-inductive" else v for v in r["values"]]
            out.append(record("cold_start", "art-office", r["task"], r["model"], r["metric"], values,
                              split=cold_start.SHUFFLED))
    return out


def test_shuffled_records_stay_out_of_the_checks_and_the_table_and_get_their_own() -> None:
    rows = _with_shuffled(_records())
    assert cold_start.checks(rows) == cold_start.checks(_records())
    ranking = [r for r in rows if r["dataset"] == "art-office"]
    assert len(cold_start.tested(ranking)) == len(ranking) // 2
    table = cold_start.shuffle_table(ranking).splitlines()
    assert len(table) == 2 + 2 * 5  # header + one row per (cold item, model)
    assert ("| cold:art->office@beta=0.2:first | bridge-inductive | 0.0510 ± 0.0014 | 0.0255 ± 0.0007 | "
            "2.00 ± 0.00 |" in table), table
    assert "| cold:art->office@beta=0.2:last | popularity | 0.0260 ± 0.0014 | 0.0260 ± 0.0014 | 1.00 ± 0.00 |" in table


def test_plot_writes_a_png(tmp_path: Path) -> None:
    out = tmp_path / "cold_start.png"
    cold_start.plot(_with_shuffled(_records()), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_one_dataset_alone_is_refused_unless_nothing_is_written(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cold_start.main(["--datasets", "douban", "--data-root", "/nonexistent"])
    assert exit_info.value.code == 2 and "needs --print-only" in capsys.readouterr().err
