"""GURU: shared causal encoder, adversarial domain alignment, the "GUR alone" tower."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training import checkpoint
from training.data.cross_domain import bucketed_batches, cross_domain_arrays
from training.data.splits import leave_one_out
from training.data.synthetic import synthetic_interactions
from training.models.guru import GURU, GradReverse, GURUConfig, guru_losses, reversal_strength

torch.set_num_threads(1)


def _model(encoder: str = "transformer", adversarial: bool = True) -> GURU:
    torch.manual_seed(0)
    return GURU(GURUConfig(30, 40, dim=16, layers=2, heads=2, dropout=0.0, max_len=12, encoder=encoder,
                           adversarial=adversarial)).eval()


def _seqs(batch: int, length: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(1, n + 1, (batch, length), generator=g)
    cut = torch.randint(0, length, (batch, 1), generator=g)  # left padding of random width
    return seq.masked_fill(torch.arange(length)[None] < cut, 0)


@pytest.mark.parametrize("encoder", ["transformer", "lstm"])
def test_guru_loss_drops_after_a_few_training_steps(encoder: str) -> None:
    split = leave_one_out(synthetic_interactions(0, n_users=150, n_items=(40, 30), n_topics=4), "music")
    data = cross_domain_arrays(split, 12)
    torch.manual_seed(0)
    model = GURU(GURUConfig(30, 40, dim=16, layers=1, heads=2, dropout=0.0, max_len=12, encoder=encoder))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    batch = next(bucketed_batches(data, 64, rng))
    losses = []
    for _ in range(30):
        t_in, t_out, s_in, s_idx = batch
        parts = guru_losses(model, model.latents(t_in, 0), model.latents(s_in, 1), t_in, s_in, t_out, s_idx, 0.5,
                            "ce", (None, None))
        loss = parts["rec"] + 0.1 * parts["adv"] + 0.1 * parts["align"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_adversarial_loss_is_zero_when_the_adversary_is_switched_off() -> None:
    t, s = _seqs(4, 8, 30), _seqs(4, 8, 40, seed=1)
    out = torch.nn.functional.pad(t[:, 1:], (0, 1))
    for adversarial, expect_zero in ((True, False), (False, True)):
        model = _model(adversarial=adversarial)
        idx = torch.full_like(t, 7)
        parts = guru_losses(model, model.latents(t, 0), model.latents(s, 1), t, s, out, idx, 1.0, "ce", (None, None))
        assert (parts["adv"].item() == 0.0) == expect_zero


def test_gradient_reversal_is_identity_forward_and_negates_gradient_backward() -> None:
    x = torch.randn(3, 4, requires_grad=True)
    y = GradReverse.apply(x, 0.5)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, -0.5))
    assert reversal_strength(0.0) == 0.0 and 0.99 < reversal_strength(1.0) < 1.0


@pytest.mark.parametrize("encoder", ["transformer", "lstm"])
def test_extra_left_padding_does_not_change_the_gur(encoder: str) -> None:
    model = _model(encoder)
    t, s = _seqs(5, 8, 30), _seqs(5, 6, 40, seed=1)
    with torch.no_grad():
        base = model(t, s)
        padded = model(torch.nn.functional.pad(t, (4, 0)), torch.nn.functional.pad(s, (6, 0)))
    assert torch.allclose(base, padded, atol=1e-5)


@pytest.mark.parametrize("encoder", ["transformer", "lstm"])
def test_all_padding_input_gives_a_finite_gur(encoder: str) -> None:
    model = _model(encoder)
    zeros = torch.zeros(3, 7, dtype=torch.long)
    with torch.no_grad():
        assert torch.isfinite(model(zeros, zeros)).all()
        assert torch.isfinite(model(zeros, _seqs(3, 7, 40))).all()


def test_gur_of_a_prefix_does_not_depend_on_later_items() -> None:
    model = _model()
    t = _seqs(4, 10, 30)
    changed = t.clone()
    changed[:, 6:] = torch.randint(1, 31, (4, 4))
    with torch.no_grad():
        a, b = model.latents(t, 0), model.latents(changed, 0)
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-6)


def test_guru_checkpoint_round_trip_rebuilds_the_same_outputs(tmp_path) -> None:
    model = _model("lstm")
    t, s = _seqs(4, 8, 30), _seqs(4, 8, 40, seed=2)
    path = checkpoint.save(tmp_path / "guru.pt", model, {"model": "gur"})
    loaded, meta = checkpoint.load(path)
    assert isinstance(loaded, GURU) and loaded.cfg == model.cfg and meta["model"] == "gur"
    with torch.no_grad():
        assert torch.equal(model(t, s), loaded(t, s))
