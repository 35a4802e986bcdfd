"""DSS export (export/dss.py): `cdrec export` writes its K-vector user encoder (B, K, D) with K and the max score
in the manifest, parity covers every intent vector, `cdrec export verify` accepts it; a weighted-score DSS
exports one vector; manifests from before the field still load."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch

from core.cli import main as cdrec
from core.manifest import Manifest, current_bundle, read_manifest
from core.sequence import encode_batch
from export import onnx_graph
from export.dss import dss_graph, merged_top_k
from export.towers import load_tower
from training.models.dss import DSS, DSSConfig, intent_scores


def test_cli_exports_a_dss_checkpoint_as_a_k_vector_encoder_and_verifies_it(
    dss_checkpoint_path: Path, data_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "artifacts"
    args = ["--data", str(data_path), "--out", str(out), "--random-sequences", "64", "--real-sequences", "64"]
    assert cdrec(["export", "--checkpoint", str(dss_checkpoint_path), *args]) == 0
    bundle = current_bundle(out)
    graph = read_manifest(bundle).graphs[0]
    k = 3  # train_tiny_dss's K
    assert graph.kind == "user_encoder" and graph.model == "dss"
    assert (graph.intents, graph.intent_score, graph.dim) == (k, "max", 16)
    assert graph.outputs[0].shape == ["batch", k, 16]
    assert [i.name for i in graph.inputs] == ["target_seq", "source_seq"]
    assert graph.parity.passed and graph.parity.max_abs_diff <= 1e-4 and graph.parity.top10_overlap >= 0.99
    capsys.readouterr()
    assert cdrec(["export", "verify", str(bundle)]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_the_onnx_graph_gives_all_k_intent_vectors_of_the_torch_model(
    dss_checkpoint_path: Path, tmp_path: Path
) -> None:
    graph = load_tower(dss_checkpoint_path)
    assert graph.intents == 3
    onnx_graph.export_onnx(graph, tmp_path / "dss.onnx")
    sess = onnx_graph.session(tmp_path / "dss.onnx")
    rng = np.random.default_rng(0)
    hist = [rng.integers(1, graph.n_target_items + 1, int(n)) for n in (0, 1, 5, 20, 33)]
    seq = encode_batch(hist, 20)
    ort = sess.run(None, {"target_seq": seq, "source_seq": np.zeros((5, 20), np.int64)})[0]
    with torch.inference_mode():
        ref = graph.module.model(torch.from_numpy(seq)).numpy()  # type: ignore[operator, union-attr]
    assert ort.shape == (5, 3, 16)
    np.testing.assert_allclose(ort, ref, atol=1e-4)


def test_a_weighted_score_dss_exports_one_vector_per_user() -> None:
    torch.manual_seed(0)
    model = DSS(DSSConfig(n_items=30, dim=16, layers=1, dropout=0.0, max_len=12, intents=3, score="weighted"))
    graph = dss_graph(model.eval(), {"model": "dss", "target": "music", "n_target_items": 30})
    assert graph.intents is None
    seq = torch.as_tensor(encode_batch([[3, 7, 1], [2]], 12))
    with torch.inference_mode():
        vec = graph.module(seq, torch.zeros_like(seq))
        phi, pi = model.intents(seq)
        ref = intent_scores(phi, pi, model.item_vectors(), "weighted")
        got = vec @ model.item_vectors().T
    assert vec.shape == (2, 16)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_merged_top_k_is_the_brute_force_top_k_of_the_best_intent_score() -> None:
    rng = np.random.default_rng(3)
    items = rng.standard_normal((200, 8)).astype(np.float32)
    queries = rng.standard_normal((50, 4, 8)).astype(np.float32)
    index = faiss.IndexFlatIP(8)
    index.add(items)
    best = (queries @ items.T).max(axis=1)  # (50, 200)
    want = np.argsort(-best, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(merged_top_k(index, queries, 10), want)


def _manifest_json(bundle: Path) -> dict[str, object]:
    raw: dict[str, object] = json.loads((bundle / "manifest.json").read_text())
    return raw


def test_a_manifest_written_before_intents_existed_still_loads(bundle: Path) -> None:
    raw = _manifest_json(bundle)
    for g in raw["graphs"]:  # type: ignore[attr-defined]
        g.pop("intents", None)
        g.pop("intent_score", None)
    m = Manifest.model_validate(raw)
    assert all(g.intents is None and g.intent_score is None for g in m.graphs)


def test_a_manifest_whose_intents_disagree_with_the_output_shape_is_refused(bundle: Path) -> None:
    raw = _manifest_json(bundle)
    graph = raw["graphs"][0]  # type: ignore[index]
    graph["intents"], graph["intent_score"] = 3, "max"  # the SASRec encoder's output is (batch, D)
    with pytest.raises(ValueError, match="declares 3 intents"):
        Manifest.model_validate(raw)


def test_a_cosine_item_centroid_dss_with_absent_intents_masked_exports_what_it_scores(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = DSSConfig(n_items=30, dim=16, layers=1, dropout=0.0, max_len=12, intents=3, lam=0.3, cosine=0.1,
                    aggregate="item", mask_absent=True)
    model = DSS(cfg).eval()
    graph = dss_graph(model, {"model": "dss", "target": "music", "n_target_items": 30})
    assert graph.intents == 3
    onnx_graph.export_onnx(graph, tmp_path / "dss.onnx")
    sess = onnx_graph.session(tmp_path / "dss.onnx")
    seq = encode_batch([[3, 7, 1, 9, 4], [2], [], list(range(1, 16))], 12)
    ort = sess.run(None, {"target_seq": seq, "source_seq": np.zeros_like(seq)})[0]
    with torch.inference_mode():
        items = graph.module.item_vectors().numpy()  # type: ignore[operator]
        want = model.score(torch.from_numpy(seq))[:, 1:].numpy()  # max over the present intents' cosines / T
    assert np.isfinite(ort).all()  # the empty history too (item centroids of padding: LayerNorm's bias)
    np.testing.assert_allclose(np.linalg.norm(ort[[0, 1, 3]], axis=-1), 1.0, atol=1e-5)  # unit intents
    np.testing.assert_allclose(np.linalg.norm(items[1:], axis=1), 10.0, atol=1e-4)  # unit items / T
    np.testing.assert_allclose((ort @ items[1:].T).max(axis=1), want, atol=1e-4)
