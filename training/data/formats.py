"""Low-level readers behind :mod:`training.data.loaders`: text tables, Parquet and value checks.

Text tables are parsed with the pandas C engine (fast); only when something is wrong is the file scanned
again with the :mod:`csv` module to name the exact line (1-based, a header counts as line 1, blank lines are
skipped but counted). Every problem becomes a :class:`DataError` naming the file, the line (or Parquet row)
and what is wrong; no pandas traceback escapes.
"""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from training.data.interactions import DataError

MAX_ABS_RATING = 1e9  # anything beyond this is not a rating but a corrupted field


def strip_suffixes(path: Path) -> str:
    """``ratings.csv.gz`` -> ``ratings``."""
    name = path.name
    for suffix in (".gz", ".parquet", ".csv", ".tsv", ".txt", ".dat", ".jsonl", ".json"):
        name = name.removesuffix(suffix)
    return name or path.name


def check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")


def open_text(path: Path) -> IO[str]:
    """Open a text file, transparently gunzipping ``*.gz``; UTF-8 with an optional BOM."""
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


class TextSource:
    """A delimited text file: parse once with pandas, re-scan with ``csv`` to locate errors."""

    def __init__(self, path: Path, sep: str) -> None:
        self.path = path
        self.sep = sep
        self.skip = 0  # header lines dropped from the frame (0 or 1)
        self.width: int | None = None  # expected number of fields per line
        self._lines: list[int] | None = None

    def read(self) -> pd.DataFrame:
        """All non-blank lines as strings (header included as row 0), or a DataError."""
        check_file(self.path)
        try:
            frame = pd.read_csv(
                self.path,
                sep=self.sep,
                header=None,
                dtype=str,
                keep_default_na=False,
                na_filter=False,
                skip_blank_lines=True,
                encoding="utf-8-sig",
                compression="gzip" if self.path.name.endswith(".gz") else None,
            )
        except pd.errors.EmptyDataError:
            raise DataError(f"{self.path}: empty file") from None
        except pd.errors.ParserError as exc:
            bad = self._first_bad_width(None)
            if bad is not None:
                raise self._width_error(*bad) from None
            raise DataError(f"{self.path}: cannot parse: {_first_line(exc)}") from None
        except UnicodeDecodeError as exc:
            raise DataError(f"{self.path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except (OSError, EOFError) as exc:
            raise DataError(f"{self.path}: cannot read: {exc}") from None
        if len(frame) == 0:
            raise DataError(f"{self.path}: empty file")
        return frame

    def line(self, k: int) -> int:
        """1-based line number of data row ``k`` (0-based, after the header)."""
        if self._lines is None:
            with open_text(self.path) as f:
                reader = csv.reader(f, delimiter=self.sep)
                self._lines = [reader.line_num for row in reader if row]
        return self._lines[k + self.skip]

    def error(self, k: int, msg: str) -> DataError:
        """Error at data row ``k``; a wrong field count at or before it is reported instead."""
        line = self.line(k)
        bad = self._first_bad_width(line)
        if bad is not None:
            return self._width_error(*bad)
        return DataError(f"{self.path}: line {line}: {msg}")

    def check_width(self, frame: pd.DataFrame) -> None:
        if self.width is not None and frame.shape[1] != self.width:
            bad = self._first_bad_width(None)
            raise self._width_error(*(bad or (1, frame.shape[1], self.width)))

    def _first_bad_width(self, upto: int | None) -> tuple[int, int, int] | None:
        """(line, found, expected) of the first line whose field count differs from the first line's."""
        with open_text(self.path) as f:
            reader = csv.reader(f, delimiter=self.sep)
            width = self.width
            for row in reader:
                if upto is not None and reader.line_num > upto:
                    return None
                if not row:
                    continue
                if width is None:
                    width = len(row)
                elif len(row) != width:
                    return reader.line_num, len(row), width
        return None

    def _width_error(self, line: int, found: int, expected: int) -> DataError:
        sep = "tab" if self.sep == "\t" else "comma" if self.sep == "," else repr(self.sep)
        return DataError(
            f"{self.path}: line {line}: wrong number of fields: expected {expected}, found {found} "
            f"({sep}-separated)"
        )


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


class ParquetSource:
    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> pd.DataFrame:
        check_file(self.path)
        try:
            frame = pd.read_parquet(self.path)
        except Exception as exc:  # pyarrow raises many types; none may escape raw
            raise DataError(f"{self.path}: cannot read Parquet: {_first_line(exc)}") from None
        if len(frame) == 0:
            raise DataError(f"{self.path}: empty file (no rows)")
        return frame

    def error(self, k: int, msg: str) -> DataError:
        return DataError(f"{self.path}: row {k + 1}: {msg}")


Source = TextSource | ParquetSource


def _first(mask: np.ndarray) -> int | None:
    idx = np.flatnonzero(mask)
    return int(idx[0]) if len(idx) else None


def as_ids(col: pd.Series, name: str, src: Source) -> np.ndarray:
    """Stripped string ids; an empty or missing id is an error."""
    s = col.astype("string").str.strip().fillna("")
    bad = _first((s == "").to_numpy())
    if bad is not None:
        raise src.error(bad, f"empty {name}")
    return s.to_numpy(dtype=object)


def _numeric(col: pd.Series) -> pd.Series:
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        return col.astype("float64")
    return pd.to_numeric(col, errors="coerce").astype("float64")  # tolerates surrounding spaces


def _raw(col: pd.Series, k: int) -> str:
    v = col.iloc[k]
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip()


def as_ratings(col: pd.Series, src: Source, name: str = "rating") -> np.ndarray:
    """Finite float ratings; with a rating column present every row needs one."""
    r = _numeric(col).to_numpy()
    bad = _first(~np.isfinite(r) | (np.abs(np.nan_to_num(r)) > MAX_ABS_RATING))
    if bad is not None:
        raw = _raw(col, bad)
        if raw == "":
            raise src.error(bad, f"empty {name} (the column is present, so every row needs a value)")
        if np.isnan(r[bad]) and raw.lower() not in ("nan", "na", "null", "none"):
            raise src.error(bad, f"{name} {raw!r} is not a number")
        raise src.error(bad, f"{name} {raw!r} is not a sane finite number (|{name}| <= {MAX_ABS_RATING:g})")
    return r


def as_positions(col: pd.Series, src: Source, name: str = "position") -> np.ndarray:
    """Integer positions (``3`` or ``3.0``)."""
    if pd.api.types.is_integer_dtype(col) and not col.isna().any():
        return col.to_numpy(np.int64)
    p = _numeric(col).to_numpy()
    bad = _first(~np.isfinite(p) | (np.nan_to_num(p) != np.floor(np.nan_to_num(p))))
    if bad is not None:
        raw = _raw(col, bad)
        what = f"empty {name}" if raw == "" else f"{name} {raw!r} is not an integer"
        raise src.error(bad, what)
    return p.astype(np.int64)


def as_timestamps(col: pd.Series, src: Source, name: str = "timestamp") -> np.ndarray:
    """Integer epochs kept as they are; ISO 8601 datetimes become int64 nanoseconds since the epoch (UTC).

    A column must be all numbers or all datetimes (mixing units would scramble the order).
    """
    if pd.api.types.is_datetime64_any_dtype(col):
        bad = _first(col.isna().to_numpy())
        if bad is not None:
            raise src.error(bad, f"empty {name}")
        if getattr(col.dt, "tz", None) is not None:
            col = col.dt.tz_convert("UTC")
        return np.asarray(col.dt.as_unit("ns").astype("int64").to_numpy(), dtype=np.int64)
    text = col.astype("string").str.strip().fillna("")
    bad = _first((text == "").to_numpy())
    if bad is not None:
        raise src.error(bad, f"empty {name}")
    num = _numeric(col)
    if not np.isnan(num.iloc[0]):  # the first row decides: integer epochs
        t = num.to_numpy()
        bad = _first(~np.isfinite(t))
        if bad is not None:
            raw = _raw(col, bad)
            raise src.error(bad, f"{name} {raw!r} is not an integer epoch like the first row's")
        if np.all(t == np.floor(t)):
            if pd.api.types.is_integer_dtype(col):
                return col.to_numpy(np.int64)
            return t.astype(np.int64)
        return np.round(t * 1e6).astype(np.int64)  # fractional epochs: keep sub-second order
    dt = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
    bad = _first(dt.isna().to_numpy())
    if bad is not None:
        raw = _raw(col, bad)
        raise src.error(bad, f"{name} {raw!r} is neither an integer epoch nor an ISO 8601 datetime")
    return dt.dt.as_unit("ns").astype("int64").to_numpy()


def sniff_sep(path: Path) -> str:
    """Delimiter of a text file: by extension, else tab if the first line has one, else comma."""
    name = path.name.removesuffix(".gz")
    if name.endswith(".tsv"):
        return "\t"
    if name.endswith(".csv"):
        return ","
    try:
        with open_text(path) as f:
            first = f.readline()
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read: {exc}") from None
    return "\t" if "\t" in first else ","


def with_header(src: TextSource, frame: pd.DataFrame) -> pd.DataFrame:
    """Use row 0 as the header."""
    names = [str(x).strip() for x in frame.iloc[0]]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"{src.path}: line 1: duplicate column name(s) {', '.join(dup)}")
    body = frame.iloc[1:].reset_index(drop=True)
    if len(body) == 0:
        raise DataError(f"{src.path}: no data rows after the header on line 1")
    body.columns = names
    src.skip = 1
    return body
