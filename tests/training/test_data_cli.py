"""``data stats`` / ``data synth``: a plain table on success, one clear line and exit code 2 on bad input."""

from __future__ import annotations

import gzip
import sys
import types
from pathlib import Path

import pandas as pd
import pytest

from training.data.cli import main
from training.data.loaders import load_interactions_file

GENERIC = """user_id,item_id,domain,position
u1,a1,books,0
u1,m1,music,1
u2,a2,books,0
u3,m2,music,0
u3,m1,music,1
"""


def test_stats_prints_per_domain_table_and_totals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "data.csv"
    path.write_text(GENERIC)
    assert main(["stats", str(path)]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[1].split()
    assert header[:5] == ["domain", "users", "items", "interactions", "overlap_users"]
    rows = {line.split()[0]: line.split()[1:5] for line in out.splitlines()[2:4]}
    assert rows == {"books": ["2", "2", "2", "1"], "music": ["2", "2", "3", "1"]}
    assert "total users: 3" in out
    assert "users in all 2 domains: 1" in out


def test_stats_returns_2_with_one_line_for_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["stats", str(tmp_path / "absent.csv")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("error: ") and "absent.csv" in err and "no such file" in err
    assert "Traceback" not in err


def test_stats_returns_2_naming_line_of_malformed_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(GENERIC + "u4,a1,books,later\n")
    assert main(["stats", str(path)]) == 2
    assert "bad.csv: line 7: position 'later' is not an integer" in capsys.readouterr().err


def test_synth_writes_generator_output_as_loadable_csv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[dict[str, object]] = []

    def generate(**kwargs: object) -> pd.DataFrame:
        calls.append(kwargs)
        return pd.DataFrame(
            {"user_id": ["u0", "u0", "u1"], "item_id": ["i1", "j1", "i2"], "domain": ["a", "b", "a"],
             "position": [0, 1, 0]}
        )  # fmt: skip

    fake = types.ModuleType("training.data.synthetic")
    fake.generate = generate  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "training.data.synthetic", fake)
    out = tmp_path / "synth.csv"
    assert main(["synth", str(out), "--users", "2", "--seed", "7", "--overlap", "0.5"]) == 0
    assert calls == [{"n_users": 2, "seed": 7, "overlap": 0.5}]
    assert load_interactions_file(out).n_users == 2
    assert "wrote 3 interactions" in capsys.readouterr().out


def test_synth_rejects_overlap_outside_unit_interval(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["synth", str(tmp_path / "s.csv"), "--overlap", "1.5"]) == 2
    assert "--overlap must be in [0, 1]" in capsys.readouterr().err


def test_stats_reads_amazon_ratings_files_as_domains(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    books, music = tmp_path / "ratings_Books.csv", tmp_path / "ratings_Music.csv.gz"
    books.write_text("A1,B1,5.0,10\nA2,B2,4.0,11\n")
    with gzip.open(music, "wt") as f:
        f.write("A1,M1,3.0,12\n")
    assert main(["stats", f"books={books},music={music}"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:5] for line in out.splitlines()[2:4]}
    assert rows == {"books": ["2", "2", "2", "1"], "music": ["1", "1", "1", "1"]}, out
