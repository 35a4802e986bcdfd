"""The one configuration path of `cdrec train`: typed args models, filled from the environment and the command line.

Each trainer declares one args model (a pydantic dataclass: ``SASRecArgs``, ``GURUArgs``, ...) whose field
defaults are the ONLY defaults and whose descriptions are the flags' help. ``command(ArgsCls, Run)`` turns it
into a pydantic-settings ``BaseSettings`` together with the run's own options (``--data``, ``--target-domain``,
``--out``, ...), and ``parse`` fills it by one mechanism, in this order of precedence:

1. the command line (``--batch-size 64``; booleans as ``--merged`` / ``--no-merged``; a nested model's fields
   as ``--mf.dim``);
2. the environment: ``CDREC_TRAIN__<FIELD>`` (``CDREC_TRAIN__EPOCHS=4``, ``CDREC_TRAIN__MF__DIM=8``), and the
   two older names ``CDREC_TRAIN__OUT_DIR`` (``--out``) and ``CDREC_DATA__MAX_LEN`` (``--max-len``);
3. the args model's default.

A value out of range, from either place, is refused before any work with a message naming the field. Built in a
program (tests, bench), an args model reads nothing from the environment: what the code says is what it gets.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, create_model
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    CliApp,
    CliSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "CDREC_TRAIN__"
OLDER_ENV = {"out": "CDREC_TRAIN__OUT_DIR", "max_len": "CDREC_DATA__MAX_LEN"}  # field -> older variable name


class OlderEnvNames(PydanticBaseSettingsSource):
    """``CDREC_TRAIN__OUT_DIR`` and ``CDREC_DATA__MAX_LEN``: names from before the flags were read this way."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the two names itself

    def __call__(self) -> dict[str, Any]:
        fields = self.settings_cls.model_fields
        return {f: os.environ[v] for f, v in OLDER_ENV.items() if f in fields and v in os.environ}


class Run(BaseSettings):
    """What every `cdrec train` command reads besides the model's args: the data, the domain, where to write."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_exit_on_error=False,
        cli_avoid_json=True,
        cli_hide_none_type=True,
        extra="forbid",
    )

    data: str = Field(description="a data path (see `cdrec data stats`) or `synthetic`")
    target_domain: str = Field(description="the domain whose next items are predicted")
    out: Path = Field(Path("runs"), description="checkpoint directory (env: CDREC_TRAIN__OUT_DIR)")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: torch's own)")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # the command line comes in through init_settings (CliApp), so it wins over both environment sources
        return init_settings, env_settings, OlderEnvNames(settings_cls)


def args_fields(args_cls: type) -> dict[str, FieldInfo]:
    """The fields of an args model (a pydantic dataclass), each with its one default and its help text."""
    fields: dict[str, FieldInfo] = args_cls.__pydantic_fields__  # type: ignore[attr-defined]
    return fields


def command(args_cls: type, base: type[Run] = Run, doc: str | None = None) -> type[Run]:
    """``base``'s run options + every field of ``args_cls`` (same default, same help) as one settings class."""
    fields: dict[str, Any] = {name: (f.annotation, f) for name, f in args_fields(args_cls).items()}
    clash = set(fields) & set(base.model_fields)
    if clash:
        raise TypeError(f"{args_cls.__name__} and {base.__name__} both declare {sorted(clash)}")
    cls: type[Run] = create_model(f"{args_cls.__name__}Command", __base__=base, __doc__=doc or args_cls.__doc__,
                                  **fields)
    return cls


def parse(cls: type[Run], argv: list[str], prog: str) -> Run:
    """Fill ``cls`` from ``argv``, the environment and its defaults (``--help`` prints the flags and exits)."""
    return CliApp.run(cls, cli_args=argv, cli_settings_source=CliSettingsSource(cls, cli_prog_name=prog))


def args_of(args_cls: type[Any], run: Run) -> Any:
    """The trainer's args model out of a parsed command."""
    return args_cls(**{name: getattr(run, name) for name in args_fields(args_cls)})
