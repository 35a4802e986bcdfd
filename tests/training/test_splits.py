import numpy as np
import pandas as pd
import pytest

from training.data.interactions import from_frame
from training.data.splits import Examples, cold_start_split, leave_one_out


def _data():
    rows = []
    # u1: a1 b1 a2 b2 a3 b3 a4  (a = target)
    for pos, it in enumerate(["a1", "b1", "a2", "b2", "a3", "b3", "a4"]):
        rows.append(("u1", it, "a" if it[0] == "a" else "b", pos))
    # u2 has only two target items: not evaluated, all of it is training data
    for pos, it in enumerate(["a1", "a2", "b1"]):
        rows.append(("u2", it, "a" if it[0] == "a" else "b", pos))
    return from_frame(pd.DataFrame(rows, columns=["user_id", "item_id", "domain", "order"]))


def test_leave_one_out_holds_out_last_two_target_items_in_time_order() -> None:
    data = _data()
    split = leave_one_out(data, "a")
    ids = data.item_ids["a"]
    assert [ids[i] for i in split.test.targets] == ["a4"]
    assert [ids[i] for i in split.valid.targets] == ["a3"]
    assert [ids[i] for i in split.test.target_hist[0]] == ["a1", "a2", "a3"]
    assert [data.item_ids["b"][i] for i in split.test.source_hist[0]] == ["b1", "b2", "b3"]
    assert [data.item_ids["b"][i] for i in split.valid.source_hist[0]] == ["b1", "b2"]


def test_leave_one_out_training_data_stops_before_the_valid_item() -> None:
    data = _data()
    split = leave_one_out(data, "a")
    u1 = data.user_ids.index("u1")
    train_u1 = split.train[split.train["user"] == u1]
    assert train_u1["order"].max() < 4  # a3 is at order 4
    u2 = data.user_ids.index("u2")
    assert len(split.train[split.train["user"] == u2]) == 3


def test_merged_history_interleaves_in_time() -> None:
    data = _data()
    split = leave_one_out(data, "a")
    n = data.n_items("a")
    merged = split.test.merged_hist(n)[0]
    assert len(merged) == 6
    assert merged[0] == split.test.target_hist[0][0] and merged[1] > n


def test_cold_start_split_hides_whole_target_history_and_separates_valid_from_test() -> None:
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"{d}{rng.integers(1, 9)}", d, p) for u in range(40) for p, d in enumerate("ababab")]
    data = from_frame(pd.DataFrame(rows, columns=["user_id", "item_id", "domain", "order"]))
    split = cold_start_split(data, "b", "a", beta=0.5, seed=1)
    cold = set(split.valid_users) | set(split.test_users)
    assert len(cold) == 20 and not set(split.valid_users) & set(split.test_users)
    hidden_in_train = split.train[(split.train["domain"] == "a") & split.train["user"].isin(cold)]
    assert hidden_in_train.empty
    assert set(split.hidden["user"]) == cold
    ex = split.ranking_examples(split.test_users)
    assert all(len(t) == 0 for t in ex.target_hist) and all(len(s) > 0 for s in ex.source_hist)


def test_cold_start_split_rejects_bad_beta() -> None:
    with pytest.raises(ValueError, match="beta"):
        cold_start_split(_data(), "b", "a", beta=1.5)


def _cold_patterns():
    """12 users in both domains (a = target, b = source): ten enter a after b, two buy all of a before any b."""
    rows = []
    for u in range(12):
        seq = ["a0", "a1", "b0"] if u >= 10 else ["a9", "b1", f"b{u + 2}", f"a{u + 1}", "b1", "a0"]
        rows += [(f"u{u}", it, it[0], pos) for pos, it in enumerate(seq)]
    return from_frame(pd.DataFrame(rows, columns=["user_id", "item_id", "domain", "order"]))


def test_cold_start_first_item_is_the_entry_into_the_target_domain() -> None:
    data = _cold_patterns()
    split = cold_start_split(data, "b", "a", beta=0.99, seed=0)
    cold = np.sort(np.concatenate([split.valid_users, split.test_users]))
    assert len(cold) == 12
    name = {d: data.item_ids[d] for d in ("a", "b")}
    user = {u: data.user_ids[u] for u in cold.tolist()}

    first = split.ranking_examples(cold, target="first")
    assert sorted(user[u] for u in first.users.tolist()) == sorted(f"u{u}" for u in range(10))  # u10, u11 left out
    for u, t, s in zip(first.users.tolist(), first.targets.tolist(), first.source_hist, strict=True):
        k = int(user[u][1:])
        assert name["a"][t] == f"a{k + 1}"  # not a9, bought before any source item
        assert [name["b"][i] for i in s] == ["b1", f"b{k + 2}"]

    last = split.ranking_examples(cold, target="last")
    assert len(last) == 12
    for u, t, s in zip(last.users.tolist(), last.targets.tolist(), last.source_hist, strict=True):
        k = int(user[u][1:])
        assert name["a"][t] == ("a1" if k >= 10 else "a0")
        assert [name["b"][i] for i in s] == ([] if k >= 10 else ["b1", f"b{k + 2}", "b1"])
        assert all(len(h) == 0 for h in last.target_hist)

    with pytest.raises(ValueError, match="'last' or 'first'"):
        split.ranking_examples(cold, target="middle")


def test_shuffled_permutes_histories_among_the_same_users_and_targets() -> None:
    hist = [np.array([i + 1]) for i in range(50)]
    order = [np.array([i]) for i in range(50)]
    ex = Examples(np.arange(50), np.arange(50) + 100, [np.zeros(0, np.int64)] * 50, hist, None, order)
    out = ex.with_shuffled_sources(np.random.default_rng(0))
    assert np.array_equal(out.users, ex.users) and np.array_equal(out.targets, ex.targets)
    moved = [int(h[0]) for h in out.source_hist]
    assert sorted(moved) == list(range(1, 51)) and moved != list(range(1, 51))
    assert out.source_order is not None
    assert all(o[0] + 1 == h[0] for o, h in zip(out.source_order, out.source_hist, strict=True))
    assert [int(h[0]) for h in ex.source_hist] == list(range(1, 51))  # the input is left alone
