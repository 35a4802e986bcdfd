"""ONNX graphs: dynamic batch and length really work, padding stays finite, the ORT repairs hold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.onnx_graph import export_onnx, session
from export.towers import MeanPoolBridge, bridge_graph, tower_graph
from training.models.sasrec import SASRec, SASRecConfig


def _tower(max_len: int = 50):
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=30, dim=16, layers=2, heads=2, dropout=0.2, max_len=max_len))
    return tower_graph(model, {"target": "music", "source": "book", "n_target_items": 30, "model": "sasrec"})


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("length", [1, 7, 50])
def test_user_encoder_matches_torch_at_any_batch_and_length(tmp_path: Path, batch: int, length: int) -> None:
    graph = _tower()
    export_onnx(graph, tmp_path / "enc.onnx")
    sess = session(tmp_path / "enc.onnx")
    rng = np.random.default_rng(batch * 100 + length)
    target = rng.integers(0, 31, (batch, length))
    source = rng.integers(0, 10, (batch, 3))
    got = sess.run(None, {"target_seq": target, "source_seq": source})[0]
    with torch.no_grad():
        want = graph.module(torch.from_numpy(target), torch.from_numpy(source)).numpy()
    assert got.shape == (batch, 16)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_graph_is_exported_in_eval_mode_with_dynamic_axes_and_opset_17(tmp_path: Path) -> None:
    graph = _tower()
    graph.module.train()  # export must not trace dropout
    export_onnx(graph, tmp_path / "enc.onnx")
    model = onnx.load(str(tmp_path / "enc.onnx"))
    assert not [n for n in model.graph.node if n.op_type == "Dropout"]
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert dims == {"target_seq": ["batch", "target_len"], "source_seq": ["batch", "source_len"]}


def test_all_padding_input_gives_a_finite_vector(tmp_path: Path) -> None:
    graph = _tower()
    export_onnx(graph, tmp_path / "enc.onnx")
    out = session(tmp_path / "enc.onnx").run(
        None, {"target_seq": np.zeros((2, 50), np.int64), "source_seq": np.zeros((2, 50), np.int64)}
    )[0]
    assert np.isfinite(out).all()


def test_an_ignored_source_input_stays_in_the_serving_signature(tmp_path: Path) -> None:
    export_onnx(_tower(), tmp_path / "enc.onnx")
    assert [i.name for i in session(tmp_path / "enc.onnx").get_inputs()] == ["target_seq", "source_seq"]


def test_bridge_matches_torch_at_any_batch_and_length(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = MeanPoolBridge(12, torch.randn(31, 16), dim=8).eval()
    graph = bridge_graph(
        module,
        {"source": "book", "target": "music", "n_source_items": 12, "n_target_items": 30, "max_len": 50},
    )
    export_onnx(graph, tmp_path / "bridge.onnx")
    sess = session(tmp_path / "bridge.onnx")
    assert [i.name for i in sess.get_inputs()] == ["source_seq"]
    for batch, length in [(1, 1), (64, 7), (64, 50), (3, 0)]:
        seq = np.random.default_rng(length).integers(0, 13, (batch, length))
        with torch.no_grad():
            want = module(torch.from_numpy(seq)).numpy()
        np.testing.assert_allclose(sess.run(None, {"source_seq": seq})[0], want, atol=1e-5)


def test_opset_below_17_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="opset must be 17"):
        export_onnx(_tower(), tmp_path / "enc.onnx", opset=16)


@pytest.mark.parametrize("encoder", ["transformer", "lstm"])
def test_cdsrec_tower_matches_torch_at_any_batch_and_length(tmp_path: Path, encoder: str) -> None:
    cdsrec = pytest.importorskip("training.models.cdsrec")
    torch.manual_seed(0)
    cfg = cdsrec.CDSRecConfig(n_target=30, n_source=40, dim=16, layers=1, heads=2, max_len=20, encoder=encoder)
    model = cdsrec.CDSRec(cfg).eval()
    graph = tower_graph(model, {"target": "music", "source": "book", "n_target_items": 30})
    assert graph.n_source_items == 40
    export_onnx(graph, tmp_path / "cdsrec.onnx")
    sess = session(tmp_path / "cdsrec.onnx")
    rng = np.random.default_rng(0)
    for batch, t_len, s_len in [(1, 1, 20), (64, 7, 7), (64, 20, 1), (1, 20, 20)]:
        target, source = rng.integers(0, 31, (batch, t_len)), rng.integers(0, 41, (batch, s_len))
        target[0], source[-1] = 0, 0  # empty histories in either domain stay finite
        with torch.no_grad():
            want = model(torch.from_numpy(target), torch.from_numpy(source)).numpy()
        got = sess.run(None, {"target_seq": target, "source_seq": source})[0]
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, want, atol=1e-4)
