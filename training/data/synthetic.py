"""Synthetic two-domain data with planted cross-domain structure, deterministic by seed.

Every user has one latent taste (a sparse mixture over ``n_topics`` topics) that drives BOTH domains: each
domain's items are split into topics, and a user's next item is drawn from a topic of their taste, walking
forward along that topic's chain of items (so order matters and a sequence model can learn transitions).
A user keeps to the topic of their previous item in a domain with probability ``sticky``. The target domain
is short per user while the source domain is long, so the source history carries most of what is knowable
about a user's taste: a model that reads it should beat one that does not.

``overlap`` is the fraction of users active in both domains; the others appear in one domain only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from training.data.interactions import Interactions, from_frame

DOMAINS = ("book", "music")


def generate(
    n_users: int = 2000,
    n_items: tuple[int, int] = (400, 300),
    n_topics: int = 20,
    mean_len: tuple[float, float] = (14.0, 5.0),
    overlap: float = 0.8,
    seed: int = 0,
    domains: tuple[str, str] = DOMAINS,
    noise: float = 0.05,
    sticky: float = 0.5,
) -> pd.DataFrame:
    """Return a frame ``user_id, item_id, domain, position`` (position = global time order per user)."""
    if not 0 <= overlap <= 1:
        raise ValueError(f"overlap must be in [0, 1], got {overlap}")
    rng = np.random.default_rng(seed)
    # each domain's items are dealt to topics; a topic is an ordered chain of items
    chains = []
    for n in n_items:
        perm = rng.permutation(np.arange(1, n + 1))
        chains.append(np.array_split(perm, n_topics))
    rows: list[tuple[str, str, str, int]] = []
    for u in range(n_users):
        taste = rng.dirichlet(np.full(n_topics, 0.1))
        active = (0, 1) if rng.random() < overlap else (int(rng.integers(0, 2)),)
        lengths = {d: max(3, int(rng.poisson(mean_len[d]))) for d in active}
        # interleave the two domains' events in time
        events = np.concatenate([np.full(lengths[d], d) for d in active])
        rng.shuffle(events)
        cursor: dict[int, dict[int, int]] = {d: {} for d in active}  # topic -> position along its chain
        last_topic: dict[int, int] = {}
        for pos, d in enumerate(events.tolist()):
            if rng.random() < noise:
                item = int(rng.integers(1, n_items[d] + 1))
            else:
                if d in last_topic and rng.random() < sticky:
                    topic = last_topic[d]  # keep going along the same chain
                else:
                    topic = int(rng.choice(n_topics, p=taste))
                last_topic[d] = topic
                chain = chains[d][topic]
                step = cursor[d].get(topic, int(rng.integers(0, len(chain))))
                item = int(chain[step % len(chain)])
                cursor[d][topic] = step + 1
            rows.append((f"u{u}", f"{domains[d][0]}{item}", domains[d], pos))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "domain", "position"])


def synthetic_interactions(seed: int = 0, **kwargs: object) -> Interactions:
    """``generate`` turned into the one interactions form, with every generated item in the catalogue."""
    n_items = kwargs.get("n_items", (400, 300))
    domains = kwargs.get("domains", DOMAINS)
    frame = generate(seed=seed, **kwargs).rename(columns={"position": "order"})  # type: ignore[arg-type]
    catalog = {d: [f"{d[0]}{i}" for i in range(1, n + 1)] for d, n in zip(domains, n_items, strict=True)}  # type: ignore[call-overload]
    return from_frame(frame, name=f"synthetic(seed={seed})", item_catalog=catalog)


def planted_intents(
    n_users: int = 600, n_topics: int = 8, per_topic: int = 20, seed: int = 0, domain: str = "shop"
) -> tuple[Interactions, np.ndarray]:
    """Users with two planted intents, for multi-interest models (DSS): one domain of ``n_topics`` clusters of
    ``per_topic`` items; each user has a majority topic (12 items) and a minority topic (4 items, then the held
    out one), order within a topic random. The history is shuffled except that its 2 most recent items are
    majority ones, and the last (test) item is the minority topic's next one: a single vector led by the recent
    items misses it. Returns the interactions and each internal item id's topic (index 0, padding: -1)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        a, b = rng.choice(n_topics, 2, replace=False)
        items_b = rng.choice(per_topic, 5, replace=False) + b * per_topic
        items_a = rng.choice(per_topic, 12, replace=False) + a * per_topic
        body = np.concatenate([items_b[:4], items_a[:10]])
        rng.shuffle(body)
        seq = [*body, *items_a[10:], items_b[4]]
        rows += [(f"u{u}", f"i{i}", domain, k) for k, i in enumerate(seq)]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "domain", "order"])
    data = from_frame(frame, "planted-intents", item_catalog={domain: [f"i{i}" for i in range(n_topics * per_topic)]})
    topics = np.array([-1] + [int(x[1:]) // per_topic for x in data.item_ids[domain][1:]])
    return data, topics
