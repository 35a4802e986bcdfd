"""Items added through the service (``POST /v1/items``), folded into the next bundle: ``--added-items``.

The service persists every item it was given by text in Redis (``cdrec:items:<domain>``, core.redis_keys) and
replays them into each bundle it loads. ``cdrec export --added-items SOURCE`` puts them in the bundle itself:
each added id the data does not already have is encoded by the text model's torch path (sentence-transformers
-> text tower, what the text item graph reproduces) and appended to its domain's index and ids after the
model's own items; the manifest's ``domains.<d>.model_items`` says where the model's own items end, so the
service never feeds the added ones to a user encoder. Ids the data already has (the item got interactions and
was trained on) keep their trained vectors.

    cdrec export --checkpoint runs/unisrec.office.pt --data DATA --added-items redis://localhost:6379/0
    cdrec export --checkpoint runs/unisrec.office.pt --data DATA --added-items added.json  # {domain: {id: text}}
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from export.text_items import TextGraph
from export.towers import ExportError, Graph


def read_added_items(source: str, domains: list[str], cluster: bool | None = None) -> dict[str, dict[str, str]]:
    """Items added through the service's ``POST /v1/items``, to fold into a bundle: domain -> id -> text.

    ``source`` is the service's Redis (``redis://...``: the ``cdrec:items:<domain>`` hashes, read with the
    ``redis`` package of the serve extra) or a JSON file of that same mapping. ``cluster`` (default:
    ``CDREC_REDIS__CLUSTER``): the URL names a node of a Redis Cluster (each hash is one key, one slot)."""
    if source.startswith(("redis://", "rediss://", "unix://")):
        try:
            import redis
        except ImportError as exc:
            raise ExportError("reading added items from Redis needs the `redis` package (pip install redis)") from exc
        from core.redis_client import sync_client
        from core.redis_keys import item_texts_key
        from core.settings import Settings

        client = sync_client(source, Settings().redis.cluster if cluster is None else cluster, decode_responses=True)
        try:
            return {d: dict(client.hgetall(item_texts_key(d))) for d in domains}
        except redis.RedisError as exc:
            raise ExportError(f"cannot read the added items from {source}: {exc}") from exc
        finally:
            client.close()
    try:
        raw = json.loads(Path(source).read_text())
    except (OSError, ValueError) as exc:
        raise ExportError(f"--added-items {source}: not a readable JSON file ({exc})") from exc
    ok = isinstance(raw, dict) and all(
        isinstance(v, dict) and all(isinstance(i, str) and isinstance(t, str) and t for i, t in v.items())
        for v in raw.values()
    )
    if not ok:
        raise ExportError(f"--added-items {source}: expected {{domain: {{item_id: text}}}} with non-empty texts")
    return {str(d): dict(v) for d, v in raw.items()}


def added_item_vectors(tg: TextGraph, known: set[str], texts: dict[str, str]) -> tuple[list[str], np.ndarray]:
    """The ids of ``texts`` not ``known`` yet (sorted) and their item vectors (torch reference path)."""
    ids = sorted(i for i in texts if i not in known)
    if not ids:
        return [], np.zeros((0, 0), np.float32)
    return ids, tg.reference([texts[i] for i in ids])


def fold_added(
    texts: dict[str, tuple[Graph, TextGraph]],
    added: dict[str, dict[str, str]],
    index_of: dict[str, str],
    vectors: dict[str, np.ndarray],
    known: dict[str, list[str]],
) -> dict[str, list[str]]:
    """Append the added items' vectors to their domain's index vectors in ``vectors`` (in place); return domain ->
    the ids appended, in row order."""
    appended: dict[str, list[str]] = {}
    for d, wanted in sorted(added.items()):
        if not wanted:
            continue
        if d not in texts:
            raise ExportError(f"added items for domain {d!r}, but no text model of that domain is exported")
        g, tg = texts[d]
        key = index_of[g.name]
        others = [k for k in vectors if k != key and k.split(".")[0] == d]
        if others:
            raise ExportError(f"added {d} items: the domain has a second item space {others} they cannot join")
        ids, vecs = added_item_vectors(tg, set(known[d]), wanted)
        if ids:
            vectors[key] = np.concatenate([vectors[key], vecs.astype(np.float32)])
            appended[d] = ids
    return appended
