"""SASRec: masking invariants, checkpoints, and that it learns what popularity cannot."""

import numpy as np
import torch

from core.sequence import encode_batch
from training import checkpoint
from training.baselines import Popularity
from training.data.splits import leave_one_out
from training.data.synthetic import synthetic_interactions
from training.evaluation import evaluate_ranking
from training.models.sasrec import SASRec, SASRecConfig
from training.train_sasrec import SASRecArgs, train_sasrec


def _model() -> SASRec:
    torch.manual_seed(0)
    return SASRec(SASRecConfig(n_items=30, dim=16, layers=2, heads=2, dropout=0.0, max_len=12)).eval()


def test_all_padding_input_gives_finite_vector() -> None:
    out = _model()(torch.zeros(3, 12, dtype=torch.long))
    assert torch.isfinite(out).all()


def test_left_padding_does_not_change_the_user_vector() -> None:
    model = _model()
    seq = [3, 7, 1, 9]
    short = model(torch.as_tensor(encode_batch([seq], 6)))
    long = model(torch.as_tensor(encode_batch([seq], 12)))
    torch.testing.assert_close(short, long, atol=1e-5, rtol=1e-5)


def test_future_items_do_not_leak_into_earlier_positions() -> None:
    model = _model()
    a = torch.as_tensor(encode_batch([[1, 2, 3, 4, 5]], 12))
    b = a.clone()
    b[0, -1] = 20
    torch.testing.assert_close(model.hidden(a)[:, :-1], model.hidden(b)[:, :-1])


def test_checkpoint_rebuilds_the_same_model(tmp_path) -> None:
    model = _model()
    path = checkpoint.save(tmp_path / "m.pt", model, {"target": "a"})
    rebuilt, meta = checkpoint.load(path)
    seq = torch.as_tensor(encode_batch([[1, 2, 3]], 12))
    torch.testing.assert_close(model(seq), rebuilt(seq))
    assert meta["target"] == "a"


def test_sasrec_beats_popularity_on_ndcg10(tmp_path) -> None:
    torch.set_num_threads(1)
    data = synthetic_interactions(seed=3, n_users=1200)
    split = leave_one_out(data, "music")
    pop = Popularity(split.train, "music", data.n_items("music"))
    pop_ndcg = evaluate_ranking(pop.score, split.test)["NDCG@10"]
    _, result, scorer = train_sasrec(split, SASRecArgs(epochs=15, patience=6, lr=3e-3, dim=32), tmp_path / "s.pt")
    sas_ndcg = evaluate_ranking(scorer, split.test)["NDCG@10"]
    assert result.checkpoint is not None and result.checkpoint.exists()
    assert sas_ndcg > 2 * pop_ndcg, (sas_ndcg, pop_ndcg)
    assert np.isfinite(result.epoch_s)


def test_sequence_loss_with_n_output_is_the_softmax_over_those_items_only() -> None:
    from torch.nn import functional as F

    from training.models.sasrec import sequence_loss

    model = _model()
    x = torch.as_tensor(encode_batch([[21, 3, 25], [4, 22]], 6))  # items > 20 stand for source items
    y = torch.as_tensor(encode_batch([[3, 0, 7], [0, 5]], 6))  # only the target items (1..20) are labels
    loss = sequence_loss(model, x, y, negatives=0, n_output=20)
    h, real = model.hidden(x), y > 0
    logits = h[real] @ model.item_vectors()[:21].T
    logits[:, 0] = -1e9
    torch.testing.assert_close(loss, F.cross_entropy(logits, y[real]))


def test_merged_sasrec_reads_both_domains_and_ranks_target_items_only() -> None:
    # planted tastes shared by both domains, short target histories: the merged input has more to go on
    data = synthetic_interactions(2, n_users=600, sticky=0.0, n_items=(40, 40), n_topics=10, mean_len=(12.0, 3.0))
    split = leave_one_out(data, "music")
    args = SASRecArgs(epochs=8, patience=8, dim=32, layers=1, max_len=16, lr=1e-2, negatives=0)
    model, _, scorer = train_sasrec(split, args, merged=True)
    assert model.cfg.n_items == data.n_items("music") + data.n_items("book")
    scores = scorer(split.test)
    assert scores.shape == (len(split.test), data.n_items("music") + 1)
    pop = Popularity(split.train, "music", data.n_items("music"))
    ours = evaluate_ranking(scorer, split.test)["NDCG@10"]
    assert ours > evaluate_ranking(pop.score, split.test)["NDCG@10"] + 0.02
