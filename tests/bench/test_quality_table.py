"""bench.quality's bookkeeping: the comparison lines and which recorded rows a partial rerun keeps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import bench.quality as quality
from bench.results import record


def _rows() -> list[dict]:
    return [
        record("quality", "art-office", "target=art", "sasrec", "NDCG@10", [0.04, 0.04]),
        record("quality", "art-office", "target=art", "cdsrec", "NDCG@10", [0.05, 0.05]),
        record("quality", "art-office", "target=office", "sasrec", "NDCG@10", [0.06]),
        record("quality", "art-office", "target=office", "cdsrec", "NDCG@10", [0.03]),
    ]


def test_comparisons_say_which_way_and_by_how_much() -> None:
    lines = quality.comparisons(_rows())
    assert "- target=art: cdsrec beats sasrec on mean NDCG@10, 0.0500 vs 0.0400 (+25.0%)" in lines
    assert "- target=office: cdsrec does NOT beat sasrec on mean NDCG@10, 0.0300 vs 0.0600 (-50.0%)" in lines
    assert len(lines) == 2  # pairs whose rows are missing are left out


def test_a_partial_rerun_keeps_the_rows_it_does_not_replace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = record("cold_start", "douban", "x", "ptupcdr", "MAE", [0.6])
    (tmp_path / "results.json").write_text(json.dumps([*_rows(), other]))
    monkeypatch.setattr(quality, "DOCS", tmp_path)
    kept = quality.kept_records({"art"}, {"cdsrec"})
    assert {(r["task"], r["model"]) for r in kept} == {
        ("target=art", "sasrec"), ("target=office", "sasrec"), ("target=office", "cdsrec")}
    ordered = quality.order_like(kept, ["popularity", "cdsrec", "sasrec"])
    assert [(r["task"], r["model"]) for r in ordered] == [
        ("target=art", "sasrec"), ("target=office", "cdsrec"), ("target=office", "sasrec")]
