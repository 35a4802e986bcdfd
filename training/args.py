"""The args models several trainers share: one typed model per trainer, whose field defaults are the only ones.

Each is a pydantic dataclass: built in code (``SASRecArgs(epochs=5)``, ``dataclasses.replace``), it is validated
(a value out of range raises) and reads nothing from the environment; `cdrec train` turns the same fields, with the
same defaults and help, into its flags and ``CDREC_TRAIN__<FIELD>`` variables (training/config.py).

* ``SeqArgs``: every sequence trainer (SASRec, DSS, GURU, CDSRec, UniSRec); ``NextItemArgs``: SASRec and DSS;
* ``GURUArgs``: GURU, and CDSRec's (which extend it), and the inductive bridge's GUR encoder;
* ``MFArgs``: the MF pretraining of the bridges.
A trainer's own args model (``SASRecArgs``, ``CDSRecArgs``, ...) sits in its trainer module.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic_settings import CliSuppress

# The options several trainers share, ONE definition each (type, bounds, help); each trainer gives its own default
# (the only default of that trainer) through ``shared(...)``.
SHARED: dict[str, tuple[type, dict[str, Any]]] = {
    "epochs": (int, {"ge": 1, "description": "most training epochs"}),
    "patience": (int, {"ge": 1, "description": "epochs without a better validation NDCG@10 before stopping"}),
    "batch_size": (int, {"ge": 1, "description": "training rows per step"}),
    "lr": (float, {"ge": 0, "description": "learning rate (AdamW; the bridges: Adam)"}),
    "dim": (int, {"ge": 1, "description": "embedding and hidden size"}),
    "max_len": (int, {"ge": 1, "description": "longest history read, most recent kept (env: CDREC_DATA__MAX_LEN)"}),
    "seed": (int, {"description": "seed of the split, the weights, the batches, the negatives, `--data synthetic`"}),
}


def shared(name: str, **defaults: Any) -> type:
    """A pydantic dataclass base holding the ``SHARED`` fields named in ``defaults``, with these defaults: a
    trainer's args model subclasses it (``class SeqArgs(shared("SeqBase", epochs=30, ...))``) and adds its own."""
    unknown = set(defaults) - set(SHARED)
    if unknown:
        raise TypeError(f"not shared args fields: {sorted(unknown)} (training.args.SHARED has {sorted(SHARED)})")
    annotations = {f: SHARED[f][0] for f in defaults}
    body: dict[str, Any] = {f: Field(v, **SHARED[f][1]) for f, v in defaults.items()}
    return pydantic_dataclass(type(name, (), {"__annotations__": annotations, "__module__": __name__, **body}))


@pydantic_dataclass
class SeqArgs(shared("SeqBase", epochs=30, patience=3, batch_size=128, lr=3e-3, dim=64, max_len=50, seed=0)):
    """The options every sequence trainer shares (SASRec, GURU, CDSRec, UniSRec, DSS); each trainer's args model
    extends it (a subclass may redeclare a field to change its default; the field keeps its place). These
    defaults are the only ones: `cdrec train` reads its flags from these fields (training/config.py), and the
    recorded bench results were measured with them (batch 128, lr 3e-3)."""

    layers: int = Field(2, ge=1, description="encoder layers")
    heads: int = Field(2, ge=1, description="attention heads per layer")
    dropout: float = Field(0.2, ge=0, lt=1, description="dropout in the encoder")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    negatives: int = Field(2048, ge=0, description="shared sampled negatives per batch (0: full softmax)")


@pydantic_dataclass
class NextItemArgs(SeqArgs):
    """Next-item trainers on one domain's sequences with popularity-sampled negatives (SASRec, DSS)."""

    neg_power: float = Field(
        1.0, ge=0, description="negatives drawn by popularity ** neg_power (0: uniform), logQ-corrected"
    )


@pydantic_dataclass
class GURUArgs(SeqArgs):
    """GURU's options (`cdrec train guru`; CDSRec's extend them)."""

    encoder: str = Field("transformer", description="the shared sequence encoder: transformer | lstm")
    adversarial: bool = Field(True, description="train the domain discriminator (adversarial alignment)")
    adv_weight: float = Field(0.1, ge=0, description="weight of the adversarial loss")
    align_weight: float = Field(0.1, ge=0, description="weight of the alignment loss")
    cross: bool = Field(False, description="also decode target items from the source GUR (see guru_losses)")
    loss: str = Field("sampled", description="recommendation loss: sampled | bpr | ce")
    pop_mix: float = Field(1.0, ge=0, le=1, description="share of negatives drawn by popularity (the rest uniform)")


@pydantic_dataclass
class MFArgs:
    """Options of the MF pretraining (bridge ptupcdr's --mf.*)."""

    dim: int = Field(32, ge=1, description="MF embedding size")
    lr: float = Field(3e-3, gt=0, description="Adam learning rate")
    reg: float = Field(0.2, ge=0, description="L2 weight")
    epochs: int = Field(60, ge=1, description="most epochs")
    patience: int = Field(4, ge=1, description="epochs without a better held-out error before stopping")
    batch_size: int = Field(1024, ge=1, description="ratings per step")
    init_std: float = Field(0.01, gt=0, description="std of the initial embeddings")
    bias_damping: float = Field(
        5.0, ge=0, description="biases start at damped mean deviations (items first, then users)"
    )
    # `cdrec train bridge ptupcdr` sets it to its --seed: no flag of its own
    seed: CliSuppress[int] = Field(0, description="seed of the MF weights and batches")
