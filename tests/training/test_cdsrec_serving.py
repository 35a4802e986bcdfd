"""CDSRecServing (the lean ONNX user tower, issue 16 item 1) gives CDSRec.forward's vectors: last layers at the
last column only, GURU over target and source stacked as one batch, on every config shape that changes the path."""

from __future__ import annotations

import pytest
import torch

from export.towers import tower_graph
from training.models.cdsrec import CDSRec, CDSRecConfig, CDSRecServing


def _inputs(n_t: int, n_s: int, t_len: int, s_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    t = torch.randint(1, n_t + 1, (12, t_len), generator=gen)
    s = torch.randint(1, n_s + 1, (12, s_len), generator=gen)
    for i in range(12):  # left padding of every length, and rows with an empty domain or both
        t[i, : (i * 3) % (t_len + 1)] = 0
        s[i, : (i * 5) % (s_len + 1)] = 0
    t[0], s[1], t[2], s[2] = 0, 0, 0, 0
    return t, s


@pytest.mark.parametrize(
    ("cfg", "s_len"),
    [
        (CDSRecConfig(n_target=80, n_source=60, dim=32, max_len=20), 20),  # stacked GURU batch
        (CDSRecConfig(n_target=80, n_source=60, dim=32, max_len=20), 9),  # lengths differ: run apart
        (CDSRecConfig(n_target=80, n_source=60, dim=16, layers=3, max_len=12, short_layers=2, short_window=4), 12),
        (CDSRecConfig(n_target=80, n_source=60, dim=16, layers=1, max_len=12, short_layers=1), 12),
    ],
)
def test_the_lean_serving_module_gives_the_models_own_vectors(cfg: CDSRecConfig, s_len: int) -> None:
    torch.manual_seed(0)
    model = CDSRec(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():  # away from the zero-initialised fusion output, so every path shows
            p.normal_(0, 0.2)
    lean = model.serving_module()
    assert isinstance(lean, CDSRecServing)
    t, s = _inputs(cfg.n_target, cfg.n_source, cfg.max_len, s_len, 1)
    with torch.no_grad():
        want, got = model(t, s), lean(t, s)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_export_writes_the_lean_module_and_an_lstm_cdsrec_keeps_its_own() -> None:
    meta = {"target": "music", "source": "book", "n_target_items": 30, "model": "cdsrec"}
    lean = tower_graph(CDSRec(CDSRecConfig(n_target=30, n_source=20, dim=16, max_len=8)), meta)
    assert isinstance(lean.module, CDSRecServing)
    lstm = CDSRec(CDSRecConfig(n_target=30, n_source=20, dim=16, max_len=8, encoder="lstm"))
    assert tower_graph(lstm, meta).module is lstm
