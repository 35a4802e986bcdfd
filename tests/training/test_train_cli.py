"""`cdrec train`'s flags: one typed args model per trainer, filled from CDREC_TRAIN__* and the command line by
pydantic-settings (training/config.py); every flag has help text and one default."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from training import cli as train_cli
from training.args import SeqArgs
from training.config import args_fields, parse
from training.train_bridge_inductive import InductiveArgs
from training.train_sasrec import SASRecArgs

SAS = ["--data", "synthetic", "--target-domain", "music"]


def _parse(name: str, *argv: str) -> object:
    return parse(train_cli.command_class(name), list(argv), f"cdrec train {name}")


@pytest.mark.parametrize("name", list(train_cli.COMMANDS))
def test_every_flag_of_every_command_has_help_text_and_one_default(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args_cls = train_cli.COMMANDS[name][0]
    cls = train_cli.command_class(name)
    with pytest.raises(SystemExit) as done:
        train_cli.main([*name.split(), "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: cdrec train {name}")
    flags = re.findall(r"^  (--[a-z0-9.-]+)", text, flags=re.M)
    assert len(flags) > 5
    fields = dict(cls.model_fields)
    for fname, f in fields.items():  # the settings class holds the args model's fields, same default, same help
        assert f.description, f"{name}: --{fname} has no help text"
        if fname in args_fields(args_cls):
            own = args_fields(args_cls)[fname]
            assert (f.default, f.default_factory, f.description) == (own.default, own.default_factory, own.description)
    for field in dataclasses.fields(args_cls):  # nested models (bridge ptupcdr's --mf.*) too
        nested = getattr(args_cls(), field.name)
        if dataclasses.is_dataclass(nested):
            for sub, info in args_fields(type(nested)).items():
                assert info.description, f"{name}: --{field.name}.{sub} has no help text"
                # the MF seed has no flag: ptupcdr's --seed sets it (training/cli.py)
                assert (f"--{field.name}.{sub.replace('_', '-')}" in flags) == (sub != "seed")
    # every flag is listed in --help with a help line (argparse puts it after the flag or on the next line)
    for flag in flags:
        block = text.split(f"\n  {flag}", 1)[1].split("\n  --", 1)[0]
        assert re.search(r"[a-z]{3}", block.split("(default")[0].replace(flag, "")), f"{name}: {flag} lacks help"


def test_one_default_per_field_across_a_trainer_and_its_base() -> None:
    """SeqArgs' defaults are the recorded benches' (batch 128, lr 3e-3); TrainSettings no longer has its own."""
    from core.settings import TrainSettings

    assert (SeqArgs().batch_size, SeqArgs().lr) == (128, 3e-3)
    assert all(f.default is None for f in TrainSettings.model_fields.values())


def test_flags_come_from_the_environment_and_the_command_line_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    plain = _parse("sasrec", *SAS)
    assert plain.epochs == SASRecArgs().epochs and plain.lr == SASRecArgs().lr  # type: ignore[attr-defined]
    monkeypatch.setenv("CDREC_TRAIN__EPOCHS", "4")
    monkeypatch.setenv("CDREC_TRAIN__OUT_DIR", str(tmp_path))  # the older names still work
    monkeypatch.setenv("CDREC_DATA__MAX_LEN", "12")
    monkeypatch.setenv("CDREC_TRAIN__NEG_POWER", "0.5")  # any field of the args model, by its own name
    run = _parse("sasrec", *SAS)
    assert (run.epochs, run.out, run.max_len, run.lr, run.neg_power) == (  # type: ignore[attr-defined]
        4, tmp_path, 12, SASRecArgs().lr, 0.5)
    args = train_cli.args_of(SASRecArgs, run)  # type: ignore[arg-type]
    assert isinstance(args, SASRecArgs) and args.epochs == 4 and args.max_len == 12
    assert _parse("sasrec", *SAS, "--epochs", "9", "--max-len", "7").epochs == 9  # type: ignore[attr-defined]
    assert _parse("sasrec", *SAS, "--merged").merged is True  # type: ignore[attr-defined]
    bridge = _parse("bridge inductive", "--data", "synthetic", "--source-domain", "book", "--target-domain", "music")
    assert (bridge.epochs, bridge.max_len, bridge.lr) == (4, 12, InductiveArgs().lr)  # type: ignore[attr-defined]
    monkeypatch.setenv("CDREC_TRAIN__MF__DIM", "8")
    ptu = _parse("bridge ptupcdr", "--data", "x", "--source-domain", "book", "--target-domain", "music",
                 "--mf.epochs", "3")
    assert (ptu.mf.dim, ptu.mf.epochs) == (8, 3)  # type: ignore[attr-defined]


def test_bad_values_and_flags_are_refused_before_any_work(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train_cli.main(["sasrec", *SAS, "--epochs", "0"]) == 2
    assert "epochs" in capsys.readouterr().err
    assert train_cli.main(["sasrec", *SAS, "--no-such-flag", "1"]) == 2
    assert "no-such-flag" in capsys.readouterr().err
    assert train_cli.main(["unisrec", *SAS, "--variant", "both"]) == 2
    assert "variant" in capsys.readouterr().err
    assert train_cli.main(["nope"]) == 2
    assert "unknown model" in capsys.readouterr().err
    monkeypatch.setenv("CDREC_TRAIN__EPOCHS", "0")
    assert train_cli.main(["sasrec", *SAS]) == 2  # an out-of-range setting is refused before any work
    assert "epochs" in capsys.readouterr().err
