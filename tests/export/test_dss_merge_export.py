"""DSS export of an intent-aware merge (export/dss.py): ``quota`` / ``round-robin`` write each intent as
``unit(phi_k) * pi_k`` (0 below lam) under the same (B, K, D) signature; a max-trained model whose merge is
``weighted`` exports one vector, as a weighted-score one does."""

from __future__ import annotations

import pytest
import torch

from export.dss import DSSTower, PresenceDSSTower, WeightedDSSTower, dss_graph, intent_score
from training.models.dss import DSS, DSSConfig, confident

META = {"model": "dss", "target": "music", "source": "book", "n_target_items": 30}


def _model(rule: str) -> DSS:
    torch.manual_seed(0)
    return DSS(DSSConfig(n_items=30, dim=16, layers=1, dropout=0.0, max_len=12, intents=3, intent_score=rule)).eval()


@pytest.mark.parametrize("rule", ["quota", "round-robin", "head3"])
def test_an_intent_aware_merge_exports_presence_scaled_unit_intents(rule: str) -> None:
    model = _model(rule)
    graph = dss_graph(model, META)
    assert isinstance(graph.module, PresenceDSSTower) and graph.intents == 3 and intent_score(graph.module) == rule
    seq = torch.randint(0, 31, (5, 12))
    seq[0] = 0  # a fully padded row stays finite
    with torch.no_grad():
        out = graph.module(seq, torch.zeros_like(seq))
        phi, pi = model.last_intents(seq)
    assert out.shape == (5, 3, 16) and torch.isfinite(out).all()
    want = pi * confident(pi, model.cfg.lam)
    torch.testing.assert_close(out.norm(dim=-1), want, atol=1e-5, rtol=1e-5)
    scores_out, scores_phi = out @ model.item_vectors().T, phi @ model.item_vectors().T  # (5, K, N+1)
    keep = want > 0
    assert torch.equal(scores_out[keep].argsort(dim=-1), scores_phi[keep].argsort(dim=-1))  # rankings unchanged


def test_max_exports_the_raw_intents_and_weighted_one_vector() -> None:
    graph = dss_graph(_model("max"), META)
    assert type(graph.module) is DSSTower and intent_score(graph.module) == "max"
    weighted = dss_graph(_model("weighted"), META)
    assert isinstance(weighted.module, WeightedDSSTower) and weighted.intents is None
