"""DSS: shapes and padding, training matches serving, the seq2seq loss learns, trainer/checkpoint/evaluate agree,
and on users with two planted intents it finds the minority intent's next item more often than SASRec."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.sequence import encode_batch
from training import checkpoint, evaluate_cli
from training import cli as train_cli
from training.data.splits import leave_one_out
from training.data.synthetic import planted_intents
from training.evaluation import diversity_metrics, evaluate_ranking, top_k_items
from training.models.dss import DSS, DSSConfig, intent_scores, reversed_future, seq2seq_loss
from training.train_dss import DSSArgs, train_dss
from training.train_sasrec import SASRecArgs, train_sasrec


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _model(**kw: object) -> DSS:
    torch.manual_seed(0)
    return DSS(DSSConfig(**{"n_items": 30, "dim": 16, "layers": 1, "dropout": 0.0, "max_len": 12, "intents": 3,
                            **kw})).eval()  # type: ignore[arg-type]


@pytest.mark.parametrize("assign", ["item", "state"])
def test_all_padding_input_gives_finite_intents_of_shape_b_k_d(assign: str) -> None:
    out = _model(assign=assign)(torch.zeros(3, 12, dtype=torch.long))
    assert out.shape == (3, 3, 16)
    assert torch.isfinite(out).all()


def test_left_padding_does_not_change_the_intents() -> None:
    model = _model()
    seq = [3, 7, 1, 9]
    short = model(torch.as_tensor(encode_batch([seq], 6)))
    long = model(torch.as_tensor(encode_batch([seq, [2]], 12)))[:1]
    torch.testing.assert_close(short, long, atol=1e-5, rtol=1e-5)


def test_the_training_state_of_a_prefix_is_the_serving_output_on_that_prefix() -> None:
    model = _model()
    seq = torch.as_tensor(encode_batch([[3, 7, 1, 9, 4]], 12))
    phi, pi = model.intents_all(seq)  # every prefix at once, as training reads it
    for n in range(1, 6):
        served, served_pi = model.intents(torch.as_tensor(encode_batch([[3, 7, 1, 9, 4][:n]], 12)))
        torch.testing.assert_close(phi[:, 12 - 5 + n - 1], served, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(pi[:, 12 - 5 + n - 1], served_pi, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pi.sum(-1)[:, -5:], torch.ones(1, 5))


def test_reversed_future_is_the_rest_of_the_row_newest_first_left_padded() -> None:
    full = torch.tensor([[0, 0, 1, 2, 3, 4], [5, 6, 7, 8, 9, 10]])
    out = reversed_future(full, torch.tensor([1, 4]))
    assert out.tolist() == [[0, 0, 0, 4, 3, 2], [0, 0, 0, 0, 10, 9]]


def test_weighted_score_is_one_vector_and_max_takes_the_best_intent() -> None:
    phi, pi, items = torch.randn(2, 3, 4), torch.softmax(torch.randn(2, 3), -1), torch.randn(5, 4)
    torch.testing.assert_close(intent_scores(phi, pi, items, "weighted"), (pi[..., None] * phi).sum(1) @ items.T)
    torch.testing.assert_close(intent_scores(phi, pi, items, "max"), (phi @ items.T).amax(1))
    with pytest.raises(ValueError, match="score must be one of"):
        DSSConfig(n_items=3, score="mean")


def test_seq2seq_loss_decreases_over_a_few_steps() -> None:
    torch.manual_seed(0)
    model = DSS(DSSConfig(n_items=40, dim=16, layers=1, dropout=0.0, max_len=10, intents=2, lam=0.0))
    rng = np.random.default_rng(0)
    rows = [rng.integers(1, 41, size=int(rng.integers(4, 11))) for _ in range(32)]
    full = torch.as_tensor(encode_batch(rows, 10))
    cut = torch.as_tensor([len(r) // 2 for r in rows])
    prefix = torch.as_tensor(encode_batch([r[: len(r) // 2] for r in rows], 10))
    future = reversed_future(full, cut)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        p, p_pi = model.intents(prefix)
        f, f_pi = model.intents(future)
        loss = seq2seq_loss(p, p_pi, f, f_pi, lam=0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_seq2seq_loss_ignores_intents_below_the_threshold() -> None:
    phi = torch.randn(4, 2, 8)
    absent = torch.tensor([[1.0, 0.0]] * 4)  # intent 1 absent everywhere
    only_first = seq2seq_loss(phi, absent, phi, absent, lam=0.5)
    logits = phi.reshape(8, 8) @ phi.reshape(8, 8).T / 8**0.5
    expected = torch.nn.functional.cross_entropy(logits, torch.arange(8), reduction="none")[0::2].mean()
    torch.testing.assert_close(only_first, expected)
    assert seq2seq_loss(phi, absent, phi, absent, lam=1.0) == 0


def test_train_dss_checkpoint_and_evaluate_report_the_same_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train_cli.main(["dss", "--data", "synthetic", "--target-domain", "music", "--epochs", "1", "--dim", "16",
                           "--intents", "2", "--out", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "dss" and Path(report["checkpoint"]).exists()
    model, meta = checkpoint.load(Path(report["checkpoint"]))
    assert isinstance(model, DSS) and model.cfg.intents == 2 and meta["target"] == "music"
    assert evaluate_cli.main(["--checkpoint", report["checkpoint"], "--data", "synthetic"]) == 0
    head, row = capsys.readouterr().out.strip().splitlines()
    table = dict(zip(head.split()[1:], map(float, row.split()[1:]), strict=True))
    assert row.split()[0] == "dss"
    for metric, value in table.items():
        assert value == pytest.approx(report["test"][metric], abs=6e-5), metric


def test_a_bad_score_option_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert train_cli.main(["dss", "--data", "synthetic", "--target-domain", "music", "--epochs", "1",
                           "--score", "mean", "--out", str(tmp_path)]) == 2
    assert "score must be one of" in capsys.readouterr().err


def test_dss_finds_the_minority_intents_item_more_often_than_sasrec() -> None:
    data, topics = planted_intents()
    split = leave_one_out(data, "shop")
    common = {"epochs": 10, "patience": 10, "dim": 32, "layers": 1, "max_len": 16, "lr": 1e-2, "negatives": 0}
    _, _, sas = train_sasrec(split, SASRecArgs(**common))  # type: ignore[arg-type]
    _, _, dss = train_dss(split, DSSArgs(**common))  # type: ignore[arg-type]
    ours, theirs = evaluate_ranking(dss, split.test), evaluate_ranking(sas, split.test)
    assert ours["HR@10"] > theirs["HR@10"] + 0.03, (ours, theirs)
    assert ours["HR@20"] > theirs["HR@20"] + 0.05, (ours, theirs)
    # diversity against the planted topics: a reference vector per item = its topic's one-hot
    vectors = np.zeros((len(topics), 8))
    vectors[np.arange(1, len(topics)), topics[1:]] = 1.0
    last = np.array([h[-1] for h in split.test.target_hist])
    div_ours = diversity_metrics(top_k_items(dss, split.test), last, vectors)
    div_theirs = diversity_metrics(top_k_items(sas, split.test), last, vectors)
    assert div_ours["ILD@10"] > div_theirs["ILD@10"], (div_ours, div_theirs)
    assert div_ours["repeat@10"] < div_theirs["repeat@10"], (div_ours, div_theirs)


@pytest.mark.parametrize("score", ["max", "weighted"])
def test_item_loss_is_the_softmax_over_the_intent_scores(score: str) -> None:
    from torch.nn import functional as F

    from training.models.dss import item_loss

    torch.manual_seed(0)
    phi, pi, items = torch.randn(5, 3, 4), torch.softmax(torch.randn(5, 3), -1), torch.randn(9, 4)
    labels = torch.tensor([1, 2, 8, 3, 3])
    logits = intent_scores(phi, pi, items, score)
    logits[:, 0] = -1e9
    torch.testing.assert_close(item_loss(phi, pi, labels, items, score), F.cross_entropy(logits, labels))
    sampled = item_loss(phi.requires_grad_(), pi, labels, items, score, negatives=4)
    sampled.backward()
    assert torch.isfinite(sampled) and phi.grad is not None and torch.isfinite(phi.grad).all()


@pytest.mark.parametrize(("assign", "aggregate"), [("item", "state"), ("state", "state"), ("item", "item"),
                                                   ("state", "both")])
def test_the_serving_forward_equals_the_newest_column_of_every_prefixs_intents(assign: str, aggregate: str) -> None:
    model = _model(assign=assign, aggregate=aggregate)
    seq = torch.as_tensor(encode_batch([[3, 7, 1, 9, 4], [2], [], list(range(1, 16))], 12))
    with torch.no_grad():
        phi, _ = model.intents_all(seq)
        torch.testing.assert_close(model(seq), phi[:, -1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(seq[:, -3:]), model.intents_all(seq[:, -3:])[0][:, -1], atol=1e-5, rtol=1e-5)


def _topic_vectors(topics: np.ndarray, dim: int = 24, seed: int = 0) -> np.ndarray:
    """A sentence-vector stand-in: each item = its topic's random direction + small noise; row 0 (padding) zeros."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(int(topics.max()) + 1, dim))
    out = centres[np.maximum(topics, 0)] + 0.1 * rng.normal(size=(len(topics), dim))
    out[0] = 0.0
    return out.astype(np.float32)


