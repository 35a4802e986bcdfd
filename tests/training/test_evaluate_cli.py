"""`cdrec evaluate` reproduces, from the checkpoint alone, the test metrics each trainer reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from training import checkpoint, evaluate_cli
from training import cli as train_cli
from training.data.splits import leave_one_out
from training.data.synthetic import synthetic_interactions
from training.evaluation import evaluate_ranking
from training.train_unisrec import UniSRecArgs, train_unisrec


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _table(text: str) -> dict[str, dict[str, float]]:
    head, *rows = text.strip().splitlines()
    metrics = head.split()[1:]
    return {r.split()[0]: dict(zip(metrics, map(float, r.split()[1:]), strict=True)) for r in rows}


@pytest.mark.parametrize(("model", "extra"), [("sasrec", []), ("cdsrec", []), ("guru", [])])
def test_evaluate_reads_back_what_the_trainer_reported(model: str, extra: list[str], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert train_cli.main([model, "--data", "synthetic", "--target-domain", "music", "--epochs", "1",
                           "--out", str(tmp_path), *extra]) == 0
    report = json.loads(capsys.readouterr().out)
    assert evaluate_cli.main(["--checkpoint", report["checkpoint"], "--data", "synthetic"]) == 0
    row = _table(capsys.readouterr().out)[report["model"]]
    for metric, value in row.items():
        assert value == pytest.approx(report["test"][metric], abs=6e-5), (metric, value, report["test"])
    assert evaluate_cli.main(["--checkpoint", report["checkpoint"], "--data", "synthetic", "--split", "valid"]) == 0
    valid = _table(capsys.readouterr().out)[report["model"]]
    assert valid["NDCG@10"] == pytest.approx(report["valid"]["NDCG@10"], abs=6e-5)


def test_a_unisrec_checkpoint_scores_as_its_trainer_did(tmp_path: Path) -> None:
    from tests.training.test_unisrec_training import _planted_text

    data = synthetic_interactions(seed=3, n_users=400)
    split = leave_one_out(data, "music")
    args = UniSRecArgs(pretrain_epochs=1, epochs=2, dim=16, variant="inductive", text_model="planted")
    _, result, scorer, _ = train_unisrec(split, args, tmp_path / "u.pt", text=_planted_text((400, 300), 20, seed=3))
    assert result.checkpoint is not None
    model, meta = checkpoint.load(result.checkpoint)
    rebuilt = evaluate_cli.scorer_for(model, meta, data.n_items("music"))
    assert evaluate_ranking(rebuilt, split.test) == evaluate_ranking(scorer, split.test)


def test_a_bridge_or_an_unknown_model_gets_a_clear_error() -> None:
    with pytest.raises(ValueError, match="cold-start bridge"):
        evaluate_cli.scorer_for(torch.nn.Linear(1, 1), {"model": "ptupcdr", "beta": 0.2}, 10)
    with pytest.raises(ValueError, match=r"does not know model 'unisrec-pretrain'.*cdsrec"):
        evaluate_cli.scorer_for(torch.nn.Linear(1, 1), {"model": "unisrec-pretrain"}, 10)


def test_popularity_needs_a_target_domain_and_a_missing_checkpoint_exits_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert evaluate_cli.main(["--checkpoint", str(tmp_path / "none.pt"), "--data", "synthetic"]) == 2
    assert "cdrec evaluate:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate_cli.main(["--model", "popularity", "--data", "synthetic"])



def test_a_new_model_is_scored_from_its_serving_declaration_alone() -> None:
    """No list of model names: a checkpoint under a name evaluate has never seen scores as its declaration says."""
    from training.models.sasrec import SASRec, SASRecConfig

    model = SASRec(SASRecConfig(n_items=30, dim=8, layers=1, heads=1, max_len=5)).eval()
    assert callable(evaluate_cli.scorer_for(model, {"model": "brand-new-model"}, 30))
    with pytest.raises(ValueError, match="scores 30 items but the target domain has 40"):
        evaluate_cli.scorer_for(model, {"model": "brand-new-model"}, 40)
