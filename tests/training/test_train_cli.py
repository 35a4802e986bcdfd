"""`cdrec train`'s flags: CDREC_TRAIN__* / CDREC_DATA__MAX_LEN set in the environment become their defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from training import cli as train_cli


def test_train_flags_take_their_defaults_from_the_environment_settings(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    from core.settings import Settings
    from training.train_bridge_inductive import InductiveArgs
    from training.train_sasrec import SASRecArgs

    def parse(*argv: str) -> object:
        parser = train_cli.build_parser()
        train_cli.apply_defaults(parser, train_cli.settings_defaults(Settings()))
        return parser.parse_args(list(argv))

    sas = ["sasrec", "--data", "synthetic", "--target-domain", "music"]
    plain = parse(*sas)
    assert plain.epochs == SASRecArgs().epochs and plain.lr == SASRecArgs().lr  # nothing set: the trainer's own
    monkeypatch.setenv("CDREC_TRAIN__EPOCHS", "4")
    monkeypatch.setenv("CDREC_TRAIN__OUT_DIR", str(tmp_path))
    monkeypatch.setenv("CDREC_DATA__MAX_LEN", "12")
    ns = parse(*sas)
    assert (ns.epochs, ns.out, ns.max_len, ns.lr) == (4, tmp_path, 12, SASRecArgs().lr)
    assert parse(*sas, "--epochs", "9").epochs == 9  # the command line wins
    bridge = parse("bridge", "inductive", "--data", "synthetic", "--source-domain", "book", "--target-domain", "music")
    assert bridge.epochs == 4 and bridge.max_len == 12 and bridge.lr == InductiveArgs().lr
    monkeypatch.setenv("CDREC_TRAIN__EPOCHS", "0")
    assert train_cli.main(sas) == 2  # an out-of-range setting is refused before any work