def test_text_anchors_recover_the_topics_of_the_items_sentence_vectors() -> None:
    from training.models.dss import text_anchors

    topics = np.array([-1] + [i // 10 for i in range(40)])  # 4 topics of 10 items
    table = text_anchors(_topic_vectors(topics), 4, tau=0.05, seed=0)
    assert table.shape == (41, 4)
    assert torch.allclose(table.sum(dim=1), torch.ones(41))
    assert torch.allclose(table[0], torch.full((4,), 0.25))  # padding: uniform
    hard = table[1:].argmax(dim=1).numpy()
    # one intent per topic: the items of a topic share an intent, and the 4 topics use 4 different intents
    assert all(len(set(hard[topics[1:] == t])) == 1 for t in range(4))
    assert len(set(hard)) == 4
    assert float(table[1:].max(dim=1).values.min()) > 0.9  # confident at tau 0.05


def test_text_assign_is_carried_by_the_model_used_by_the_serving_forward_and_checked() -> None:
    topics = np.array([-1] + [i // 10 for i in range(30)])
    model = _model(assign="text")
    with pytest.raises(ValueError, match="31 item sentence vectors"):
        model.set_text_anchors(np.zeros((5, 8), np.float32))
    with pytest.raises(ValueError, match="assign='text'"):
        _model().set_text_anchors(_topic_vectors(topics))
    model.set_text_anchors(_topic_vectors(topics))
    assert not torch.allclose(model.text_assign[1:], torch.full((30, 3), 1 / 3))
    seq = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 3, 14, 25, 4, 15]])
    phi_all, pi_all = model.intents(seq)
    assert torch.allclose(model(seq), phi_all, atol=1e-5)
    # presence follows the text table: pi_k = sum_i p_t(i) p(k|i) with p(k|i) the table's rows
    assert torch.allclose(pi_all.sum(dim=1), torch.ones(1), atol=1e-5)
    state = model.state_dict()
    assert "text_assign" in state
    rebuilt = DSS(model.cfg).eval()
    rebuilt.load_state_dict(state)
    assert torch.allclose(rebuilt(seq), model(seq))


def test_text_anchored_dss_trains_on_planted_intents_and_refuses_the_cross_domain_variant() -> None:
    data, topics = planted_intents(n_users=150, n_topics=4, per_topic=15)
    split = leave_one_out(data, "shop")
    args = DSSArgs(epochs=1, patience=1, dim=16, layers=1, max_len=20, batch_size=64, intents=4, assign="text")
    model, _, scorer = train_dss(split, args, text_vectors=_topic_vectors(topics))
    hard = model.text_assign[1:].argmax(dim=1).numpy()
    assert len(set(hard)) == 4  # the anchors came from the given vectors: one intent per planted topic
    assert np.isfinite(evaluate_ranking(scorer, split.test)["NDCG@10"])
    with pytest.raises(ValueError, match="two"):
        train_dss(split, args, merged=True, text_vectors=_topic_vectors(topics))


def test_cosine_scoring_serves_unit_intents_against_unit_items_over_the_temperature() -> None:
    model = _model(cosine=0.1)
    seq = torch.as_tensor(encode_batch([[3, 7, 1, 9, 4], [2], []], 12))
    with torch.no_grad():
        served = model(seq)
        items = model.item_vectors()
        torch.testing.assert_close(served.norm(dim=-1), torch.ones(3, 3))
        torch.testing.assert_close(items[1:].norm(dim=-1), torch.full((30,), 10.0))
        assert items[0].abs().max() == 0  # padding stays a zero row
        phi, _ = model.intents_all(seq)  # training reads the same unit vectors
        torch.testing.assert_close(phi[:, -1], served, atol=1e-5, rtol=1e-5)
        raw_items = model.item_emb.weight[None, None, 1:]
        cos = torch.nn.functional.cosine_similarity(served[:, :, None, :], raw_items, dim=-1)
        torch.testing.assert_close(model.score(seq)[:, 1:], cos.amax(dim=1) / 0.1, atol=1e-4, rtol=1e-4)
    assert model.seq2seq_scale() == pytest.approx(10.0)
    assert _model().seq2seq_scale() == pytest.approx(16**-0.5)
    with pytest.raises(ValueError, match="cosine must be >= 0"):
        _model(cosine=-1.0)


def test_without_logq_the_sampled_loss_scores_raw_logits_and_penalises_frequent_negatives() -> None:
    from torch.nn import functional as F

    from training.models.sasrec import softmax_loss

    gen = torch.Generator().manual_seed(1)
    h, items = torch.randn(4, 6, generator=gen), torch.randn(40, 6, generator=gen)
    labels = torch.tensor([1, 2, 3, 4])
    sampler = torch.full((40,), 0.2 / 38)  # item 8: most draws (16 negatives < 39 items: the sampled path)
    sampler[0], sampler[8] = 0.0, 0.8
    torch.manual_seed(5)
    raw = softmax_loss(h, labels, items, 16, sampler, logq=False)
    torch.manual_seed(5)
    neg = torch.multinomial(sampler, 16, replacement=True)
    hits = neg[None, :] == labels[:, None]  # accidental hits are masked, as with the correction
    logits = torch.cat([(h * items[labels]).sum(-1)[:, None], (h @ items[neg].T).masked_fill(hits, -1e9)], dim=1)
    torch.testing.assert_close(raw, F.cross_entropy(logits, torch.zeros(4, dtype=torch.long)))
    torch.manual_seed(5)
    assert not torch.isclose(softmax_loss(h, labels, items, 16, sampler), raw)  # the corrected loss differs
    # a weight in between subtracts that share of log(q * S) from every logit
    half = 0.5 * torch.log(sampler * 16 + 1e-12)
    logits_half = torch.cat([logits[:, :1] - half[labels][:, None], logits[:, 1:] - half[neg][None, :]], dim=1)
    torch.manual_seed(5)
    torch.testing.assert_close(softmax_loss(h, labels, items, 16, sampler, logq=0.5),
                               F.cross_entropy(logits_half, torch.zeros(4, dtype=torch.long)))
    # the gradient pushes the most drawn item down harder without the correction
    grads = []
    for logq in (1.0, 0.5, 0.0):
        e = items.clone().requires_grad_()
        torch.manual_seed(5)
        softmax_loss(h, labels, e, 16, sampler, logq=logq).backward()
        assert e.grad is not None
        grads.append(float((e.grad[8] * h.mean(0)).sum()))
    assert grads[2] > grads[1] > grads[0]


def test_train_dss_cli_takes_the_scoring_options_and_the_checkpoint_keeps_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train_cli.main(["dss", "--data", "synthetic", "--target-domain", "music", "--epochs", "1", "--dim", "16",
                           "--intents", "2", "--cosine", "0.2", "--logq", "0.5", "--aggregate", "item", "--mask-absent",
                           "--out", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    model, _ = checkpoint.load(Path(report["checkpoint"]))
    assert isinstance(model, DSS) and model.cfg.cosine == pytest.approx(0.2)
    assert model.cfg.aggregate == "item" and model.cfg.mask_absent
    torch.testing.assert_close(model.item_vectors()[1:].norm(dim=-1), torch.full((model.cfg.n_items,), 5.0))


def test_mask_absent_scores_items_by_the_present_intents_alone() -> None:
    model = _model(mask_absent=True, lam=0.3)
    seq = torch.as_tensor(encode_batch([[3, 7, 1, 9, 4], [2], [], list(range(1, 16))], 12))
    with torch.no_grad():
        phi, pi = model.last_intents(seq)  # raw intents, as the seq2seq loss reads them
        served = model(seq)
        items = model.item_vectors()
        present = (pi > 0.3) | (pi == pi.max(dim=1, keepdim=True).values)
        assert (~present).any() and present.sum(dim=1).min() >= 1  # the case this test is about occurs
        for b in range(seq.shape[0]):
            keep = phi[b][present[b]]
            torch.testing.assert_close(served[b][present[b]], keep)  # present intents unchanged
            strongest = phi[b, pi[b].argmax()]
            for k in torch.nonzero(~present[b]).flatten().tolist():
                torch.testing.assert_close(served[b, k], strongest)  # an absent one repeats the strongest
            best = (keep @ items[1:].T).amax(dim=0)
            torch.testing.assert_close(model.score(seq[b : b + 1])[0, 1:], best, atol=1e-5, rtol=1e-5)
    assert not torch.equal(_model(lam=0.3)(seq), served)  # without the mask every intent scores


def test_aggregate_item_makes_each_intent_a_centroid_of_its_items_embeddings() -> None:
    model = _model(aggregate="item", intents=1)  # one intent: the p_t(i)-weighted mean of the history's embeddings
    seq = torch.as_tensor(encode_batch([[3, 7, 1, 9, 4]], 12))
    with torch.no_grad():
        served = model(seq)[0, 0]
        e = model.item_emb.weight[torch.tensor([3, 7, 1, 9, 4])]
        # a LayerNorm of a convex combination of e: the pre-norm vector lies in their span
        centred = served - model.intent.ln.bias
        coef = torch.linalg.lstsq(torch.cat([e, torch.ones(1, 16)]).T, centred / model.intent.ln.weight).solution
        assert torch.dist(torch.cat([e, torch.ones(1, 16)]).T @ coef, centred / model.intent.ln.weight) < 1e-3
        assert not torch.allclose(_model(intents=1)(seq), model(seq))  # the states' aggregate differs
    with pytest.raises(ValueError, match="aggregate must be one of"):
        _model(aggregate="mean")


def test_head3_lists_the_best_by_max_over_present_intents_first_then_takes_turns() -> None:
    from service.adapters.faiss_index import HEAD3
    from training.models.dss import HEAD, intent_lists

    assert HEAD == HEAD3 == 3  # the training rule and the service's draw agree on the head
    torch.manual_seed(2)
    per_intent, pi = torch.randn(6, 4, 40), torch.softmax(torch.randn(6, 4) * 2, dim=1)
    head = intent_lists(per_intent, pi, "head3", 0.1, 10)
    rr = intent_lists(per_intent, pi, "round-robin", 0.1, 10)
    ok = (pi > 0.1) | (pi == pi.max(dim=1, keepdim=True).values)
    best = per_intent.masked_fill(~ok[..., None], -torch.inf).amax(dim=1)  # (6, 40)
    torch.testing.assert_close(head[:, :3], best.topk(3, dim=1).indices)
    for m in range(6):
        assert len(set(head[m].tolist())) == 10
        # the rest: the present intents take turns, strongest first, each its best item not yet listed
        turns = [int(k) for k in torch.argsort(pi[m], descending=True) if ok[m, k]]
        taken = head[m, :3].tolist()
        for slot in range(3, 10):
            k = turns[(slot - 3) % len(turns)]
            mine = next(int(i) for i in torch.argsort(per_intent[m, k], descending=True) if int(i) not in taken)
            assert int(head[m, slot]) == mine, (m, slot)
            taken.append(mine)
    assert not torch.equal(head, rr)  # the head changes some lists
