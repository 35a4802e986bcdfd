"""UniSRec: the whitening + MoE adapter, the serving interface, the contrastive losses, checkpoints, transfer."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from core.sequence import encode_batch
from training import checkpoint
from training.models.text_items import MoEAdapter, TextItemsConfig
from training.models.unisrec import UniSRec, UniSRecConfig, item_drop, seq_item_loss, seq_seq_loss, transfer

E, D, N = 24, 16, 40


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # tiny tensors: more threads only add contention


def _text(n: int = N, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = F.normalize(torch.randn(n + 1, E, generator=g), dim=-1)
    v[0] = 0
    return v


def _model(transductive: bool = False, dropout: float = 0.0) -> UniSRec:
    torch.manual_seed(0)
    cfg = UniSRecConfig(n_items=N, text_dim=E, dim=D, layers=2, heads=2, dropout=dropout, max_len=12, experts=4,
                        adapter_dropout=dropout, transductive=transductive, text_model="random", domain="music")
    model = UniSRec(cfg)
    model.set_text(_text())
    return model.eval()


def test_adapter_maps_any_leading_shape_to_dim() -> None:
    adapter = MoEAdapter(TextItemsConfig(text_dim=E, dim=D, experts=3)).eval()
    assert adapter(torch.randn(5, E)).shape == (5, D)
    assert adapter(torch.randn(2, 7, E)).shape == (2, 7, D)


def test_whitening_subtracts_the_bias_then_applies_w() -> None:
    adapter = MoEAdapter(TextItemsConfig(text_dim=E, dim=D, experts=1, dropout=0.0)).eval()
    with torch.no_grad():
        adapter.bias.normal_()
    x = torch.randn(6, E)
    expected = (x - adapter.bias[0]) @ adapter.weight[0]  # one expert: its gate weight is exactly 1
    torch.testing.assert_close(adapter(x), expected, atol=1e-5, rtol=1e-5)


def test_experts_are_mixed_by_gate_weights_that_sum_to_one() -> None:
    adapter = MoEAdapter(TextItemsConfig(text_dim=E, dim=D, experts=4, dropout=0.0))
    with torch.no_grad():
        adapter.gate.normal_()
    x = torch.randn(8, E)
    for mode in (True, False):
        adapter.train(mode)
        gates = adapter.gate_weights(x)
        assert gates.shape == (8, 4) and (gates >= 0).all()
        torch.testing.assert_close(gates.sum(-1), torch.ones(8))
    adapter.eval()
    mixed = (adapter.gate_weights(x)[..., None] * adapter.experts(x)).sum(-2)
    torch.testing.assert_close(adapter(x), mixed)


def test_gate_noise_only_in_training_mode() -> None:
    adapter = MoEAdapter(TextItemsConfig(text_dim=E, dim=D, experts=4, dropout=0.0))
    x = torch.randn(8, E)
    adapter.train()
    assert not torch.allclose(adapter.gate_weights(x), adapter.gate_weights(x))
    adapter.eval()
    torch.testing.assert_close(adapter.gate_weights(x), adapter.gate_weights(x))


def test_adapter_is_finite_for_zero_text() -> None:
    adapter = MoEAdapter(TextItemsConfig(text_dim=E, dim=D)).eval()
    assert torch.isfinite(adapter(torch.zeros(3, E))).all()


def test_item_vectors_are_normalised_with_a_zero_padding_row() -> None:
    for transductive in (False, True):
        items = _model(transductive).item_vectors()
        assert items.shape == (N + 1, D)
        assert torch.equal(items[0], torch.zeros(D))
        torch.testing.assert_close(items[1:].norm(dim=-1), torch.ones(N))


def test_user_vectors_are_normalised_and_all_padding_is_finite() -> None:
    model = _model()
    users = model(torch.as_tensor(encode_batch([[1, 2, 3], [], [4]], 12)))
    assert users.shape == (3, D) and torch.isfinite(users).all()
    torch.testing.assert_close(users[[0, 2]].norm(dim=-1), torch.ones(2))
    assert torch.isfinite(model(torch.zeros(2, 12, dtype=torch.long))).all()


def test_left_padding_does_not_change_the_user_vector() -> None:
    model = _model(transductive=True)
    seq = [3, 7, 1, 9]
    short = model(torch.as_tensor(encode_batch([seq], 6)))
    long = model(torch.as_tensor(encode_batch([seq], 12)))
    torch.testing.assert_close(short, long, atol=1e-5, rtol=1e-5)


def test_text_tower_reproduces_the_inductive_item_vectors() -> None:
    model = _model()
    tower = model.text_tower().eval()
    torch.testing.assert_close(tower(model.text_vecs[1:]), model.item_vectors()[1:], atol=1e-6, rtol=1e-5)


def test_text_tower_of_the_transductive_model_is_its_text_part_only() -> None:
    model = _model(transductive=True)
    assert model.id_emb is not None
    with torch.no_grad():
        model.id_emb.weight[1:].normal_()
    text_only = model.text_tower()(model.text_vecs[1:])
    assert not torch.allclose(text_only, model.item_vectors()[1:], atol=1e-3)
    torch.testing.assert_close(text_only, F.normalize(model.adapter(model.text_vecs[1:]), dim=-1))


def test_item_drop_only_removes_real_items() -> None:
    torch.manual_seed(0)
    seq = torch.as_tensor(encode_batch([[1, 2, 3, 4, 5, 6, 7, 8], [9]], 10))
    dropped = item_drop(seq, 0.5)
    assert ((dropped == seq) | (dropped == 0)).all()
    assert (dropped[seq == 0] == 0).all() and (dropped != seq).any()


@pytest.mark.parametrize("transductive", [False, True])
def test_contrastive_losses_are_finite_and_decrease_on_a_tiny_batch(transductive: bool) -> None:
    torch.manual_seed(0)
    model = _model(transductive, dropout=0.1).train()
    seqs = [list(np.random.default_rng(i).integers(1, N + 1, size=6)) for i in range(16)]
    inputs = torch.as_tensor(encode_batch([s[:-1] for s in seqs], 8))
    labels = torch.as_tensor(encode_batch([s[1:] for s in seqs], 8))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = seq_item_loss(model, inputs, labels, word_drop=0.1) + 0.1 * seq_seq_loss(model, inputs)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    full = seq_item_loss(model, inputs, labels, torch.arange(1, N + 1))  # the fine-tuning form
    assert torch.isfinite(full)


def test_checkpoint_rebuilds_the_model_with_its_text_table(tmp_path: Path) -> None:
    model = _model(transductive=True)
    path = checkpoint.save(tmp_path / "u.pt", model, {"text_model": "random", "text_dim": E})
    rebuilt, meta = checkpoint.load(path)
    assert isinstance(rebuilt, UniSRec)
    assert rebuilt.cfg.text_model == "random" and rebuilt.cfg.domain == "music" and rebuilt.cfg.transductive
    seq = torch.as_tensor(encode_batch([[1, 2, 3], [5]], 12))
    torch.testing.assert_close(rebuilt(seq), model(seq))
    torch.testing.assert_close(rebuilt.item_vectors(), model.item_vectors())
    torch.testing.assert_close(rebuilt.text_vecs, model.text_vecs)
    assert meta["text_dim"] == E


def test_transfer_keeps_adapter_and_encoder_and_swaps_the_item_table() -> None:
    model = _model()
    other = _text(n=25, seed=1)
    moved = transfer(model, other, "book", transductive=True).eval()
    assert moved.cfg.n_items == 25 and moved.cfg.domain == "book" and moved.id_emb is not None
    torch.testing.assert_close(moved.text_vecs, other)
    for name, value in model.state_dict().items():
        if not name.startswith("text_vecs"):
            torch.testing.assert_close(moved.state_dict()[name], value)
    assert moved.item_vectors().shape == (26, D)
