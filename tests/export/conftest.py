"""Shared fixtures: a small synthetic dataset on disk, a SASRec trained on it, and one published bundle.

Everything is session-scoped and tiny (dims 16, a few hundred users) so the export tests stay fast on 2 cores.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from export.bundle import DomainItems, ExportOptions, domains_from_data, export_bundle
from export.parity import ParityOptions
from export.towers import Graph, MeanPoolBridge, bridge_graph, load_tower
from training.data.interactions import Interactions
from training.data.loaders import load
from training.data.splits import leave_one_out
from training.data.synthetic import generate
from training.train_sasrec import SASRecArgs, train_sasrec

MAX_LEN = 20


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def data_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "tiny.csv"
    generate(n_users=300, n_items=(60, 40), n_topics=6, seed=1).to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def data(data_path: Path) -> Interactions:
    return load(data_path)


@pytest.fixture(scope="session")
def domains(data: Interactions) -> dict[str, DomainItems]:
    return domains_from_data(data)


@pytest.fixture(scope="session")
def checkpoint_path(data: Interactions, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SASRec on the music domain, two epochs, dims 16: small but trained."""
    out = tmp_path_factory.mktemp("runs") / "sasrec.music.pt"
    args = SASRecArgs(epochs=2, patience=2, batch_size=64, dim=16, layers=1, heads=2, max_len=MAX_LEN)
    train_sasrec(leave_one_out(data, "music"), args, out)
    return out


def make_bridge(data: Interactions, tower: Graph, seed: int = 0) -> Graph:
    """A tiny book -> music bridge into the tower's item space (untrained: parity does not need training)."""
    torch.manual_seed(seed)
    module = MeanPoolBridge(data.n_items("book"), tower.module.item_vectors(), dim=8)  # type: ignore[operator]
    meta = {
        "source": "book",
        "target": "music",
        "n_source_items": data.n_items("book"),
        "n_target_items": data.n_items("music"),
        "max_len": MAX_LEN,
        "model": "mean-pool-bridge",
    }
    return bridge_graph(module.eval(), meta)


def fast_options(**kwargs: object) -> ExportOptions:
    parity = ParityOptions(random_sequences=128, real_sequences=128, batch1_sequences=16)
    return ExportOptions(parity=parity, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def artifacts(
    checkpoint_path: Path,
    data: Interactions,
    domains: dict[str, DomainItems],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """An artifacts root holding one published bundle: the SASRec user encoder and a bridge, book -> music."""
    out = tmp_path_factory.mktemp("artifacts")
    tower = load_tower(checkpoint_path)
    export_bundle([tower, make_bridge(data, tower)], out, domains, fast_options(version="v1"), data.name)
    return out


@pytest.fixture(scope="session")
def bundle(artifacts: Path) -> Path:
    return artifacts / "v1"


def train_tiny_dss(
    data: Interactions, out: Path, intents: int = 3, score: str = "max", intent_score: str = "max"
) -> Path:
    """DSS on the music domain, one epoch, dims 16, ``intents`` intents: small but trained (export/dss.py)."""
    from training.train_dss import DSSArgs, train_dss

    dims = {"dim": 16, "layers": 1, "intents": intents, "max_len": MAX_LEN}
    args = DSSArgs(epochs=1, patience=1, batch_size=64, negatives=0, score=score, intent_score=intent_score, **dims)
    train_dss(leave_one_out(data, "music"), args, out)
    return out


@pytest.fixture(scope="session")
def dss_checkpoint_path(data: Interactions, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_dss(data, tmp_path_factory.mktemp("runs-dss") / "dss.music.pt")
