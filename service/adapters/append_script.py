"""The event append as ONE Lua script call per user (``APPEND_EVENTS``), and the KEYS/ARGV of that call.

Every key a call names carries the user's hash tag ``{u:<id>}`` (core.redis_keys), so the call runs on one
Redis and on a Redis Cluster alike, and a batch of users is a plain (non-transactional) pipeline of such
calls: no MULTI, no cross-slot command. Inside the script, for one user and atomically:

1. every list it writes must be a LIST (or absent): otherwise it answers a WRONGTYPE error having written
   nothing (a script is not rolled back, so this check comes before the first write);
2. per event with a client ``event_id``: ``SET <dedup key> 1 NX PX <dedup_ms>``; taken = a duplicate, skipped;
3. RPUSH the new items per list (arrival order), LTRIM to the newest ``max_len``;
4. with a user TTL, PEXPIRE on every list and cached vector of the user (all domains, not only the ones
   written: the user is active), so an inactive user's data expires ``user_ttl_s`` after their last event;
5. LRANGE of every list the caller asked back (``read``: the domains vector on write encodes from), as they
   stand after this append, in the same atomic call: the write path needs no second round trip to re-read
   them, and what it encodes is exactly what this append left (issue 16).

It answers ``{appended, duplicates, list_1, ..., list_n}`` (one list per ``read`` domain, in that order).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from core.redis_keys import emb_key, event_key, seq_key
from service.ports import EventRecord

# KEYS: the lists written (n_lists), then further keys whose TTL is refreshed (n_touch), then the lists read back
# (n_read), then dedup keys.
# ARGV: max_len, dedup_ms, ttl_ms (0 = none), n_lists, n_touch, n_read, then per event (list index, item id,
# dedup key index or 0 when the event has no event_id).
APPEND_EVENTS = """
local max_len = tonumber(ARGV[1])
local dedup_ms = ARGV[2]
local ttl_ms = tonumber(ARGV[3])
local n_lists = tonumber(ARGV[4])
local n_touch = tonumber(ARGV[5])
local n_read = tonumber(ARGV[6])
for i = 1, n_lists do
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t ~= 'list' and t ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' holds a ' .. t .. ', not a list')
  end
end
local pending = {}
local appended, duplicates = 0, 0
for i = 7, #ARGV, 3 do
  local list, dedup = tonumber(ARGV[i]), tonumber(ARGV[i + 2])
  if dedup == 0 or redis.call('SET', KEYS[dedup], '1', 'NX', 'PX', dedup_ms) then
    local p = pending[list]
    if p == nil then
      p = {}
      pending[list] = p
    end
    p[#p + 1] = ARGV[i + 1]
    appended = appended + 1
  else
    duplicates = duplicates + 1
  end
end
for list, items in pairs(pending) do
  -- unpack puts every item on the Lua stack: push in chunks well below its limit (~8000)
  for j = 1, #items, 1000 do
    redis.call('RPUSH', KEYS[list], unpack(items, j, math.min(j + 999, #items)))
  end
  redis.call('LTRIM', KEYS[list], -max_len, -1)
end
if ttl_ms > 0 then
  for i = 1, n_lists + n_touch do
    redis.call('PEXPIRE', KEYS[i], ttl_ms)
  end
end
local out = {appended, duplicates}
for i = n_lists + n_touch + 1, n_lists + n_touch + n_read do
  out[#out + 1] = redis.call('LRANGE', KEYS[i], 0, -1)
end
return out
"""
APPEND_SHA = hashlib.sha1(APPEND_EVENTS.encode()).hexdigest()


def append_call(
    user_id: str,
    records: Sequence[EventRecord],
    max_len: int,
    domains: Sequence[str],
    dedup_ms: int,
    ttl_ms: int,
    read: Sequence[str] = (),
) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV of one user's ``APPEND_EVENTS`` call; ``read``: the domains whose lists it answers."""
    lists = list(dict.fromkeys(r.domain for r in records))
    event_ids = list(dict.fromkeys(r.event_id for r in records if r.event_id is not None))
    touch: list[str] = []
    if ttl_ms > 0:
        others = [d for d in domains if d not in lists]
        touch = [seq_key(user_id, d) for d in others] + [emb_key(user_id, d) for d in (*lists, *others)]
    reads = [seq_key(user_id, d) for d in read]
    keys = [seq_key(user_id, d) for d in lists] + touch + reads + [event_key(user_id, e) for e in event_ids]
    list_at = {d: i + 1 for i, d in enumerate(lists)}  # KEYS are 1-based in Lua
    dedup_at = {e: len(lists) + len(touch) + len(reads) + i + 1 for i, e in enumerate(event_ids)}
    args: list[str | int] = [max_len, dedup_ms, ttl_ms, len(lists), len(touch), len(reads)]
    for r in records:
        args += [list_at[r.domain], r.item_id, 0 if r.event_id is None else dedup_at[r.event_id]]
    return keys, args
