"""The one in-memory interactions form every trainer reads (DESIGN §2).

An :class:`Interactions` is a DataFrame with one row per interaction and the columns

* ``user``   int64, contiguous 0..n_users-1 over all domains (``user_ids[u]`` is the external id);
* ``item``   int64, contiguous 1..n_items(domain) **per domain** (0 is padding; ``item_ids[d][i]`` is external);
* ``domain`` str, the domain name;
* ``order``  int64, a timestamp or a position: only its order within one user matters;
* ``rating`` float64, NaN for implicit feedback;

plus the id maps and optional item text. Loaders build it with :func:`from_frame`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

PAD = "<pad>"


class DataError(ValueError):
    """Malformed input data: the message names the file, the line and what is wrong."""


@dataclass
class Interactions:
    frame: pd.DataFrame
    user_ids: list[str]
    item_ids: dict[str, list[str]]  # domain -> external ids; index 0 is PAD
    item_text: dict[str, list[str]] = field(default_factory=dict)  # domain -> text per internal id (0 = "")
    name: str = "interactions"

    @property
    def domains(self) -> list[str]:
        return sorted(self.item_ids)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    def n_items(self, domain: str) -> int:
        """Number of real items in ``domain`` (internal ids are 1..n_items)."""
        return len(self.item_ids[domain]) - 1

    @property
    def has_ratings(self) -> bool:
        return bool(self.frame["rating"].notna().any())

    def sequences(self, domain: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """user -> (items, orders) of ``domain`` in time order (stable on ties)."""
        sub = self.frame[self.frame["domain"] == domain].sort_values(["user", "order"], kind="stable")
        out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        users = sub["user"].to_numpy()
        items = sub["item"].to_numpy()
        orders = sub["order"].to_numpy()
        if len(users) == 0:
            return out
        cuts = np.flatnonzero(np.diff(users)) + 1
        for u_items, u_orders, u in zip(
            np.split(items, cuts), np.split(orders, cuts), users[np.r_[0, cuts]], strict=True
        ):
            out[int(u)] = (u_items, u_orders)
        return out

    def stats(self) -> pd.DataFrame:
        """Users, items, interactions and overlap per domain, one row per domain."""
        f = self.frame
        users_by_domain = {d: set(f.loc[f["domain"] == d, "user"].unique()) for d in self.domains}
        rows = []
        for d in self.domains:
            others = set().union(*(users_by_domain[o] for o in self.domains if o != d))
            sub = f[f["domain"] == d]
            rows.append(
                {
                    "domain": d,
                    "users": len(users_by_domain[d]),
                    "items": self.n_items(d),
                    "interactions": len(sub),
                    "overlap_users": len(users_by_domain[d] & others),
                    "mean_len": round(len(sub) / max(1, len(users_by_domain[d])), 2),
                    "ratings": bool(sub["rating"].notna().any()),
                }
            )
        return pd.DataFrame(rows)


def from_frame(
    raw: pd.DataFrame,
    name: str = "interactions",
    item_text: dict[str, dict[str, str]] | None = None,
    item_catalog: dict[str, list[str]] | None = None,
) -> Interactions:
    """Build :class:`Interactions` from a frame of external ids.

    ``raw`` has columns ``user_id, item_id, domain, order`` and optionally ``rating``; ids are strings.
    ``item_catalog`` lists every item of a domain (items never interacted with still get an id, so a full
    ranking covers the whole catalogue); ``item_text`` maps domain -> external item id -> text.
    """
    raw = raw.copy()
    for col in ("user_id", "item_id", "domain"):
        raw[col] = raw[col].astype(str)
    if "rating" not in raw:
        raw["rating"] = np.nan
    user_ids = sorted(raw["user_id"].unique())
    item_ids: dict[str, list[str]] = {}
    item_col = np.zeros(len(raw), dtype=np.int64)
    for d in sorted(raw["domain"].unique()):
        mask = (raw["domain"] == d).to_numpy()
        seen = raw.loc[mask, "item_id"].unique()
        catalog = list((item_catalog or {}).get(d, []))
        extra = sorted(set(seen) - set(catalog))
        ids = [PAD, *catalog, *extra]
        item_ids[d] = ids
        # Index.get_indexer: a hash lookup in C; Series.map(dict) on string columns costs ~2 s per 1M rows
        item_col[mask] = pd.Index(ids).get_indexer(raw.loc[mask, "item_id"])
    frame = pd.DataFrame(
        {
            "user": pd.Index(user_ids).get_indexer(raw["user_id"]).astype(np.int64),
            "item": item_col,
            "domain": raw["domain"].to_numpy(),
            "order": raw["order"].to_numpy(np.int64),
            "rating": raw["rating"].to_numpy(np.float64),
        }
    )
    texts: dict[str, list[str]] = {}
    if item_text:
        for d, ids in item_ids.items():
            table = item_text.get(d, {})
            texts[d] = ["" if i == 0 else table.get(x, "") for i, x in enumerate(ids)]
    return Interactions(frame=frame, user_ids=list(user_ids), item_ids=item_ids, item_text=texts, name=name)
