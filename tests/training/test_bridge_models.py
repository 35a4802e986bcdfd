"""Bridge modules: padding, empty histories, the popularity fallback path and self-rebuilding checkpoints."""

import torch

from core.sequence import encode_batch
from training import checkpoint
from training.models.bridge import (
    EMCDR,
    PTUPCDR,
    CharacteristicEncoder,
    EMCDRConfig,
    InductiveBridge,
    InductiveBridgeConfig,
    PTUPCDRConfig,
)


def _inductive(personal: bool = True, encoder: str = "mean") -> InductiveBridge:
    torch.manual_seed(0)
    cfg = InductiveBridgeConfig(n_source_items=30, n_target_items=20, dim=8, target_dim=8, personal=personal,
                                encoder=encoder, hidden=16, dropout=0.0, max_len=12)
    model = InductiveBridge(cfg).eval()
    with torch.no_grad():
        model.target_items.normal_()
    return model


def _ptupcdr() -> PTUPCDR:
    torch.manual_seed(0)
    model = PTUPCDR(PTUPCDRConfig(n_users=5, n_source_items=30, n_target_items=20, dim=4, hidden=8,
                                  target_mean=3.5)).eval()
    with torch.no_grad():
        for buf in (model.source_users, model.source_items, model.target_items):
            buf.normal_()
    return model


def test_empty_source_history_gives_a_finite_vector_that_ranks_by_item_bias() -> None:
    models = [_inductive(), _inductive(personal=False), _inductive(encoder="attention"), _inductive(encoder="guru")]
    for model in models:
        empty = torch.zeros(2, 12, dtype=torch.long)
        vec = model(empty)
        assert torch.isfinite(vec).all()
        # x_u = 0, so the scores are the item biases alone: the popularity fallback the service uses
        torch.testing.assert_close(model.score(empty)[0], model.item_vectors()[:, -1])


def test_ptupcdr_with_empty_source_history_is_finite() -> None:
    model = _ptupcdr()
    vec = model(torch.tensor([0, 1]), torch.zeros(2, 7, dtype=torch.long), torch.zeros(2, 7))
    assert vec.shape == (2, 4 + 2) and torch.isfinite(vec).all()


def test_left_padding_does_not_change_the_inductive_vector() -> None:
    for model in (_inductive(), _inductive(encoder="attention"), _inductive(encoder="guru")):
        seq = [3, 7, 1, 9]
        short = model(torch.as_tensor(encode_batch([seq], 6)))
        long = model(torch.as_tensor(encode_batch([seq], 12)))
        torch.testing.assert_close(short, long, atol=1e-5, rtol=1e-5)


def test_characteristic_encoder_ignores_padded_positions() -> None:
    torch.manual_seed(0)
    enc = CharacteristicEncoder(4, 8)
    x = torch.randn(1, 5, 4)
    pad = torch.tensor([[True, True, False, False, False]])
    noisy = x.clone()
    noisy[0, :2] = 100.0
    torch.testing.assert_close(enc(x, pad), enc(noisy, pad))


def test_personal_bridges_differ_between_users() -> None:
    model = _inductive()
    with torch.no_grad():
        model.meta.net[2].weight.normal_()
    a = model(torch.as_tensor(encode_batch([[1, 2, 3]], 12)))
    b = model(torch.as_tensor(encode_batch([[20, 21, 22]], 12)))
    assert not torch.allclose(a, b)


def test_checkpoints_rebuild_every_bridge(tmp_path) -> None:
    seq = torch.as_tensor(encode_batch([[1, 2, 3], []], 12))
    for i, model in enumerate((_inductive(), _inductive(encoder="attention"), _inductive(encoder="guru"))):
        rebuilt, meta = checkpoint.load(checkpoint.save(tmp_path / f"b{i}.pt", model, {"source": "book"}))
        torch.testing.assert_close(model(seq), rebuilt(seq))
        assert meta["source"] == "book"
    pt = _ptupcdr()
    rebuilt, _ = checkpoint.load(checkpoint.save(tmp_path / "pt.pt", pt))
    users, rates = torch.tensor([0, 3]), torch.full((2, 12), 4.0)
    torch.testing.assert_close(pt(users, seq, rates), rebuilt(users, seq, rates))
    em = EMCDR(EMCDRConfig(n_users=5, n_target_items=20, dim=4)).eval()
    rebuilt, _ = checkpoint.load(checkpoint.save(tmp_path / "em.pt", em))
    torch.testing.assert_close(em(users), rebuilt(users))
