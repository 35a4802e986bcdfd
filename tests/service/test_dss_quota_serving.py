"""Serving a DSS bundle whose merge is intent-aware (issue 18, ``intent_score="quota"``): real ONNX + real FAISS.

The export writes each intent as ``unit(phi_k) * pi_k`` (0 below the threshold) and the manifest records the
rule; the service draws the top k across the intents (service.adapters.faiss_index ``_drawn``). The reference is the
training side's own rule (training/models/dss.py ``intent_lists``) on brute-force numpy scores of every item
against the graph's outputs, with the seen filter.
"""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import onnxruntime as ort
import pytest
import torch

from core.manifest import current_bundle, read_manifest
from core.sequence import encode_sequence
from service.bundle import ServingBundle, load_bundle
from tests.service.test_dss_serving import _histories, recommend_all, served_index
from training.data.interactions import Interactions
from training.models.dss import confident, intent_lists

K_INTENTS, DIM, LAM = 3, 16, 0.1  # train_tiny_dss; DSSArgs' lam


@pytest.fixture(scope="module")
def quota_run(service_data: Interactions, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(artifacts root with bundle ``dssq-v1``, the checkpoint): a tiny DSS trained with intent_score "quota"."""
    from export.bundle import domains_from_data, export_bundle
    from export.towers import load_tower
    from tests.export.conftest import fast_options, train_tiny_dss

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("dss-quota-artifacts")
    ckpt = train_tiny_dss(service_data, tmp_path_factory.mktemp("dss-quota-runs") / "dss.music.pt",
                          intent_score="quota")
    export_bundle([load_tower(ckpt)], out, domains_from_data(service_data), fast_options(version="dssq-v1"),
                  service_data.name)
    return out, ckpt


class QuotaReference:
    """onnxruntime on the graph file, every item vector from the index file, the training side's merge rule."""

    def __init__(self, bundle: Path) -> None:
        m = read_manifest(bundle)
        graph = m.user_encoder("music")
        assert graph is not None and graph.intent_score == "quota" and graph.intents == K_INTENTS
        self.max_len = next(i.max_len for i in graph.inputs if i.name == "target_seq") or 0
        self.session = ort.InferenceSession(str(bundle / graph.file), providers=["CPUExecutionProvider"])
        index = faiss.read_index(str(bundle / m.indexes[graph.index].file))
        self.items = index.reconstruct_n(0, index.ntotal)  # (N, D)
        self.ids: list[str] = json.loads((bundle / m.domains["music"].ids_file).read_text())

    def intents(self, history: list[str]) -> np.ndarray:
        seq = encode_sequence([self.ids.index(i) + 1 for i in history], self.max_len)[None, :]
        out: np.ndarray = self.session.run(None, {"target_seq": seq, "source_seq": np.zeros_like(seq)})[0][0]
        return out  # (K, D)

    def top_k(self, history: list[str], k: int) -> list[str]:
        q = self.intents(history)
        per_intent = torch.as_tensor(q @ self.items.T)[None]  # (1, K, N)
        per_intent[0, :, [self.ids.index(i) for i in history]] = -torch.inf  # the seen filter
        presence = torch.as_tensor(np.linalg.norm(q, axis=1))[None]  # (1, K)
        rows = intent_lists(per_intent, presence, "quota", LAM, k)[0].tolist()
        return [self.ids[r] for r in rows]


def test_the_export_writes_unit_intents_scaled_by_presence_and_zero_below_the_threshold(
    quota_run: tuple[Path, Path],
) -> None:
    from training import checkpoint
    from training.models.dss import DSS

    artifacts, ckpt = quota_run
    model, _ = checkpoint.load(ckpt)
    assert isinstance(model, DSS) and model.cfg.intent_score == "quota"  # the checkpoint keeps the rule
    ref = QuotaReference(current_bundle(artifacts))
    for hist in _histories(ref.ids, 10, seed=5):
        q = ref.intents(hist)
        seq = torch.as_tensor(encode_sequence([ref.ids.index(i) + 1 for i in hist], ref.max_len)[None, :])
        with torch.no_grad():
            phi, pi = model.eval().last_intents(seq)
        want = (pi * confident(pi, LAM))[0].numpy()
        np.testing.assert_allclose(np.linalg.norm(q, axis=1), want, atol=1e-4)  # a row's norm is its presence
        unit = torch.nn.functional.normalize(phi[0], dim=-1).numpy()
        present = want > 0
        np.testing.assert_allclose(q[present] / want[present, None], unit[present], atol=1e-3)


def test_quota_answers_equal_the_training_rule_on_brute_force_scores_and_never_repeat_or_show_seen_items(
    quota_run: tuple[Path, Path],
) -> None:
    bundle: ServingBundle = load_bundle(current_bundle(quota_run[0]))
    assert bundle.encoders["music"].intent_score == "quota"
    ref = QuotaReference(current_bundle(quota_run[0]))
    histories = _histories(bundle.catalogues["music"].ids, 30, seed=6)
    for hist, answer in zip(histories, recommend_all(bundle, histories)[0], strict=True):
        assert (answer.strategy, answer.degraded) == ("dss", False)
        ids = [i for i, _ in answer.items]
        assert len(ids) == len(set(ids)) == 10 and not set(ids) & set(hist)
        assert ids == ref.top_k(hist, 10)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
@pytest.mark.parametrize("merge", ["quota", "round-robin", "head3"])
def test_drawn_search_is_the_training_rule_outside_the_exclusions(kind: str, merge: str, tmp_path: Path) -> None:
    n, d = 300, 16
    rng = np.random.default_rng(3)
    items = rng.standard_normal((n, d)).astype(np.float32)
    served = served_index(kind, items, tmp_path)
    for _ in range(20):
        pi = torch.softmax(torch.as_tensor(rng.standard_normal((1, 4)) * 2), dim=1).float()
        keep = (pi * confident(pi, LAM)).numpy()[0]
        unit = rng.standard_normal((4, d)).astype(np.float32)
        queries = unit / np.linalg.norm(unit, axis=1, keepdims=True) * keep[:, None]  # as the export writes them
        exclude = set(rng.choice(n, size=int(rng.integers(0, n - 50)), replace=False).tolist())
        rows, scores = served.intent_view(merge).search(queries, 10, exclude)
        assert len(rows) == len(set(rows)) == 10 and not set(rows) & exclude
        basis = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)  # unit (0 if absent)
        got = np.asarray(scores)[:, None]
        # (10, K): each score is a present intent's own (head3's head: its unit intent's)
        drawn_by = np.isclose(items[rows] @ queries.T, got, atol=1e-4)
        drawn_by |= np.isclose(items[rows] @ basis.T, got, atol=1e-4)
        assert (drawn_by & (keep > 0)[None]).any(axis=1).all()
        if merge == "head3" and kind == "flat":  # the head: the 3 best by max over the present unit intents
            best = np.where(keep[None] > 0, items @ basis.T, -np.inf).max(axis=1)
            best[list(exclude)] = -np.inf
            assert sorted(rows[:3]) == sorted(np.argsort(-best)[:3].tolist())
        if kind == "flat":  # exact: the training rule on brute-force scores (head_basis: unit intents)
            per_intent = torch.as_tensor(basis @ items.T)[None]
            per_intent[0, :, list(exclude)] = -torch.inf
            want = intent_lists(per_intent, torch.as_tensor(np.linalg.norm(queries, axis=1))[None], merge, LAM, 10)
            assert rows == want[0].tolist()
    one = served.intent_view("quota").search(items[0], 5, set())  # a one-vector query: the plain search
    assert one == served.search(items[0], 5, set())
    with pytest.raises(ValueError, match="unknown intent merge"):
        served.search_intents(np.ones((2, d), np.float32), 5, set(), "mean")
