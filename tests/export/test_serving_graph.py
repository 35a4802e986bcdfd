"""The graph the service runs (issue 16, onnxruntime's cost), on a real CDSRec bundle:

* cutting leading padding: export measures whether a graph's output depends on the all-padding columns before
  the longest real row, the manifest says so, and the service then feeds the cut inputs (the CDSRec tower
  answers the same at the cut length; a graph that reads its padding is never cut);
* onnxruntime's optimized graph saved at export: listed with its hash, opened by the service with optimization
  off, answering what the raw graph answers at ORT_ENABLE_ALL; a bundle from before it opens the raw graph;
* the int8 variant: written and served only when its gate (validation NDCG@10 and top-10 overlap with fp32)
  passes; the manifest records the figures either way and refuses int8 serving without a passed gate."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from core.manifest import BundleError, read_manifest
from core.sequence import encode_batch, trim_padding
from export.bundle import DomainItems, export_bundle
from export.parity import Inputs, trim_difference
from export.quantize import GateOptions, validation
from export.towers import tower_graph
from service.adapters.onnx_encoder import OnnxEncoder
from service.bundle import load_bundle
from tests.export.conftest import MAX_LEN, fast_options, make_bridge
from training.data.interactions import Interactions
from training.models.cdsrec import CDSRec, CDSRecConfig


def test_trim_padding_drops_only_columns_padded_in_every_row() -> None:
    x = encode_batch([[3, 4], [5, 6, 7, 8, 9, 1, 2, 3, 4, 5]], 20)  # longest row: 10 -> 16 columns (step 8)
    cut = trim_padding(x)
    assert cut.shape == (2, 16)
    np.testing.assert_array_equal(cut, x[:, 4:])
    assert trim_padding(np.zeros((3, 20), np.int64)).shape == (3, 8)  # all padding: the shortest bucket
    full = encode_batch([list(range(1, 20))], 20)  # 19 items: 24 > 20 columns, so nothing is cut
    assert trim_padding(full) is full


@pytest.fixture(scope="module")
def cdsrec_bundle(
    data: Interactions, domains: dict[str, DomainItems], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    torch.manual_seed(0)
    model = CDSRec(CDSRecConfig(n_target=data.n_items("music"), n_source=data.n_items("book"), dim=16,
                                max_len=MAX_LEN, short_layers=2)).eval()
    with torch.no_grad():
        for p in model.parameters():  # away from the zero-initialised fusion output, so every path counts
            p.normal_(0, 0.2)
    meta = {"target": "music", "source": "book", "n_target_items": data.n_items("music"), "model": "cdsrec"}
    tower = tower_graph(model, meta)
    out = tmp_path_factory.mktemp("trim")
    return export_bundle([tower, make_bridge(data, tower)], out, domains, fast_options(version="t1"), data.name)


def test_export_marks_the_cdsrec_tower_and_the_bridge_as_cuttable(cdsrec_bundle: Path) -> None:
    graphs = json.loads((cdsrec_bundle / "manifest.json").read_text())["graphs"]
    for g in graphs:
        assert g["trims_padding"] is True, g["name"]
        assert g["trim_max_abs_diff"] <= g["parity"]["tolerance"]


def test_the_service_cuts_padding_and_answers_what_the_full_length_graph_answers(
    cdsrec_bundle: Path, domains: dict[str, DomainItems]
) -> None:
    served = load_bundle(cdsrec_bundle)
    graph = served.encoders["music"]
    assert isinstance(graph.encoder, OnnxEncoder) and graph.encoder.trim
    spec = json.loads((cdsrec_bundle / "manifest.json").read_text())["graphs"][0]
    full = OnnxEncoder(cdsrec_bundle / spec["file"], spec["outputs"][0]["name"])  # no cutting
    users = sorted(domains["music"].histories)[:64]
    ids = {d: domains[d].ids for d in ("music", "book")}
    seqs = [
        {d: [ids[d][i - 1] for i in domains[d].histories.get(u, np.zeros(0, np.int64))] for d in ids} for u in users
    ]
    feeds = [graph.feeds(s, served.catalogues) for s in seqs]
    assert any(trim_padding(f["target_seq"]).shape[1] < MAX_LEN for f in feeds)  # some really are cut
    for f in feeds:  # one user at a time, as an idle service runs them
        np.testing.assert_allclose(graph.encoder(f), full(f), atol=1e-5)
    batch = {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}  # and as one micro-batch
    np.testing.assert_allclose(graph.encoder(batch), full(batch), atol=1e-5)


def test_a_graph_whose_output_reads_its_padding_is_not_cut(tmp_path: Path) -> None:
    # output = the mean of the ids over every column, padding included: cutting padding changes it
    seq = helper.make_tensor_value_info("source_seq", TensorProto.INT64, ["batch", "source_len"])
    out = helper.make_tensor_value_info("user_vector", TensorProto.FLOAT, ["batch", 1])
    nodes = [
        helper.make_node("Cast", ["source_seq"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f"], ["user_vector"], axes=[1], keepdims=1),
    ]
    graph = helper.make_graph(nodes, "mean", [seq], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "mean.onnx"))
    sess = ort.InferenceSession(str(tmp_path / "mean.onnx"), providers=["CPUExecutionProvider"])
    source = encode_batch([[1, 2, 3], [4], []], 20)
    diff = trim_difference(SimpleNamespace(kind="bridge"), sess, Inputs(None, source, 3, 0))  # type: ignore[arg-type]
    assert diff > 1e-2  # export records trims_padding False for it (above any parity tolerance)


def test_a_bundle_from_before_the_field_loads_and_feeds_full_length(cdsrec_bundle: Path, tmp_path: Path) -> None:
    import shutil

    old = tmp_path / "t1"
    shutil.copytree(cdsrec_bundle, old)
    manifest = json.loads((old / "manifest.json").read_text())
    for g in manifest["graphs"]:
        del g["trims_padding"], g["trim_max_abs_diff"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    served = load_bundle(old)
    encoder = served.encoders["music"].encoder
    assert isinstance(encoder, OnnxEncoder) and not encoder.trim


def test_export_saves_the_optimized_graph_and_the_service_opens_it_without_optimizing(cdsrec_bundle: Path) -> None:
    manifest = json.loads((cdsrec_bundle / "manifest.json").read_text())
    spec = manifest["graphs"][0]
    assert spec["optimized_file"] == "user_encoder.music.opt.onnx"
    assert spec["optimized_level"] == "ORT_ENABLE_EXTENDED"  # portable: no layout transforms of this CPU
    assert manifest["files"][spec["optimized_file"]]["sha256"]  # hashed like every other file
    fused = {n.op_type for n in onnx.load(str(cdsrec_bundle / spec["optimized_file"])).graph.node}
    assert "LayerNormalization" in fused or "FusedMatMul" in fused  # really onnxruntime's optimized graph
    served = load_bundle(cdsrec_bundle)
    encoder = served.encoders["music"].encoder
    assert isinstance(encoder, OnnxEncoder) and encoder.path.name == spec["optimized_file"]
    assert encoder.optimization_level == "ORT_DISABLE_ALL"
    raw = OnnxEncoder(cdsrec_bundle / spec["file"], spec["outputs"][0]["name"])  # ORT_ENABLE_ALL, at start
    feeds = {"target_seq": encode_batch([[1, 2, 3], [4, 5]], MAX_LEN), "source_seq": encode_batch([[2], []], MAX_LEN)}
    np.testing.assert_allclose(encoder(feeds), raw(feeds), atol=1e-5)


def test_a_bundle_from_before_the_optimized_graph_opens_the_raw_one(cdsrec_bundle: Path, tmp_path: Path) -> None:
    import shutil

    old = tmp_path / "t1"
    shutil.copytree(cdsrec_bundle, old)
    manifest = json.loads((old / "manifest.json").read_text())
    for g in manifest["graphs"]:
        (old / g.pop("optimized_file")).unlink()
        del manifest["files"][f"{g['name']}.opt.onnx"], g["optimized_level"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    encoder = load_bundle(old).encoders["music"].encoder
    assert isinstance(encoder, OnnxEncoder) and encoder.path.name == "user_encoder.music.onnx"
    assert encoder.optimization_level == "ORT_ENABLE_ALL"


def _export_quantized(data: Interactions, domains: dict[str, DomainItems], out: Path, gate: GateOptions) -> Path:
    torch.manual_seed(0)
    model = CDSRec(CDSRecConfig(n_target=data.n_items("music"), n_source=data.n_items("book"), dim=16,
                                max_len=MAX_LEN, short_layers=2)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    meta = {"target": "music", "source": "book", "n_target_items": data.n_items("music"), "model": "cdsrec"}
    opts = fast_options(version="q1", quantize={"music": validation(data, "music")}, gate=gate)
    return export_bundle([tower_graph(model, meta)], out, domains, opts, data.name)


def test_an_int8_graph_that_passes_its_gate_is_written_and_served(
    data: Interactions, domains: dict[str, DomainItems], tmp_path: Path
) -> None:
    bundle = _export_quantized(data, domains, tmp_path, GateOptions(max_drop=1.0, min_overlap=0.0))
    spec = read_manifest(bundle).graphs[0]
    q = spec.quantized
    assert q is not None and q.passed and q.file == "user_encoder.music.int8.onnx" and spec.serving_variant == "int8"
    assert q.split == "valid" and q.users > 0 and 0 <= q.ndcg10_quantized <= 1 and 0 < q.ndcg10_fp32 <= 1
    ops = {n.op_type for n in onnx.load(str(bundle / q.file)).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}  # really int8 matmuls
    encoder = load_bundle(bundle).encoders["music"].encoder
    assert isinstance(encoder, OnnxEncoder) and encoder.path.name == q.file
    fp32 = OnnxEncoder(bundle / spec.file, spec.outputs[0].name)
    feeds = {"target_seq": encode_batch([[1, 2, 3], [4, 5]], MAX_LEN), "source_seq": encode_batch([[2], []], MAX_LEN)}
    got, want = encoder(feeds), fp32(feeds)
    assert not np.allclose(got, want, atol=1e-6)  # the int8 graph, not the fp32 one, answered
    np.testing.assert_allclose(got, want, atol=max(0.05, 2 * q.max_abs_diff_vs_fp32))


def test_an_int8_graph_that_fails_its_gate_is_left_out_and_fp32_serves(
    data: Interactions, domains: dict[str, DomainItems], tmp_path: Path
) -> None:
    bundle = _export_quantized(data, domains, tmp_path, GateOptions(min_overlap=1.01))  # no graph can pass
    spec = read_manifest(bundle).graphs[0]
    assert spec.quantized is not None and not spec.quantized.passed and spec.quantized.file is None
    assert spec.serving_variant == "fp32" and not (bundle / "user_encoder.music.int8.onnx").exists()
    encoder = load_bundle(bundle).encoders["music"].encoder
    assert isinstance(encoder, OnnxEncoder) and encoder.path.name == spec.optimized_file


def test_a_manifest_that_serves_int8_without_a_passed_gate_is_refused(cdsrec_bundle: Path, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "t1"
    shutil.copytree(cdsrec_bundle, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["graphs"][0]["serving_variant"] = "int8"
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="serves int8 but records no int8 graph that passed its gate"):
        load_bundle(bad)


def test_export_cli_refuses_quantize_without_data(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from export.cli import main

    assert main(["--checkpoint", str(tmp_path / "x.pt"), "--quantize", "int8"]) == 2
    assert "--quantize needs --data" in capsys.readouterr().err


def test_bench_serves_a_levers_off_copy_at_full_length_from_the_raw_graph(cdsrec_bundle: Path, tmp_path: Path) -> None:
    import os
    import shutil

    from bench.serve import levers_off

    root = tmp_path / "hnsw"
    root.mkdir()
    shutil.copytree(cdsrec_bundle, root / "t1")
    os.symlink("t1", root / "current")
    off = levers_off(root)
    assert (root / "current").resolve() == (root / "t1").resolve()  # the served bundle is left as it was
    encoder = load_bundle(off / "current").encoders["music"].encoder
    assert isinstance(encoder, OnnxEncoder) and not encoder.trim and encoder.path.name == "user_encoder.music.onnx"
    assert encoder.optimization_level == "ORT_ENABLE_ALL"


def test_an_unreadable_optimized_graph_is_refused_by_verify_and_by_the_service(
    cdsrec_bundle: Path, tmp_path: Path
) -> None:
    import shutil

    from core.manifest import sha256_file
    from export.verify import verify

    bad = tmp_path / "t1"
    shutil.copytree(cdsrec_bundle, bad)
    opt = bad / "user_encoder.music.opt.onnx"
    opt.write_bytes(b"not an onnx graph")
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["files"][opt.name] = {"bytes": opt.stat().st_size, "sha256": sha256_file(opt)}  # hashes agree
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"user_encoder\.music\.opt\.onnx: onnxruntime cannot load it"):
        verify(bad)
    with pytest.raises(BundleError, match=r"user_encoder\.music\.opt\.onnx: onnxruntime cannot load it"):
        load_bundle(bad)
