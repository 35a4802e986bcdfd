"""Loaders (DESIGN §2): each reads one on-disk format and returns :class:`Interactions` via ``from_frame``.

* :func:`load_interactions_file` - the generic file a user brings (CSV / TSV / TXT, optionally gzipped, or
  Parquet) with columns ``user_id, item_id, domain, timestamp|position[, rating]``;
* :func:`load_art_office` - the Amazon Art-Office derived TSVs (../shared/data/amazon_art_office_urllm);
* :func:`load_douban` - the Douban book/music ratings (../shared/data/douban_book_music_gadtcdr);
* :func:`load_amazon_ratings` / :func:`load_amazon_ratings_files` - the public Amazon review rating files
  (headerless ``user,item,rating,timestamp`` CSV, or JSON lines with ``reviewerID, asin, overall,
  unixReviewTime``);
* :func:`load` - picks one of the above from a path.

Malformed input raises :class:`DataError` naming the file, the line (Parquet: row) and the problem.
"""

from __future__ import annotations

import ast
import gzip
import json
import math
from collections.abc import Iterable, Sequence
from itertools import chain
from pathlib import Path

import numpy as np
import pandas as pd

from training.data.formats import (
    ParquetSource,
    TextSource,
    as_ids,
    as_positions,
    as_ratings,
    as_timestamps,
    check_file,
    open_text,
    sniff_sep,
    strip_suffixes,
    with_header,
)
from training.data.interactions import DataError, Interactions, from_frame

__all__ = [
    "load",
    "load_amazon_ratings",
    "load_amazon_ratings_files",
    "load_amazon_spec",
    "load_art_office",
    "load_douban",
    "load_interactions_file",
]

REQUIRED = ("user_id", "item_id", "domain")
TEXT_SUFFIXES = (".csv", ".tsv", ".txt")
JSON_SUFFIXES = (".json", ".jsonl")


# --------------------------------------------------------------------------- generic user file


def _missing_columns(path: Path, where: str, found: Sequence[str], missing: Sequence[str]) -> DataError:
    return DataError(
        f"{path}: {where}: missing required column(s) {', '.join(missing)}; "
        f"found columns: {', '.join(map(str, found)) or '(none)'} "
        "(expected a header user_id,item_id,domain,timestamp|position[,rating])"
    )


def load_interactions_file(path: str | Path) -> Interactions:
    """A generic interactions file: ``.csv``/``.tsv``/``.txt`` (optionally gzipped) with a header, or Parquet.

    Columns ``user_id, item_id, domain`` and ``timestamp`` (integer epoch or ISO 8601 datetime) or
    ``position`` (integer) become ``order`` (``timestamp`` wins if both are present); an optional ``rating``
    column must hold a finite number on every row. Other columns are ignored.
    """
    path = Path(path)
    name = path.name.removesuffix(".gz")
    src: TextSource | ParquetSource
    if name.endswith(".parquet"):
        src = ParquetSource(path)
        frame = src.read()
        frame.columns = [str(c).strip() for c in frame.columns]
        where = "schema"
    elif name.endswith(TEXT_SUFFIXES):
        check_file(path)
        src = TextSource(path, sniff_sep(path))
        frame = with_header(src, src.read())
        where = "line 1 (header)"
    else:
        check_file(path)
        raise DataError(
            f"{path}: unsupported file type (expected .csv, .tsv, .txt (optionally .gz) or .parquet)"
        )
    cols = list(frame.columns)
    missing = [c for c in REQUIRED if c not in cols]
    if "timestamp" not in cols and "position" not in cols:
        missing.append("timestamp or position")
    if missing:
        raise _missing_columns(path, where, cols, missing)
    raw = pd.DataFrame({c: as_ids(frame[c], c, src) for c in REQUIRED})
    if "timestamp" in cols:
        raw["order"] = as_timestamps(frame["timestamp"], src)
    else:
        raw["order"] = as_positions(frame["position"], src)
    if "rating" in cols:
        raw["rating"] = as_ratings(frame["rating"], src)
    return from_frame(raw, name=strip_suffixes(path))


# --------------------------------------------------------------------------- Amazon Art-Office (URLLM)

ITEM_COLUMNS = ("item_id", "domain", "title", "attributes")
SEQ_COLUMNS = ("user_id", "history", "target_1", "target_1_domain", "target_2", "target_2_domain")


