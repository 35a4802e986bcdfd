"""Resolve a `--data` argument: the word `synthetic` (the planted cross-domain generator) or a path."""

from __future__ import annotations

from training.data.interactions import Interactions


def load_data(spec: str, seed: int = 0) -> Interactions:
    if spec == "synthetic":
        from training.data.synthetic import synthetic_interactions

        return synthetic_interactions(seed=seed)
    from training.data.loaders import load

    return load(spec)
