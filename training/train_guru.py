"""`cdrec train guru --data PATH --target-domain DOMAIN`: GURU, shared encoder + adversarial domain alignment.

The loop itself is training.fit_guru (CDSRec and the inductive bridge reuse it, and no trainer imports another);
this module names what `cdrec train guru` and the benches use.
"""

from __future__ import annotations

from training.args import GURUArgs
from training.fit_guru import train_guru

__all__ = ["GURUArgs", "train_guru"]