def _read_tsv(path: Path, required: Sequence[str]) -> tuple[TextSource, pd.DataFrame]:
    src = TextSource(path, "\t")
    frame = with_header(src, src.read())
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise _missing_columns(path, "line 1 (header)", list(frame.columns), missing)
    return src, frame


def load_art_office(root: str | Path) -> Interactions:
    """Amazon Art-Office: ``root/derived/items.tsv.gz`` + ``root/derived/sequences.tsv.gz``.

    Domains ``art`` and ``office``. A user's history gets orders 0..L-1, ``target_1`` order L and
    ``target_2`` order L if its domain differs from target_1's, else L+1. Every catalogue item gets an id
    (global id order), with text ``"title. attributes"``. Users are the raw reviewer ids (``user_id``).
    """
    derived = Path(root) / "derived"
    isrc, items = _read_tsv(derived / "items.tsv.gz", ITEM_COLUMNS)
    ids = as_ids(items["item_id"], "item_id", isrc)
    doms = as_ids(items["domain"], "domain", isrc)
    dup = pd.Series(ids).duplicated().to_numpy()
    if dup.any():
        k = int(np.flatnonzero(dup)[0])
        raise isrc.error(k, f"duplicate item_id {ids[k]!r}")
    titles = items["title"].astype("string").str.strip().fillna("")
    attrs = items["attributes"].astype("string").str.strip().fillna("")
    text = (titles + ". " + attrs).where(attrs != "", titles).to_numpy(dtype=object)
    domain_of = pd.Series(doms, index=ids)
    catalog: dict[str, list[str]] = {}
    item_text: dict[str, dict[str, str]] = {}
    for d in sorted(set(doms)):
        m = doms == d
        catalog[d] = list(ids[m])
        item_text[d] = dict(zip(ids[m], text[m], strict=True))

    ssrc, seqs = _read_tsv(derived / "sequences.tsv.gz", SEQ_COLUMNS)
    users = as_ids(seqs["user_id"], "user_id", ssrc)
    hist = [h.split() for h in seqs["history"].astype("string").fillna("")]
    lengths = np.fromiter(map(len, hist), dtype=np.int64, count=len(hist))
    rows = np.repeat(np.arange(len(hist)), lengths)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    h_items = pd.Series(list(chain.from_iterable(hist)), dtype=object)
    h_dom = h_items.map(domain_of)
    unknown = h_dom.isna().to_numpy()
    if unknown.any():
        k = int(np.flatnonzero(unknown)[0])
        raise ssrc.error(int(rows[k]), f"history item {h_items.iloc[k]!r} is not in {isrc.path.name}")
    parts = [
        pd.DataFrame(
            {
                "user_id": users[rows],
                "item_id": h_items.to_numpy(),
                "domain": h_dom.to_numpy(),
                "order": np.arange(len(rows)) - starts,
            }
        )
    ]
    t_doms = []
    for col in ("target_1", "target_2"):
        t = as_ids(seqs[col], col, ssrc)
        t_dom = pd.Series(t, dtype=object).map(domain_of).to_numpy()
        stated = seqs[f"{col}_domain"].astype("string").str.strip().to_numpy(dtype=object)
        bad = np.flatnonzero(pd.isna(t_dom) | (t_dom != stated))
        if len(bad):
            k = int(bad[0])
            actual = "not in items" if pd.isna(t_dom[k]) else f"an {t_dom[k]!r} item"
            raise ssrc.error(k, f"{col} {t[k]!r} is {actual} but {col}_domain says {stated[k]!r}")
        t_doms.append(t_dom)
        order = lengths if col == "target_1" else lengths + (t_doms[1] == t_doms[0])
        parts.append(pd.DataFrame({"user_id": users, "item_id": t, "domain": t_dom, "order": order}))
    raw = pd.concat(parts, ignore_index=True)
    raw["order"] = raw["order"].astype(np.int64)
    return from_frame(raw, name="amazon_art_office", item_text=item_text, item_catalog=catalog)


# --------------------------------------------------------------------------- Douban (GA-DTCDR)


def douban_path(root: Path, domain: str) -> Path:
    gz = root / f"douban_{domain}_ratings.dat.gz"
    plain = root / f"douban_{domain}_ratings.dat"
    return plain if not gz.exists() and plain.exists() else gz


