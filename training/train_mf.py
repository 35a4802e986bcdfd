"""The MF pretraining of the bridges now lives in training.fit_mf (its args in training.args); this module keeps
the old import path (``from training.train_mf import MFArgs``) working for the benches."""

from __future__ import annotations

from training.args import MFArgs
from training.fit_mf import cmf_rows, train_rating_mf, train_softmax_mf

__all__ = ["MFArgs", "cmf_rows", "train_rating_mf", "train_softmax_mf"]
