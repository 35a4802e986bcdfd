"""The `cdrec` command. Each subcommand lives in the package that owns it and is imported only when used,
so `cdrec serve` never pulls in torch and `cdrec train` never pulls in the service."""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("training.data.cli", "inspect data: `cdrec data stats PATH`, `cdrec data synth OUT.csv`"),
    "train": ("training.cli", "train a model: `cdrec train sasrec --data PATH --target-domain D`"),
    "evaluate": ("training.evaluate_cli", "print a metrics table for a checkpoint or a baseline"),
    "export": ("export.cli", "checkpoints -> a verified ONNX + FAISS bundle; `cdrec export verify BUNDLE`"),
    "refresh": ("service.refresh", "re-encode users' cached vectors into Redis: `cdrec refresh --redis-url URL`"),
    "serve": ("service.cli", "run the HTTP service on artifacts/current: `cdrec serve --workers 2`"),
    "demo": ("demo.cli", "the demo: train, export, serve and answer (`make demo`); `cdrec demo down` stops it"),
}


def usage() -> str:
    lines = ["usage: cdrec COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "`cdrec COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"cdrec: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    code: int = module.main(rest)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