def load_douban(root: str | Path, domains: Sequence[str] = ("book", "music")) -> Interactions:
    """Douban ratings: ``root/douban_{domain}_ratings.dat.gz``, lines ``user \\t item \\t rating``, no header.

    ``order`` is the line number (the files carry no time). Users share one id space across domains.
    """
    root = Path(root)
    if not domains:
        raise DataError(f"{root}: no Douban domains requested")
    parts = []
    for d in domains:
        src = TextSource(douban_path(root, d), "\t")
        src.width = 3
        frame = src.read()
        src.check_width(frame)
        parts.append(
            pd.DataFrame(
                {
                    "user_id": as_ids(frame[0], "user id", src),
                    "item_id": as_ids(frame[1], "item id", src),
                    "domain": d,
                    "order": np.arange(1, len(frame) + 1, dtype=np.int64),
                    "rating": as_ratings(frame[2], src),
                }
            )
        )
    return from_frame(pd.concat(parts, ignore_index=True), name="douban")


# --------------------------------------------------------------------------- public Amazon review ratings

ALIASES = {
    "user_id": ("user", "user_id", "reviewerid", "reviewer_id"),
    "item_id": ("item", "item_id", "asin", "parent_asin"),
    "rating": ("rating", "overall"),
    "timestamp": ("timestamp", "unixreviewtime", "time"),
}


def _pick(names: Iterable[str], field: str) -> str | None:
    names = list(names)
    lower = {str(n).lower(): n for n in names}
    return next((lower[a] for a in ALIASES[field] if a in lower), None)


def _amazon_csv_raw(path: Path, domain: str) -> pd.DataFrame:
    src = TextSource(path, ",")
    frame = src.read()
    first = [str(x).strip() for x in frame.iloc[0]]
    if any(_pick([c], f) for c in first for f in ALIASES):  # a header line
        frame = with_header(src, frame)
        found = {f: _pick(frame.columns, f) for f in ALIASES}
        missing = [f for f, c in found.items() if c is None]
        if missing:
            raise _missing_columns(path, "line 1 (header)", list(frame.columns), missing)
        cols: dict[str, str | int] = {f: str(c) for f, c in found.items()}
    else:
        src.width = 4
        src.check_width(frame)
        cols = dict(zip(ALIASES, range(4), strict=True))
    return pd.DataFrame(
        {
            "user_id": as_ids(frame[cols["user_id"]], "user", src),
            "item_id": as_ids(frame[cols["item_id"]], "item", src),
            "domain": domain,
            "order": as_timestamps(frame[cols["timestamp"]], src),
            "rating": as_ratings(frame[cols["rating"]], src),
        }
    )


def _json_records(path: Path) -> Iterable[tuple[str, object]]:
    """(location, record) for JSON lines, a JSON array, or Amazon-2014 python-literal lines."""
    with open_text(path) as f:
        text = f.read()
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {exc.lineno}: invalid JSON: {exc.msg}") from None
        yield from ((f"record {i}", r) for i, r in enumerate(records, 1))
        return
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s:
            continue
        try:
            yield f"line {n}", json.loads(s)
        except json.JSONDecodeError as exc:
            try:
                yield f"line {n}", ast.literal_eval(s)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                raise DataError(f"{path}: line {n}: invalid JSON: {exc.msg} (column {exc.colno})") from None


def _amazon_json_raw(path: Path, domain: str) -> pd.DataFrame:
    check_file(path)
    cols: dict[str, list[object]] = {f: [] for f in ALIASES}
    try:
        for loc, rec in _json_records(path):
            if not isinstance(rec, dict):
                raise DataError(f"{path}: {loc}: expected a JSON object, found {type(rec).__name__}")
            for f in ALIASES:
                key = _pick(rec, f)
                value = rec.get(key) if key is not None else None
                if value is None or str(value).strip() == "":
                    want = " or ".join(repr(a) for a in ALIASES[f])
                    raise DataError(f"{path}: {loc}: missing or empty {want}")
                if f == "rating" and not _finite_number(value):
                    raise DataError(f"{path}: {loc}: rating {value!r} is not a finite number")
                if f == "timestamp" and not _integer(value):
                    raise DataError(f"{path}: {loc}: timestamp {value!r} is not an integer epoch")
                cols[f].append(value)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    if not cols["user_id"]:
        raise DataError(f"{path}: empty file")
    return pd.DataFrame(
        {
            "user_id": [str(x).strip() for x in cols["user_id"]],
            "item_id": [str(x).strip() for x in cols["item_id"]],
            "domain": domain,
            "order": np.array([int(float(str(x))) for x in cols["timestamp"]], dtype=np.int64),
            "rating": np.array([float(str(x)) for x in cols["rating"]], dtype=np.float64),
        }
    )


