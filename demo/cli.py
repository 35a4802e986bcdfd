"""`cdrec demo` / `python -m demo` / `make demo`: the training half, then the serving half, as child processes.

    python -m demo [up] [--data PATH] [--target-domain D] [--model cdsrec|sasrec] [--epochs N] [--no-bridge]
                   [--out demo-out] [--port 8000] [--export-arg=--flag=value ...]
    python -m demo down [--out demo-out]           # stops the service and Redis `up` left running
    python -m demo seed --out DIR --artifacts ROOT --redis-url URL   # docker-compose's `seed`

``up`` (the default) runs ``python -m demo.train`` (torch) with the training options, then ``python -m demo.serve
up`` (torch-free) with ``--out``, ``--port`` and the ``--export-arg``s; ``down`` and ``seed`` go to the serving
half as they are. This module imports neither half: each runs in its own process (the serving half never loads
torch). Exit status: the failing half's, else 0.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

SERVING_ONLY = ("down", "seed")


def _run(module: str, args: list[str]) -> int:
    return subprocess.call([sys.executable, "-m", module, *args])


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] and args[0] in SERVING_ONLY:
        return _run("demo.serve", args)
    if args[:1] == ["up"]:
        args = args[1:]
    p = argparse.ArgumentParser(prog="cdrec demo", description=__doc__, add_help=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="the hand-off, checkpoints and bundle")
    p.add_argument("--port", type=int, default=8000, help="the service's port (a free one if taken)")
    p.add_argument("--export-arg", action="append", default=[], help="passed to `cdrec export` (repeatable)")
    ns, train_args = p.parse_known_args(args)
    if any(a in ("-h", "--help") for a in train_args):
        print(__doc__)
        return _run("demo.train", ["--help"])
    code = _run("demo.train", [*train_args, "--out", str(ns.out)])
    if code != 0:
        return code
    return _run("demo.serve", ["up", "--out", str(ns.out), "--port", str(ns.port),
                               *(f"--export-arg={a}" for a in ns.export_arg)])
