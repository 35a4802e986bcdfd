"""Each model declares its serving role (training/models/serving.py) and export builds its graphs from that alone:
a model that declares nothing, or declares itself not servable, gets an ExportError that says so."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
import torch
from torch import nn

import training.models
from export.towers import ExportError, bridge_graph, tower_graph
from training.models.bridge import PTUPCDR, InductiveBridge, InductiveBridgeConfig, PTUPCDRConfig
from training.models.sasrec import SASRec, SASRecConfig
from training.models.serving import Serving

META = {"target": "music", "source": "book", "model": "x"}


class Undeclared(nn.Module):
    """Looks like a user tower (two sequences in, item vectors) but declares no serving role."""

    def __init__(self) -> None:
        super().__init__()
        self.items = nn.Embedding(31, 8)

    def forward(self, target_seq: torch.Tensor, source_seq: torch.Tensor) -> torch.Tensor:
        return self.items(target_seq).mean(1)  # (B, T) -> (B, 8)

    def item_vectors(self) -> torch.Tensor:
        return self.items.weight


def test_a_model_without_a_serving_declaration_gets_a_clear_export_error() -> None:
    with pytest.raises(ExportError, match=r"Undeclared declares no serving role: .*serving\(\) method"):
        tower_graph(Undeclared(), META)
    with pytest.raises(ExportError, match="Undeclared declares no serving role"):
        bridge_graph(Undeclared(), META)


def test_a_model_that_takes_user_ids_says_why_it_cannot_be_served() -> None:
    model = PTUPCDR(PTUPCDRConfig(n_users=5, n_source_items=7, n_target_items=9, dim=4, hidden=4))
    with pytest.raises(ExportError, match=r"PTUPCDR takes user ids.*export the inductive bridge"):
        bridge_graph(model, META)


def test_a_graph_passed_in_the_other_role_names_the_flag_to_use() -> None:
    bridge = InductiveBridge(InductiveBridgeConfig(n_source_items=7, n_target_items=9, dim=4, target_dim=4))
    with pytest.raises(ExportError, match="serves as bridge, not user_tower: pass it as --bridge-checkpoint"):
        tower_graph(bridge, META)
    tower = SASRec(SASRecConfig(n_items=9, dim=8, layers=1, heads=1, max_len=5))
    with pytest.raises(ExportError, match="serves as user_tower, not bridge: pass it as --checkpoint"):
        bridge_graph(tower, META)


def test_the_declaration_builds_the_graph_with_no_guessing() -> None:
    bridge = InductiveBridge(InductiveBridgeConfig(n_source_items=7, n_target_items=9, dim=4, target_dim=4, max_len=6))
    g = bridge_graph(bridge, META)
    assert (g.kind, g.source_max_len, g.target_max_len, g.n_source_items, g.n_target_items) == ("bridge", 6, None, 7, 9)
    g = tower_graph(SASRec(SASRecConfig(n_items=9, dim=8, layers=1, heads=1, max_len=5)), META)
    assert (g.kind, g.target_max_len, g.n_source_items, g.n_target_items) == ("user_encoder", 5, None, 9)


def _checkpointable_models() -> list[type[nn.Module]]:
    """Every model class of training/models/ that a checkpoint rebuilds (built from a config) and that scores
    items (``item_vectors``): each must say how it serves, or that it cannot."""
    found = []
    for info in pkgutil.iter_modules(training.models.__path__):
        module = importlib.import_module(f"training.models.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if (cls.__module__ == module.__name__ and issubclass(cls, nn.Module) and hasattr(cls, "item_vectors")
                    and "cfg" in inspect.signature(cls.__init__).parameters):
                found.append(cls)
    return found


def test_every_model_declares_its_serving_role() -> None:
    models = _checkpointable_models()
    assert {m.__name__ for m in models} >= {"SASRec", "GURU", "CDSRec", "DSS", "UniSRec", "InductiveBridge", "MF"}
    undeclared = [m.__name__ for m in models if not callable(getattr(m, "serving", None))]
    assert not undeclared, f"declare serving() (training/models/serving.py) in {undeclared}"
    ret = {m.__name__: inspect.signature(m.serving).return_annotation for m in models}  # type: ignore[attr-defined]
    assert set(ret.values()) <= {"Serving", Serving}, ret
