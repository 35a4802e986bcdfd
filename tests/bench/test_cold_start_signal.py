"""bench.cold_start_signal: its training-free readers count and match what they claim, choose on valid only, and
its report compares each reader with popularity per seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import bench.cold_start_signal as signal
from bench.results import record
from training.baselines import CrossCooccurrence
from training.data.interactions import Interactions, from_frame
from training.data.splits import Examples
from training.data.synthetic import synthetic_interactions


def _frame(rows: list[tuple[str, str, str, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "domain", "order"])


def _ids(data: Interactions, domain: str, *items: str) -> list[int]:
    return [data.item_ids[domain].index(i) for i in items]


def test_transition_counts_are_ordered_and_decay_with_distance() -> None:
    # u1: a1 o1 a2 o2; u2: o1 a1 (o1 before a1: no transition)
    data = from_frame(_frame([("u1", "a1", "art", 0), ("u1", "o1", "office", 1), ("u1", "a2", "art", 2),
                              ("u1", "o2", "office", 3), ("u2", "o1", "office", 0), ("u2", "a1", "art", 1)]))
    a1, a2 = _ids(data, "art", "a1", "a2")
    o1, o2 = _ids(data, "office", "o1", "o2")
    counts = {d: CrossCooccurrence(data.frame, "art", "office", 2, 2, order_decay=d).cooc_t.to_dense()
              for d in (None, 1.0, 0.5)}
    assert counts[None][o1, a1] == 2 and counts[None][o2, a2] == 1  # unordered: users who had both
    assert counts[1.0][o1, a1] == 1 and counts[1.0][o2, a1] == 1 and counts[1.0][o2, a2] == 1
    assert counts[1.0][o1, a2] == 0  # a2 came after o1
    assert counts[0.5][o2, a1] == 0.25 and counts[0.5][o2, a2] == 1.0  # a1 is 3 positions before o2
    with pytest.raises(ValueError, match="order_decay"):
        CrossCooccurrence(data.frame, "art", "office", 2, 2, order_decay=0.0)


def test_entry_counts_the_first_target_item_after_the_first_source_item() -> None:
    data = from_frame(_frame([("u1", "o1", "office", 0), ("u1", "a1", "art", 1), ("u1", "o2", "office", 2),
                              ("u1", "o1", "office", 3), ("u2", "a1", "art", 0), ("u2", "o2", "office", 1),
                              ("u3", "o1", "office", 0)]))  # u3 never had an art item: no entry
    counts = signal.entry_counts(data.frame, "art", "office", data.n_items("office"))
    o1, o2 = _ids(data, "office", "o1", "o2")
    assert counts[o2] == 2 and counts[o1] == 0 and counts.sum() == 2


def _texts() -> tuple[Examples, tuple[object, object]]:
    art = {"a1": "sharpie fine point marker red", "a2": "fiskars rotary cutter", "a3": "sharpie paint marker"}
    office = {"o1": "sharpie fine point permanent marker", "o2": "fiskars paper trimmer", "o3": "swingline stapler",
              "o4": "stapler staples box"}
    rows = [("u1", "a1", "art", 0), ("u1", "o1", "office", 1), ("u2", "a2", "art", 0), ("u2", "o2", "office", 1),
            ("u3", "a3", "art", 0), ("u3", "o3", "office", 1), ("u3", "o4", "office", 2)]
    data = from_frame(_frame(rows), item_text={"art": art, "office": office})
    vectors = signal.text_vectors(data, "art", "office", "lexical")
    hist = [np.array(_ids(data, "art", "a1")), np.array(_ids(data, "art", "a2")), np.zeros(0, np.int64)]
    ex = Examples(np.arange(3), np.ones(3, np.int64), [np.zeros(0, np.int64)] * 3, hist)
    return ex, vectors


def test_lexical_similarity_finds_the_shared_brand_and_an_empty_history_gets_zero() -> None:
    ex, (src, dst) = _texts()
    sim = signal.similarity(ex, src, dst, decay=1.0)
    assert sim.shape == (3, dst.shape[0])
    assert int(sim[0].argmax()) != int(sim[1].argmax())  # sharpie -> sharpie, fiskars -> fiskars
    assert sim[0, 1:].max() > 0.2 and sim[1, 1:].max() > 0.2
    assert not sim[2].any()  # empty history: the score falls back to popularity whatever w is
    log_pop = np.log1p(np.arange(dst.shape[0], dtype=np.float32))
    scores = signal.scaled(lambda e: signal.similarity(e, src, dst, 1.0), log_pop, 4.0)(ex)
    assert torch.equal(scores[2], torch.as_tensor(log_pop)) and not torch.equal(scores[0], scores[2])


def test_run_on_planted_tastes_lets_the_count_readers_beat_popularity_and_reports_valid_choices() -> None:
    data = synthetic_interactions(seed=1, n_users=1500)
    records, chosen = signal.run(data, [0], kinds=(), source="book", target="music", beta=0.3)
    ndcg = {(r["task"].rsplit(":", 1)[1], r["model"]): r["mean"] for r in records if r["metric"] == "NDCG@10"}
    assert {m for _, m in ndcg} == {"popularity", "entry", "cooc", "transitions"}
    for item in signal.TARGETS:
        assert ndcg[(item, "cooc")] > 1.2 * ndcg[(item, "popularity")], ndcg
        assert ndcg[(item, "transitions")] > 1.2 * ndcg[(item, "popularity")], ndcg
    assert set(chosen) == {(0, "first"), (0, "last")} and chosen[(0, "first")]["cooc"].startswith("w=")
    table = signal.settings_table(chosen)
    assert table.splitlines()[0] == "| seed | cold item | entry | cooc | transitions |" and "| 0 | last |" in table


def _records() -> list[dict]:
    rows = []
    for item, scale in (("first", 1.0), ("last", 0.8)):
        for model, value in {"popularity": 0.020, "cooc": 0.024, "text": 0.018}.items():
            for metric in signal.METRICS:
                rows.append(record(signal.BENCH, "art-office", f"cold:art->office@beta=0.2:{item}", model, metric,
                                   [value * scale, value * scale * 1.5]))
    return rows


def test_ratio_table_divides_each_seed_by_its_own_popularity() -> None:
    table = signal.ratio_table(_records())
    assert "| first | cooc | 0.0300 ± 0.0085 | 0.0300 ± 0.0085 | 1.20 ± 0.00 |" in table, table
    assert "| last | text |" in table and table.count("| 1.00 ± 0.00 |") == 2


def test_plot_writes_a_png(tmp_path: Path) -> None:
    out = tmp_path / "signal.png"
    signal.plot(_records(), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
