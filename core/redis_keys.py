"""The Redis key layout (DESIGN §5), shared by the service, the refresh job and the demo seeder.

Every key of one user carries the hash tag ``{u:<user_id>}``, so all of a user's keys live in one slot under
Redis Cluster and one MULTI (or script) may touch them together:

* ``cdrec:{u:<user_id>}:seq:<domain>``: LIST of external item ids, oldest first, trimmed to the bundle's
  ``max_len`` (append = RPUSH + LTRIM in one MULTI);
* ``cdrec:{u:<user_id>}:emb:<domain>``: a cached user vector (float32 bytes) and the model version that made it,
  written by the refresh job and used only when that version is the serving one.

User ids must not contain ``{`` or ``}`` (the service refuses them): a brace would move the hash tag.
"""

from __future__ import annotations

from typing import Final

PREFIX: Final = "cdrec"
FORBIDDEN_IN_IDS: Final = frozenset("{}")


def user_tag(user_id: str) -> str:
    return f"{{u:{user_id}}}"


def seq_key(user_id: str, domain: str) -> str:
    """The LIST of ``user_id``'s item ids in ``domain``, oldest first."""
    return f"{PREFIX}:{user_tag(user_id)}:seq:{domain}"


def emb_key(user_id: str, domain: str) -> str:
    """The refresh job's cached user vector of ``user_id`` in ``domain``'s item space."""
    return f"{PREFIX}:{user_tag(user_id)}:emb:{domain}"
