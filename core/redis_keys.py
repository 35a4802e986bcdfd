"""The Redis key layout (DESIGN §5), shared by the service, the refresh job and the demo seeder.

Every key of one user carries the hash tag ``{u:<user_id>}``, so all of a user's keys live in one slot under
Redis Cluster and one script call may touch them together (the event append: service.adapters.append_script):

* ``cdrec:{u:<user_id>}:seq:<domain>``: LIST of external item ids, oldest first, trimmed to the bundle's
  ``max_len`` (append = one Lua script call per user: dedup, RPUSH, LTRIM, optional TTL);
* ``cdrec:{u:<user_id>}:emb:<domain>``: a cached user vector (float32 bytes) and the model version that made it,
  written by the refresh job and used only when that version is the serving one and the user's lists still
  have the fingerprint it was encoded from (format below, ``pack_embedding``);
* ``cdrec:{u:<user_id>}:ev:<event_id>``: a marker (STRING "1") that ``user_id`` sent an event with that
  client ``event_id``, set with the event's append (SET NX PX) and expiring after ``redis.event_dedup_s``: a
  retried event finds it and is not appended twice (``event_key``);
* ``cdrec:refresh:<domain>:cursor``: the refresh job's resumable SCAN cursor (``refresh_cursor_key``);
* on a Redis Cluster the refresh job's progress is per slot instead (``refresh_pass_key``, ``refresh_slot_key``);
* ``cdrec:items:<domain>``: HASH item id -> text of the items added through ``POST /v1/items``
  (``item_texts_key``), replayed into every bundle the service loads;
* ``cdrec:items:<domain>:vec:<fingerprint>``: their vectors as one text item encoder made them, a cache for that
  replay (``item_vectors_key``).

User ids must not contain ``{`` or ``}`` (the service refuses them): a brace would move the hash tag.
"""

from __future__ import annotations

import hashlib
from binascii import crc_hqx
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Final

import numpy as np
import numpy.typing as npt

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


def event_key(user_id: str, event_id: str) -> str:
    """The dedup marker of ``user_id``'s event ``event_id`` (lives ``redis.event_dedup_s``)."""
    return f"{PREFIX}:{user_tag(user_id)}:ev:{event_id}"


SEQ_MARK: Final = ":seq:"


def user_from_seq_key(key: str, domain: str) -> str | None:
    """The user id of a ``seq_key(user, domain)`` key (as SCAN returns it), None for any other key."""
    head, tail = f"{PREFIX}:{{u:", f"}}{SEQ_MARK}{domain}"
    if key.startswith(head) and key.endswith(tail) and len(key) > len(head) + len(tail):
        return key[len(head) : -len(tail)]
    return None


def seq_pattern(domain: str) -> str:
    """The SCAN MATCH pattern of every user's ``domain`` list (braces are literal in Redis globs)."""
    return f"{PREFIX}:{{u:*}}{SEQ_MARK}{domain}"


def refresh_cursor_key(domain: str) -> str:
    """``cdrec:refresh:<domain>:cursor``: the refresh job's SCAN cursor, a decimal STRING; present only while
    a pass over ``domain`` is unfinished (written in the same MSET as the embeddings of the keys before it,
    deleted when the SCAN returns 0), so a killed job resumes where its last write landed."""
    return f"{PREFIX}:refresh:{domain}:cursor"


def item_vectors_key(domain: str, fingerprint: str) -> str:
    """``cdrec:items:<domain>:vec:<fingerprint>``: HASH external item id -> ``<sha256(text)[:16]>:<base64 float32
    vector>`` of the items added through ``POST /v1/items``, as the text item encoder ``fingerprint`` (its graph
    and tokenizer hashes) encoded them. A cache: a restart replays 20k items in seconds instead of re-encoding
    them all (minutes); an entry whose text hash differs from the stored text is ignored."""
    return f"{PREFIX}:items:{domain}:vec:{fingerprint}"


SLOTS: Final = 16384


