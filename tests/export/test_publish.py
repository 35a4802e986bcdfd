"""Publishing is atomic: a reader resolving `current` only ever sees a whole, verifiable bundle."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from core.bundle_checks import verify_bundle
from core.manifest import CURRENT, MANIFEST, current_bundle
from export.bundle import publish, switch
from export.towers import ExportError


def _stage(bundle: Path, root: Path, version: str) -> Path:
    """A finished copy of ``bundle`` renamed ``version``, in a staging directory beside ``root``'s bundles."""
    staged = root / f".tmp-{version}" / version
    shutil.copytree(bundle, staged)
    raw = json.loads((staged / MANIFEST).read_text())
    raw["version"] = version
    (staged / MANIFEST).write_text(json.dumps(raw))
    return staged


def test_concurrent_readers_never_see_a_missing_or_half_written_bundle(bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "artifacts"
    out.mkdir()
    staged = [_stage(bundle, out, f"v{i:03d}") for i in range(20)]
    publish(staged[0], out)
    stop = threading.Event()
    seen: set[str] = set()
    errors: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                path = current_bundle(out)
                seen.add(verify_bundle(path, deep=False).version)  # files, sizes, id maps and hashes
            except Exception as exc:  # any failure is a reader seeing a broken or absent bundle
                errors.append(repr(exc))

    readers = [threading.Thread(target=reader) for _ in range(3)]
    for t in readers:
        t.start()
    try:
        for s in staged[1:]:
            publish(s, out)
    finally:
        stop.set()
        for t in readers:
            t.join()
    assert errors == []
    assert current_bundle(out).name == "v019"
    assert len(seen) > 1  # the readers really ran across switches
    assert (out / CURRENT).is_symlink() and not (out / CURRENT).readlink().is_absolute()


def test_a_published_version_is_never_overwritten(bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "artifacts"
    out.mkdir()
    publish(_stage(bundle, out, "v1"), out)
    with pytest.raises(ExportError, match="already exists"):
        publish(_stage(bundle, out, "v1"), out)


def test_current_that_is_a_real_directory_is_not_replaced(tmp_path: Path) -> None:
    (tmp_path / CURRENT).mkdir()
    with pytest.raises(ExportError, match="not a symlink"):
        switch(tmp_path, "v1")


def test_publish_without_switch_leaves_current_alone(bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "artifacts"
    out.mkdir()
    publish(_stage(bundle, out, "v1"), out)
    publish(_stage(bundle, out, "v2"), out, switch_current=False)
    assert current_bundle(out).name == "v1" and (out / "v2" / MANIFEST).exists()
