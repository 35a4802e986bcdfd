"""UniSRec training: pretrain -> fine-tune on synthetic data with planted text, the item cold-start split, and
the real default sentence model (text vector shape, normalisation, cache)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from training import checkpoint
from training.data import text as text_mod
from training.data.splits import leave_one_out
from training.data.synthetic import synthetic_interactions
from training.evaluation import evaluate_ranking
from training.models.unisrec import UniSRec
from training.train_unisrec import UniSRecArgs, hold_out_items, train_unisrec


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _planted_text(n_items: tuple[int, int], n_topics: int, seed: int, dim: int = 16) -> dict[str, np.ndarray]:
    """Text vectors that name each item's topic (plus noise), replaying the generator's topic chains: the same
    seed draws the same item permutations first (training/data/synthetic.py)."""
    rng = np.random.default_rng(seed)
    topic_of = []
    for n in n_items:
        perm = rng.permutation(np.arange(1, n + 1))
        t = np.zeros(n + 1, np.int64)
        for k, chain in enumerate(np.array_split(perm, n_topics)):
            t[chain] = k
        topic_of.append(t)
    noise = np.random.default_rng(99)
    centres = noise.normal(size=(n_topics, dim))
    out = {}
    for d, t in zip(("book", "music"), topic_of, strict=True):
        v = centres[t] + 0.5 * noise.normal(size=(len(t), dim))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        v[0] = 0
        out[d] = v.astype(np.float32)
    return out


def test_pretrain_then_finetune_writes_a_checkpoint_that_rebuilds_itself(tmp_path: Path) -> None:
    data = synthetic_interactions(seed=3, n_users=400)
    split = leave_one_out(data, "music")
    text = _planted_text((400, 300), 20, seed=3)
    args = UniSRecArgs(pretrain_epochs=1, epochs=2, dim=16, variant="transductive", text_model="planted")
    model, result, scorer, pre = train_unisrec(split, args, tmp_path / "u.pt", text=text)
    assert pre is not None and result.checkpoint is not None
    rebuilt, meta = checkpoint.load(result.checkpoint)
    assert isinstance(rebuilt, UniSRec) and rebuilt.cfg.transductive and rebuilt.cfg.domain == "music"
    assert meta["text_model"] == "planted" and meta["text_dim"] == 16 and meta["pretrained_on"] == "book"
    torch.testing.assert_close(rebuilt.item_vectors(), model.item_vectors())
    assert np.isfinite(evaluate_ranking(scorer, split.test)["NDCG@10"])


def test_held_out_items_never_reach_training_and_are_retrieved_from_text() -> None:
    data = synthetic_interactions(seed=3, n_users=800)
    split = leave_one_out(data, "music")
    cold = hold_out_items(split, 0.2, seed=0)
    train = cold.split.train
    assert not np.isin(train.loc[train["domain"] == "music", "item"], cold.held_out).any()
    assert np.isin(cold.test_slice.targets, cold.held_out).all() and len(cold.test_slice) > 0
    assert not np.isin(cold.split.valid.targets, cold.held_out).any()
    text = _planted_text((400, 300), 20, seed=3)
    args = UniSRecArgs(pretrain_epochs=2, epochs=4, patience=4, dim=16, text_model="planted", lr=3e-3)
    _, _, scorer, _ = train_unisrec(cold.split, args, text=text)
    hit = evaluate_ranking(scorer, cold.test_slice)["HR@10"]
    # chance is 10 / 300; the text names the topic, so never-seen items are still found
    assert hit > 3 * 10 / 300, hit


def test_default_sentence_model_gives_cached_unit_vectors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert (text_mod.sentence_model_dir() / "modules.json").exists()
    texts = ["red acrylic paint set", "blue acrylic paint", "stapler with staples"]
    vecs = text_mod.encode_texts(texts, cache_dir=tmp_path, progress=False)
    assert vecs.shape == (3, 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2]  # paints are closer to paints than to staplers
    assert len(list(tmp_path.glob("*.npy"))) == 1

    def no_model(name: str | None = None) -> None:
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(text_mod, "load_sentence_model", no_model)
    np.testing.assert_array_equal(text_mod.encode_texts(texts, cache_dir=tmp_path, progress=False), vecs)
