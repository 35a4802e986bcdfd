"""Export writes the DESIGN §4 bundle, proves parity before publishing, and refuses what it cannot prove."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
from torch import nn

from core.bundle_checks import verify_bundle
from core.manifest import current_bundle, read_manifest
from export.bundle import DomainItems, export_bundle
from export.index import IndexOptions
from export.towers import ExportError, Graph, load_tower, tower_graph
from tests.export.conftest import fast_options, make_bridge
from training import checkpoint
from training.data.interactions import Interactions


def test_export_writes_every_file_of_the_contract_and_points_current_at_it(artifacts: Path, bundle: Path) -> None:
    names = {p.name for p in bundle.iterdir()}
    assert names == {
        "manifest.json",
        "user_encoder.music.onnx",
        "bridge.book__music.onnx",
        "user_encoder.music.opt.onnx",  # onnxruntime's optimized graphs, what the service opens
        "bridge.book__music.opt.onnx",
        "items.music.faiss",
        "items.music.ids.json",
        "items.book.ids.json",
        "popular.music.json",
    }
    assert current_bundle(artifacts) == bundle.resolve()
    assert not [p for p in artifacts.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_manifest_records_passing_parity_for_every_graph(bundle: Path) -> None:
    m = read_manifest(bundle)
    assert {g.name for g in m.graphs} == {"user_encoder.music", "bridge.book__music"}
    for g in m.graphs:
        p = g.parity
        assert p.passed and p.all_padding_finite
        assert p.max_abs_diff <= 1e-4 and p.top10_overlap >= 0.99
        assert p.random_sequences + p.real_sequences >= 200 and p.real_sequences > 0
        assert p.batch_sizes == [1, 64]
        assert [1] in [c[:1] for c in p.lengths] and [20] in [c[:1] for c in p.lengths]
        assert g.opset >= 17


def test_manifest_describes_graphs_indexes_and_libraries(bundle: Path) -> None:
    m = read_manifest(bundle)
    enc, bridge = m.user_encoder("music"), m.bridge("book", "music")
    assert enc is not None and bridge is not None
    assert [(t.name, t.shape, t.domain) for t in enc.inputs] == [
        ("target_seq", ["batch", "target_len"], "music"),
        ("source_seq", ["batch", "source_len"], "book"),
    ]
    assert [(t.name, t.shape) for t in bridge.inputs] == [("source_seq", ["batch", "source_len"])]
    assert enc.outputs[0].name == "user_vector" and enc.outputs[0].shape == ["batch", 16]
    assert enc.index == bridge.index == "music"  # the bridge maps into the tower's item space: one index
    idx = m.indexes["music"]
    assert (idx.type, idx.metric, idx.dim, idx.count) == (
        "flat",
        "inner_product",
        16,
        m.domains["music"].n_items,
    )
    assert m.max_len == 20 and m.padding == "left" and m.pad_id == 0
    assert {"torch", "onnxruntime", "faiss", "onnx"} <= set(m.libraries)


def test_index_rows_are_the_item_vectors_and_ids_rows_are_model_ids_plus_one(
    bundle: Path, checkpoint_path: Path, data: Interactions
) -> None:
    index = faiss.read_index(str(bundle / "items.music.faiss"))
    model, _ = checkpoint.load(checkpoint_path)
    np.testing.assert_allclose(index.reconstruct_n(0, index.ntotal), model.item_vectors()[1:].detach().numpy())
    ids = json.loads((bundle / "items.music.ids.json").read_text())
    assert ids == data.item_ids["music"][1:]
    popular = json.loads((bundle / "popular.music.json").read_text())
    counts = popular["counts"]
    assert counts == sorted(counts, reverse=True) and set(popular["item_ids"]) <= set(ids)


def test_published_bundle_passes_verification(bundle: Path) -> None:
    assert verify_bundle(bundle).version == "v1"


class _BranchOnData(nn.Module):
    """A tower with a Python branch on data values: tracing freezes one branch, so ORT disagrees."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, target_seq: torch.Tensor, source_seq: torch.Tensor) -> torch.Tensor:
        out = self.inner(target_seq, source_seq)
        return out * 2 if bool((target_seq > 0).sum() > 40) else out

    def item_vectors(self) -> torch.Tensor:
        return self.inner.item_vectors()


def test_a_graph_failing_parity_is_not_published(
    checkpoint_path: Path, domains: dict[str, DomainItems], data: Interactions, tmp_path: Path
) -> None:
    tower = load_tower(checkpoint_path)
    tower.module = _BranchOnData(tower.module)
    with pytest.raises(ExportError, match=r"(?s)parity failed.*user_encoder.music: max \|torch - onnxruntime\|"):
        export_bundle([tower], tmp_path, domains, fast_options(version="bad"), data.name)
    assert list(tmp_path.iterdir()) == []  # no version, no `current`, no staging directory


def test_hnsw_index_records_recall_measured_against_exact_search(
    checkpoint_path: Path, domains: dict[str, DomainItems], data: Interactions, tmp_path: Path
) -> None:
    opts = fast_options(version="ann", index=IndexOptions(kind="auto", ann_above=10, min_recall=0.9))
    bundle = export_bundle([load_tower(checkpoint_path)], tmp_path, domains, opts, data.name)
    idx = read_manifest(bundle).indexes["music"]
    assert idx.type == "hnsw" and idx.recall_at_10 >= 0.9 and idx.recall_queries > 0
    assert faiss.read_index(str(bundle / idx.file)).hnsw.efSearch == idx.params["efSearch"]


def test_a_checkpoint_trained_on_other_data_is_refused(
    checkpoint_path: Path, domains: dict[str, DomainItems], tmp_path: Path
) -> None:
    smaller = dict(domains)
    smaller["music"] = DomainItems(domains["music"].ids[:-1])
    with pytest.raises(ExportError, match="the model has 40 music items but the data has 39"):
        export_bundle([load_tower(checkpoint_path)], tmp_path, smaller, fast_options())
    with pytest.raises(ExportError, match="trained on 'tiny' but the data is 'other'"):
        export_bundle([load_tower(checkpoint_path)], tmp_path, domains, fast_options(), "other")


def test_merged_sasrec_cannot_be_a_user_tower(checkpoint_path: Path) -> None:
    model, meta = checkpoint.load(checkpoint_path)
    with pytest.raises(ExportError, match="sasrec-merged"):
        tower_graph(model, {**meta, "merged": True})


def test_a_bridge_in_a_different_item_space_gets_its_own_index(
    checkpoint_path: Path, domains: dict[str, DomainItems], data: Interactions, tmp_path: Path
) -> None:
    tower = load_tower(checkpoint_path)
    bridge: Graph = make_bridge(data, tower)
    bridge.module.target_items = torch.randn(41, 16)  # e.g. an MF item space, not the tower's
    bundle = export_bundle([tower, bridge], tmp_path, domains, fast_options(version="two"), data.name)
    m = read_manifest(bundle)
    assert m.user_encoder("music").index == "music"  # type: ignore[union-attr]
    assert m.bridge("book", "music").index == "music.bridge"  # type: ignore[union-attr]
    assert m.indexes["music.bridge"].ids_file == "items.music.ids.json"


def test_a_domain_given_on_the_command_line_must_agree_with_the_checkpoint(checkpoint_path: Path) -> None:
    assert load_tower(checkpoint_path, target="music").target_domain == "music"
    with pytest.raises(ExportError, match="the checkpoint's target domain is 'music', not 'book'"):
        load_tower(checkpoint_path, target="book")
