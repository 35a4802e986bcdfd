"""Hot reload: ``POST /v1/admin/reload`` and a watch on ``artifacts/current``.

A reload resolves ``current`` (export switches it atomically, so it names either the old or the new version),
loads and verifies that bundle in a worker thread (hashing, ONNX sessions, index reads and a warm-up are
seconds of blocking work) and only then swaps it into the Recommender: requests never wait and never see half
a bundle. Items added through ``POST /v1/items`` are replayed into the new bundle before the swap, under the
item lock, so none is lost in between (service.items). A bundle that fails is reported (``last_error``,
/readyz, the reload metric, the log) and the old one keeps serving; the watch does not retry the same failed
target until ``current`` moves again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from core.manifest import BundleError, current_bundle
from service.bundle import ServingBundle
from service.items import ItemAdder
from service.metrics import Metrics
from service.ports import StoreUnavailable
from service.recommender import Recommender

log = logging.getLogger("cdrec.service")


class ReloadRefused(Exception):
    pass


@dataclass(frozen=True)
class Reloaded:
    version: str
    previous: str
    changed: bool


class BundleManager:
    def __init__(
        self,
        artifacts: Path,
        recommender: Recommender,
        loader: Callable[[Path], ServingBundle],
        metrics: Metrics,
        items: ItemAdder | None = None,
        on_serving: Callable[[Path, str], None] | None = None,
    ) -> None:
        self.artifacts = Path(artifacts)
        self.items = items
        self.recommender = recommender
        self.loader = loader
        self.metrics = metrics
        self.serving_path = recommender.bundle.path
        self.on_serving = on_serving  # tells the supervisor which bundle this worker serves (service.supervision)
        self.last_error: str | None = None  # the detail: logs and GET /v1/admin/status, never /readyz
        self._failed_target: Path | None = None
        self._lock = asyncio.Lock()

    def target(self) -> Path:
        return current_bundle(self.artifacts)

    async def reload(self) -> Reloaded:
        async with self._lock:  # one reload at a time; a second caller waits and then sees the result
            previous = self.recommender.bundle.version
            try:
                target = self.target()
            except (FileNotFoundError, OSError) as exc:
                self._refused(None, str(exc))
            if target == self.serving_path:
                return Reloaded(previous, previous, False)
            try:
                bundle = await asyncio.to_thread(self.loader, target)
            except BundleError as exc:
                self._refused(target, str(exc))
            except Exception as exc:  # a bundle that breaks the loader in a way verify did not foresee
                self._refused(target, f"{target}: {type(exc).__name__}: {exc}")
            if self.items is None:
                self.recommender.swap(bundle)
            else:
                async with self.items.lock:  # no add between the replay and the swap
                    try:
                        bundle = await self.items.replay(bundle)
                    except Exception as exc:  # the text encoder failing on a stored text
                        self._refused(target, f"{target}: replaying the added items failed: {exc!r}")
                    self.recommender.swap(bundle)
            self.serving_path, self.last_error, self._failed_target = target, None, None
            if self.on_serving is not None:
                self.on_serving(target, bundle.version)
            self.metrics.reloads.labels("ok").inc()
            self.metrics.serving(bundle.version, previous)
            log.info("serving bundle %s (was %s)", bundle.version, previous)
            return Reloaded(bundle.version, previous, True)

    @property
    def error_code(self) -> str | None:
        """What /readyz shows of the last failed reload: a short code, no path or library text (the detail is
        in the log and in GET /v1/admin/status, behind the key)."""
        return None if self.last_error is None else "bundle_refused"

    def _refused(self, target: Path | None, message: str) -> NoReturn:
        self.last_error = message
        self._failed_target = target
        self.metrics.reloads.labels("refused").inc()
        log.error("bundle reload refused, still serving %s: %s", self.recommender.bundle.version, message)
        raise ReloadRefused(message)

    async def watch(self, every_s: float) -> None:
        """Poll ``current``; reload when it points somewhere new; pick up items other workers added. Runs until
        cancelled."""
        while True:
            await asyncio.sleep(every_s)
            try:
                target = self.target()
            except OSError:
                continue  # `current` missing for a moment: keep serving what we have
            if target not in (self.serving_path, self._failed_target):
                with contextlib.suppress(ReloadRefused):  # reported by reload()
                    await self.reload()
            elif target == self.serving_path and self.last_error is not None:
                # `current` was put back on the bundle we serve: nothing is refused any more
                self.last_error = self._failed_target = None
            if self.items is not None:
                await self._sync_items()

    async def _sync_items(self) -> None:
        """Items another worker added through POST /v1/items (service.items.ItemAdder.sync)."""
        assert self.items is not None
        try:
            await self.items.sync()
        except StoreUnavailable:
            pass  # Redis is down: the requests report that; the items come with the next tick
        except Exception:  # a text that fails to encode must not end the watch
            log.exception("syncing the items other workers added failed")
