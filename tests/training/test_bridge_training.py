"""Cold-start bridges learn planted cross-domain tastes, and model selection never sees the test users."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from training.args import MFArgs
from training.baselines import CrossCooccurrence, Popularity
from training.data.interactions import Interactions, from_frame
from training.data.splits import ColdStartSplit, cold_start_split
from training.data.synthetic import synthetic_interactions
from training.evaluation import evaluate_ranking
from training.train_bridge import BridgeArgs, fit_all, report_test, selection_view
from training.train_bridge_inductive import (
    InductiveArgs,
    pretrain,
    ranking_view,
    scorer,
    train_inductive,
    train_shared,
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def planted_frame(seed: int = 0, n_users: int = 500, n_items: tuple[int, int] = (120, 100)) -> pd.DataFrame:
    """Explicit ratings from a planted model shared by both domains: one user bias and one taste vector per
    user drive the user's ratings in the source AND the target domain."""
    rng = np.random.default_rng(seed)
    taste, bias = rng.normal(size=(n_users, 4)), rng.normal(scale=0.5, size=n_users)
    rows = []
    for d, (domain, n, per_user) in enumerate((("book", n_items[0], 30), ("music", n_items[1], 15))):
        item_vec, item_bias = rng.normal(scale=0.5, size=(n, 4)), rng.normal(scale=0.3, size=n)
        for u in range(n_users):
            items = rng.choice(n, per_user, replace=False)
            r = 3.6 + bias[u] + item_bias[items] + item_vec[items] @ taste[u] + rng.normal(scale=0.3, size=per_user)
            rows += [(f"u{u}", f"{domain[0]}{i}", domain, d * 1000 + k, float(np.clip(np.round(x), 1, 5)))
                     for k, (i, x) in enumerate(zip(items, r, strict=True))]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "domain", "order", "rating"])


def planted_ratings(seed: int = 0, n_users: int = 500) -> Interactions:
    return from_frame(planted_frame(seed, n_users), name="planted")


def test_ptupcdr_beats_global_mean_and_item_mean_on_planted_ratings() -> None:
    data = planted_ratings()
    split = cold_start_split(data, "book", "music", beta=0.3, seed=0)
    args = BridgeArgs(mf=MFArgs(dim=8, epochs=30, reg=0.05, lr=1e-2), epochs=20, hidden=16, seed=0)
    test = report_test(split, fit_all(selection_view(split), args))
    for metric in ("MAE", "RMSE"):
        assert test["ptupcdr"][metric] < test["global-mean"][metric], test
        assert test["ptupcdr"][metric] < test["item-mean"][metric], test


def test_personalized_bridge_beats_shared_bridge_and_popularity_for_cold_users() -> None:
    data = synthetic_interactions(seed=1, n_users=1200)
    split = cold_start_split(data, "book", "music", beta=0.3, seed=0)
    view = ranking_view(split)
    args = InductiveArgs(dim=32, max_len=20, mf_epochs=15, mf_lr=1e-2, negatives=256, epochs=15, lr=3e-3,
                         hidden=32, seed=0)
    src, tgt = pretrain(view, args)
    shared, _ = train_shared(view, src, tgt, args)
    personal, _ = train_inductive(view, src, tgt, args, warm=shared)
    test = split.ranking_examples(split.test_users)
    pop = Popularity(split.train, "music", data.n_items("music"))
    ndcg = {
        "popularity": evaluate_ranking(pop.score, test)["NDCG@10"],
        "shared": evaluate_ranking(scorer(shared), test)["NDCG@10"],
        "personal": evaluate_ranking(scorer(personal), test)["NDCG@10"],
    }
    assert ndcg["personal"] > ndcg["shared"] and ndcg["personal"] > 1.5 * ndcg["popularity"], ndcg


def test_cross_cooccurrence_reads_planted_tastes_and_its_zero_weight_is_popularity() -> None:
    data = synthetic_interactions(seed=1, n_users=600)
    split = cold_start_split(data, "book", "music", beta=0.3, seed=0)
    view = ranking_view(split)
    cooc = CrossCooccurrence(split.train, "book", "music", data.n_items("book"), data.n_items("music"))
    assert cooc.select(view.valid) > evaluate_ranking(cooc.score_with(0.0, 0.0), view.valid)["NDCG@10"]
    assert cooc.w > 0
    test = split.ranking_examples(split.test_users, target="first")
    pop = Popularity(split.train, "music", data.n_items("music"))
    assert evaluate_ranking(cooc.score, test)["NDCG@10"] > 1.2 * evaluate_ranking(pop.score, test)["NDCG@10"]
    # w = 0 ranks as popularity does (log1p keeps the order); an empty history gets popularity whatever w is
    sub = test.subset(np.arange(20))
    assert torch.equal(cooc.score_with(0.0, 0.0)(sub).argsort(dim=1, stable=True),
                       pop.score(sub).log1p().argsort(dim=1, stable=True))
    sub.source_hist = [np.zeros(0, np.int64) for _ in sub.source_hist]
    assert torch.equal(cooc.score_with(8.0, 0.5)(sub), pop.score(sub).log1p())


