"""``data`` command line: ``data stats PATH`` and ``data synth OUT.csv [--users N --seed S --overlap R]``.

Errors in the input (``DataError``, a missing path) print one line to stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from training.data.interactions import DataError, Interactions
from training.data.loaders import load


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="data", description="Inspect and generate interaction data.")
    sub = p.add_subparsers(dest="command", required=True)
    stats = sub.add_parser("stats", help="users / items / interactions / overlap per domain")
    stats.add_argument("path", help="a data file, an Art-Office root or a Douban directory")
    synth = sub.add_parser("synth", help="write a synthetic cross-domain interactions CSV")
    synth.add_argument("out", help="output CSV path")
    synth.add_argument("--users", type=int, default=1000, help="number of users (default 1000)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--overlap", type=float, default=0.5, help="fraction of users in both domains")
    return p


def format_stats(data: Interactions) -> str:
    """The per-domain table plus total users and users active in every domain."""
    table = data.stats().to_string(index=False)
    f = data.frame
    n_domains = len(data.domains)
    in_all = int((f.groupby("user")["domain"].nunique() == n_domains).sum()) if len(f) else 0
    lines = [
        f"dataset: {data.name}",
        table,
        f"total users: {data.n_users}",
        f"users in all {n_domains} domains: {in_all}",
        f"total interactions: {len(f)}",
    ]
    return "\n".join(lines)


def _stats(path: str) -> int:
    print(format_stats(load(path)))
    return 0


def _synth(out: str, users: int, seed: int, overlap: float) -> int:
    if users <= 0:
        raise DataError(f"--users must be positive, got {users}")
    if not 0.0 <= overlap <= 1.0:
        raise DataError(f"--overlap must be in [0, 1], got {overlap}")
    try:
        from training.data.synthetic import generate
    except ImportError as exc:
        print(f"error: synthetic generator unavailable: {exc}", file=sys.stderr)
        return 2
    frame = generate(n_users=users, seed=seed, overlap=overlap)
    path = Path(out)
    if path.parent and not path.parent.exists():
        raise DataError(f"{path.parent}: output directory does not exist")
    frame.to_csv(path, index=False)
    print(f"wrote {len(frame)} interactions of {frame['user_id'].nunique()} users to {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "stats":
            return _stats(args.path)
        return _synth(args.out, args.users, args.seed, args.overlap)
    except DataError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