def key_slot(key: str) -> int:
    """The Redis Cluster hash slot of ``key`` (CRC16 of its hash tag, or of the whole key without one)."""
    raw = key.encode()
    start = raw.find(b"{")
    if start > -1:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1 : end]
    return crc_hqx(raw, 0) % SLOTS


@cache
def _slot_tags() -> tuple[str, ...]:
    tags: list[str | None] = [None] * SLOTS
    missing, n = SLOTS, 0
    while missing:  # ~170k CRCs (coupon collector), ~0.1 s once per process
        tag = f"s{n}"
        slot = crc_hqx(tag.encode(), 0) % SLOTS
        if tags[slot] is None:
            tags[slot] = tag
            missing -= 1
        n += 1
    return tuple(t for t in tags if t is not None)


def slot_tag(slot: int) -> str:
    """A hash tag ``{s<n>}`` whose key slot is ``slot``: a job key placed in the slot whose data it describes."""
    return f"{{{_slot_tags()[slot]}}}"


def refresh_pass_key(domain: str) -> str:
    """``cdrec:refresh:<domain>:pass`` (Redis Cluster): the id of the unfinished refresh pass over ``domain``;
    deleted when the pass completes."""
    return f"{PREFIX}:refresh:{domain}:pass"


def refresh_slot_key(domain: str, slot: int) -> str:
    """``cdrec:{s<n>}:refresh:<domain>:done`` (Redis Cluster): in hash slot ``slot`` itself, holds the pass id once
    that slot's users are stored; written in the same MSET as their vectors (one slot, so atomic), so a killed
    pass resumes at the slots not yet marked with the current pass id."""
    return f"{PREFIX}:{slot_tag(slot)}:refresh:{domain}:done"


def item_texts_key(domain: str) -> str:
    """``cdrec:items:<domain>``: HASH external item id -> item text of every item added through
    ``POST /v1/items``. Written before the item is served; replayed (re-encoded from its text) into each bundle
    the service loads, so a restart or reload keeps them until an export includes them in the bundle itself."""
    return f"{PREFIX}:items:{domain}"


# -- the cached embedding (``emb_key``) -------------------------------------------------------------------
# One STRING: b"<version>|<fingerprint>|" followed by the float32 little-endian vector bytes (D * 4 bytes).
# ``version`` is the bundle version that encoded it (never contains "|"); ``fingerprint`` is
# ``sequence_fingerprint`` of the lists the encoder read (16 hex chars). A reader uses the vector only when
# both equal what it would compute now; anything else (missing, malformed, older) means "encode it live".
# Strings, not hashes, so the refresh job writes a whole batch with one MSET (4-6x pipelined SETs,
# PERFORMANCE.md); on Redis Cluster the job groups its MSETs by slot (service.refresh_cluster).

EMB_SEP: Final = b"|"


def sequence_fingerprint(sequences: Mapping[str, Sequence[str]], domains: Sequence[str]) -> str:
    """A cheap digest of the raw item-id lists of ``domains`` (order and domain boundaries kept)."""
    h = hashlib.blake2b(digest_size=8)
    for domain in domains:
        h.update(domain.encode())
        h.update(b"\x1e")
        h.update("\x1f".join(sequences.get(domain, ())).encode())
        h.update(b"\x1d")
    return h.hexdigest()


def pack_embedding(version: str, fingerprint: str, vector: npt.NDArray[np.float32]) -> bytes:
    if "|" in version:
        raise ValueError(f"bundle version {version!r} contains '|'")
    head = f"{version}|{fingerprint}|".encode()
    return head + np.ascontiguousarray(vector, dtype="<f4").tobytes()


def unpack_embedding(raw: bytes | None) -> tuple[str, str, npt.NDArray[np.float32]] | None:
    """(version, fingerprint, vector) of a cached embedding; None when absent or malformed."""
    if not raw:
        return None
    parts = raw.split(EMB_SEP, 2)
    if len(parts) != 3 or not parts[2] or len(parts[2]) % 4:
        return None
    vector = np.frombuffer(parts[2], dtype="<f4").astype(np.float32)
    return parts[0].decode(errors="replace"), parts[1].decode(errors="replace"), vector