def _finite_number(x: object) -> bool:
    try:
        return not isinstance(x, bool) and math.isfinite(float(str(x)))
    except ValueError:
        return False


def _integer(x: object) -> bool:
    return _finite_number(x) and float(str(x)).is_integer()


def _is_json(path: Path) -> bool:
    return path.name.removesuffix(".gz").endswith(JSON_SUFFIXES)


def _amazon_raw(path: Path, domain: str) -> pd.DataFrame:
    if not str(domain).strip():
        raise DataError(f"{path}: empty domain name")
    return _amazon_json_raw(path, domain) if _is_json(path) else _amazon_csv_raw(path, domain)


def load_amazon_ratings(path: str | Path, domain: str) -> Interactions:
    """One public Amazon ratings file (CSV ``user,item,rating,timestamp``, header optional; or JSON lines)."""
    path = Path(path)
    return from_frame(_amazon_raw(path, domain), name=strip_suffixes(path))


def load_amazon_ratings_files(pairs: Iterable[tuple[str | Path, str]]) -> Interactions:
    """Several Amazon ratings files, one domain each: ``[(path, domain), ...]``; reviewer ids are shared."""
    parts = [_amazon_raw(Path(p), d) for p, d in pairs]
    if not parts:
        raise DataError("no Amazon ratings files given")
    return from_frame(pd.concat(parts, ignore_index=True), name="amazon")


# --------------------------------------------------------------------------- dispatcher


def _is_amazon_csv(path: Path) -> bool:
    """A ``.csv`` (or ``.csv.gz``) whose first line has the 4 fields of an Amazon ratings file: no header, or a
    header naming user, item, rating and timestamp (and so no ``domain``: not a generic interactions file)."""
    if not path.name.removesuffix(".gz").endswith(".csv"):
        return False
    try:
        with gzip.open(path, "rt") if path.name.endswith(".gz") else path.open() as f:
            fields = [x.strip().lower() for x in f.readline().split(",")]
    except (OSError, UnicodeDecodeError, EOFError):
        return False  # the generic loader reports what is wrong with the file
    named = [f for f in ALIASES if _pick(fields, f)]
    return len(fields) == 4 and "domain" not in fields and len(named) in (0, 4)


def load_amazon_spec(spec: str) -> Interactions:
    """``[DOMAIN=]PATH,[DOMAIN=]PATH,...``: Amazon ratings files, one domain each (default domain: the file name
    without its suffixes), reviewer ids shared across them."""
    pairs = []
    for part in spec.split(","):
        domain, sep, path = part.partition("=")
        path = path if sep else domain
        pairs.append((Path(path.strip()), domain.strip() if sep else strip_suffixes(Path(path.strip()))))
    for path, _ in pairs:
        if not path.is_file():
            raise DataError(f"{path}: no such file (in --data {spec!r})")
    domains = [d for _, d in pairs]
    if len(set(domains)) != len(domains):
        raise DataError(f"--data {spec!r}: two files have the same domain; name them DOMAIN=PATH")
    return load_amazon_ratings_files(pairs)


def load(path_or_name: str | Path) -> Interactions:
    """Load by path: an Art-Office root (``derived/sequences.tsv.gz``), a Douban directory
    (``douban_*_ratings.dat.gz``), an Amazon ratings file (JSON lines, or a 4-field CSV) or several as
    ``[DOMAIN=]PATH,[DOMAIN=]PATH``, or a generic interactions file."""
    if isinstance(path_or_name, str) and ("," in path_or_name or "=" in path_or_name) \
            and not Path(path_or_name).exists():
        return load_amazon_spec(path_or_name)
    p = Path(path_or_name)
    if p.is_dir():
        if (p / "derived" / "sequences.tsv.gz").is_file():
            return load_art_office(p)
        if p.name == "derived" and (p / "sequences.tsv.gz").is_file():
            return load_art_office(p.parent)
        douban = sorted(p.glob("douban_*_ratings.dat.gz"))
        if douban:
            names = tuple(f.name.removeprefix("douban_").removesuffix("_ratings.dat.gz") for f in douban)
            return load_douban(p, names)
        raise DataError(
            f"{p}: directory is not a known dataset (expected derived/sequences.tsv.gz or "
            "douban_*_ratings.dat.gz inside)"
        )
    if not p.exists():
        raise DataError(f"{p}: no such file or directory")
    if _is_json(p) or _is_amazon_csv(p):
        return load_amazon_ratings(p, strip_suffixes(p))
    return load_interactions_file(p)
