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
from training.baselines import CrossCooccurrence, UserKNN
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
    ndcg = {(r["task"].rsplit(":", 1)[1], r["model"], r["split"]): r["mean"] for r in records
            if r["metric"] == "NDCG@10"}
    assert {m for _, m, _ in ndcg} == {"popularity", "entry", "cooc", "transitions", "uknn"}
    assert {p for _, _, p in ndcg} == {"test", "test-shuffled"}
    for item in signal.TARGETS:
        pop = ndcg[(item, "popularity", "test")]
        assert ndcg[(item, "popularity", "test-shuffled")] == pytest.approx(pop)  # popularity reads no history
        for reader in ("cooc", "transitions", "uknn"):
            assert ndcg[(item, reader, "test")] > 1.2 * pop, ndcg
            # planted tastes are personal: someone else's history is worth much less than one's own
            assert ndcg[(item, reader, "test")] > 1.2 * ndcg[(item, reader, "test-shuffled")], ndcg
    assert set(chosen) == {(0, "first"), (0, "last")} and chosen[(0, "first")]["cooc"].startswith("w=")
    assert chosen[(0, "last")]["uknn"].startswith("k=")
    table = signal.settings_table(chosen)
    assert table.splitlines()[0] == "| seed | cold item | entry | cooc | transitions | uknn |"
    assert "| 0 | last |" in table
    assert "own / shuffled history" in signal.ratio_table(records).splitlines()[0]


def test_user_knn_votes_with_the_most_similar_histories_and_falls_back_to_popularity() -> None:
    # u1 and u2 share art a1 (rare) and a2; u3 has only a3. o3 is the most popular office item.
    rows = [("u1", "a1", "art", 0), ("u1", "a2", "art", 1), ("u1", "o1", "office", 2),
            ("u2", "a1", "art", 0), ("u2", "o2", "office", 1), ("u2", "o3", "office", 2),
            ("u3", "a3", "art", 0), ("u3", "o3", "office", 1), ("u4", "a3", "art", 0), ("u4", "o3", "office", 1),
            ("u5", "a2", "art", 0)]  # u5: no office items, so never a neighbour
    data = from_frame(_frame(rows))
    a1, a2, a3 = _ids(data, "art", "a1", "a2", "a3")
    o1, o2, o3 = _ids(data, "office", "o1", "o2", "o3")
    knn = UserKNN(data.frame, "art", "office", data.n_users, 3, 3)
    hist = [np.array([a1, a2]), np.array([a3]), np.zeros(0, np.int64), np.array([a2, a2])]
    ex = Examples(np.arange(4), np.full(4, o1), [np.zeros(0, np.int64)] * 4, hist)
    share = knn.shares(ex, k=1)
    assert share[0, o1] == 1.0 and share[0, o2] == 0.0  # u1 (a1 and a2) is closer than u2 (a1 alone)
    assert share[1, o3] == 1.0  # u3 and u4 tie at the top: both kept, both had o3
    assert not share[2].any()  # empty history: no neighbour
    assert np.allclose(share.sum(1)[[0, 1]], [1.0, 1.0])  # one item each: shares of whole neighbours
    assert share[3, o1] == 1.0  # a repeated item counts once, and u5 (no office items) does not vote
    pop = knn.score_with(1, 0.0)(ex)
    scores = knn.score_with(1, 2.0)(ex)
    assert torch.equal(scores[2], pop[2]) and int(pop[0].argmax()) == o3
    assert int(scores[0].argmax()) == o1 and int(scores[1].argmax()) == o3
    valid = Examples(np.arange(2), np.array([o1, o3]), [np.zeros(0, np.int64)] * 2, hist[:2])
    knn.select(valid, ks=(1, 2), ws=(0.0, 2.0))
    assert knn.w == 2.0 and knn.k == 1  # ties in the metric: the smaller k


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
    assert "shuffled" not in table  # older records without shuffled histories: no such column


def test_ratio_table_divides_by_the_same_reader_on_shuffled_histories() -> None:
    rows = _records()
    for r in list(rows):
        half = [v / 2 if r["model"] == "cooc" else v for v in r["values"]]
        rows.append(record(signal.BENCH, r["dataset"], r["task"], r["model"], r["metric"], half, split="test-shuffled"))
    table = signal.ratio_table(rows)
    assert table.splitlines()[0].endswith("| NDCG@10, own / shuffled history |")
    assert "| first | cooc | 0.0300 ± 0.0085 | 0.0300 ± 0.0085 | 1.20 ± 0.00 | 2.00 ± 0.00 |" in table, table
    assert "| first | popularity | 0.0250 ± 0.0071 | 0.0250 ± 0.0071 | 1.00 ± 0.00 | 1.00 ± 0.00 |" in table, table
    assert len(table.splitlines()) == 2 + 6  # one row per (cold item, reader): shuffled records add no rows


def test_plot_writes_a_png(tmp_path: Path) -> None:
    out = tmp_path / "signal.png"
    signal.plot(_records(), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