def _without_test_users(split: ColdStartSplit) -> ColdStartSplit:
    """The same split with every trace of its test users' hidden rows removed."""
    return dataclasses.replace(split, test_users=np.zeros(0, np.int64), hidden=split.hidden_rows(split.valid_users))


def test_selection_view_holds_no_test_user_and_does_not_depend_on_them() -> None:
    data = planted_ratings(n_users=200)
    split = cold_start_split(data, "book", "music", beta=0.4, seed=3)
    test_users = set(split.test_users.tolist())
    view = selection_view(split)
    train_target = view.train[view.train["domain"] == "music"]
    assert not test_users & set(train_target["user"].tolist())
    assert not test_users & set(view.valid[0].tolist())
    assert set(view.valid[0].tolist()) <= set(split.valid_users.tolist())
    # the hidden rows never reach the train frame
    assert split.hidden.index.intersection(view.train.index).empty
    blind = selection_view(_without_test_users(split))
    pd.testing.assert_frame_equal(view.train, blind.train)
    for a, b in zip(view.valid, blind.valid, strict=True):
        np.testing.assert_array_equal(a, b)


def test_ranking_selection_view_holds_no_test_user() -> None:
    data = synthetic_interactions(seed=0, n_users=300)
    split = cold_start_split(data, "book", "music", beta=0.3, seed=1)
    view = ranking_view(split)
    test_users = set(split.test_users.tolist())
    assert not test_users & set(view.valid.users.tolist())
    assert not test_users & set(view.train.loc[view.train["domain"] == "music", "user"].tolist())
    blind = ranking_view(_without_test_users(split))
    pd.testing.assert_frame_equal(view.train, blind.train)
    np.testing.assert_array_equal(view.valid.targets, blind.valid.targets)


def test_cli_trains_the_inductive_bridge_and_its_checkpoint_rebuilds(tmp_path, capsys) -> None:
    from core.sequence import encode_batch
    from training import checkpoint
    from training.cli import main

    code = main(["bridge", "inductive", "--data", "synthetic", "--source-domain", "book", "--target-domain",
                 "music", "--out", str(tmp_path), "--dim", "16", "--max-len", "10", "--mf-epochs", "2",
                 "--epochs", "2", "--negatives", "64", "--hidden", "16"])
    assert code == 0
    assert '"bridge-inductive"' in capsys.readouterr().out
    model, meta = checkpoint.load(tmp_path / "bridge.book__music.pt")
    assert meta["source"] == "book" and meta["target"] == "music"
    vec = model(torch.as_tensor(encode_batch([[1, 2], []], 10)))
    assert vec.shape == (2, 17) and torch.isfinite(vec).all()


def test_cli_refuses_ptupcdr_without_ratings(capsys) -> None:
    from training.cli import main

    code = main(["bridge", "ptupcdr", "--data", "synthetic", "--source-domain", "book", "--target-domain", "music"])
    assert code == 2
    assert "explicit ratings" in capsys.readouterr().err


def test_cli_trains_ptupcdr_on_a_ratings_file_and_its_checkpoint_rebuilds(tmp_path, capsys) -> None:
    from training import checkpoint
    from training.cli import main

    path = tmp_path / "ratings.csv"
    planted_frame(n_users=200).rename(columns={"order": "position"}).to_csv(path, index=False)
    code = main(["bridge", "ptupcdr", "--data", str(path), "--source-domain", "book", "--target-domain", "music",
                 "--beta", "0.3", "--out", str(tmp_path), "--mf-dim", "4", "--mf-epochs", "3", "--epochs", "2"])
    assert code == 0
    assert '"ptupcdr"' in capsys.readouterr().out
    model, meta = checkpoint.load(tmp_path / "ptupcdr.book__music.pt")
    assert meta["model"] == "ptupcdr"
    users, seq = torch.tensor([0, 1]), torch.tensor([[0, 3, 5], [0, 0, 0]])
    vec = model(users, seq, torch.tensor([[0.0, 4.0, 2.0], [0.0, 0.0, 0.0]]))
    assert vec.shape == (2, 4 + 2) and torch.isfinite(vec).all()
