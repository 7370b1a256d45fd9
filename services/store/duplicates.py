"""Redis storage of the duplicate report: judged pairs, groups, decisions, what was scanned.

Key layout, under the same prefix `p` as the rest of the store (services/store/__init__.py):

    p:dups:pairs:<model_key>     hash    "<id> <id>" (ids sorted) -> "<verdict> <score> <contains>"
    p:dups:scanned:<model_key>   string  the seq (Store's clock) the last finished scan covered
    p:dups:group:<group_id>      hash    group_id, tier, status, members (JSON [{"id","score","edited"}]),
                                         keep (JSON [ids]), rule, deleted (JSON [ids]), updated_at,
                                         resolved_at
    p:dups:list:<status>:<tier>  zset    group ids, all scored 0: ordered by id (the listing's cursor)
    p:dups:of                    hash    image id -> its group's id
    p:dups:grouping:<job_id>     string  taken by the one task that groups a finished scan (expires)
    p:dups:resolving:<group_id>  string  taken by the one request resolving the group (expires)
    p:dups:judged:<job_id>       hash    pair digest -> the range of the scan that judges it (so a
                                         pair two ranges both find is judged once); dropped when
                                         the scan is grouped

Decisions are kept by the scripts (each names every key it touches), atomically against concurrent
requests: a rescan writes open groups only, and never overwrites a resolved group unless the new
version has a member the resolved one did not have (then it is open again, under the same id).
"""
from __future__ import annotations

import hashlib
import json
import time

from services.store.connection import script_factory

STATUSES = ("open", "resolved")
JUDGED_TTL_S = 86400  # a scan's judged-pairs record outlives any scan
TIERS = ("exact", "copy")

# Every group script gets KEYS: the group, the member map, then the four lists in the order of
# _list_keys (open exact, open copy, resolved exact, resolved copy): a script names every key it
# touches (legal on a Redis Cluster, where the prefix is one hash tag).
_LISTS = """
local LISTS = {open = {exact = KEYS[3], copy = KEYS[4]}, resolved = {exact = KEYS[5], copy = KEYS[6]}}
local function unlist(gid)
  for i = 3, 6 do redis.call('ZREM', KEYS[i], gid) end
end
local function forget_members(gid)
  local raw = redis.call('HGET', KEYS[1], 'members')
  if not raw then return end
  for _, m in ipairs(cjson.decode(raw)) do
    if redis.call('HGET', KEYS[2], m.id) == gid then redis.call('HDEL', KEYS[2], m.id) end
  end
end
"""
# ARGV: group id, tier, members JSON, keep JSON, now. 0 (nothing written) for a resolved group
# that the new members do not extend.
_PUT_GROUP = _LISTS + """
local gid = ARGV[1]
local members = cjson.decode(ARGV[3])
if redis.call('HGET', KEYS[1], 'status') == 'resolved' then
  local old = {}
  for _, m in ipairs(cjson.decode(redis.call('HGET', KEYS[1], 'members'))) do old[m.id] = true end
  local joined = false
  for _, m in ipairs(members) do if not old[m.id] then joined = true end end
  if not joined then return 0 end
end
unlist(gid)
forget_members(gid)
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'group_id', gid, 'tier', ARGV[2], 'status', 'open', 'members', ARGV[3],
           'keep', ARGV[4], 'updated_at', ARGV[5])
redis.call('ZADD', LISTS.open[ARGV[2]], 0, gid)
for _, m in ipairs(members) do redis.call('HSET', KEYS[2], m.id, gid) end
return 1
"""
# ARGV: group id. Only an open group goes.
_DROP_OPEN_GROUP = _LISTS + """
if redis.call('HGET', KEYS[1], 'status') ~= 'open' then return 0 end
unlist(ARGV[1])
forget_members(ARGV[1])
redis.call('DEL', KEYS[1])
return 1
"""
# ARGV: group id, keep JSON, deleted JSON, rule, now. -1: no such group.
_RESOLVE = _LISTS + """
local tier = redis.call('HGET', KEYS[1], 'tier')
if not tier then return -1 end
unlist(ARGV[1])
redis.call('HSET', KEYS[1], 'status', 'resolved', 'keep', ARGV[2], 'deleted', ARGV[3], 'rule', ARGV[4],
           'resolved_at', ARGV[5], 'updated_at', ARGV[5])
redis.call('ZADD', LISTS.resolved[tier], 0, ARGV[1])
return 1
"""
# KEYS: the scan's judged pairs. ARGV: the range, ttl, pair digests. 1 for each pair this range
# judges: new, or taken by this same range before (a range delivered again judges its pairs again).
_CLAIM_PAIRS = """
local out = {}
for i = 3, #ARGV do
  local owner = redis.call('HGET', KEYS[1], ARGV[i])
  if not owner then redis.call('HSET', KEYS[1], ARGV[i], ARGV[1]) end
  out[#out + 1] = (not owner or owner == ARGV[1]) and 1 or 0
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return out
"""


def _group(raw: dict) -> dict:
    g = {k.decode(): v.decode() for k, v in raw.items()}
    out = {"group_id": g["group_id"], "tier": g["tier"], "status": g["status"],
           "members": json.loads(g["members"]), "keep": json.loads(g["keep"]),
           "deleted": json.loads(g.get("deleted", "[]")), "rule": g.get("rule"),
           "updated_at": float(g["updated_at"])}
    return out | {"resolved_at": float(g["resolved_at"]) if "resolved_at" in g else None}


class DuplicateStore:
    """Beside a `Store`: its client and key prefix, its own scripts."""

    def __init__(self, store):
        self.redis, self.key = store.redis, store.key
        script = script_factory(self.redis)  # on a cluster: whole scripts (a new primary has none cached)
        self._put_group, self._drop_open_group = script(_PUT_GROUP), script(_DROP_OPEN_GROUP)
        self._resolve, self._claim_pairs = script(_RESOLVE), script(_CLAIM_PAIRS)

    def _list_key(self, status: str, tier: str) -> str:
        return self.key("dups", "list", status, tier)

    def _group_keys(self, group_id: str) -> list[str]:
        """The KEYS of every group script (see _LISTS)."""
        return [self.key("dups", "group", group_id), self.key("dups", "of"),
                *(self._list_key(status, tier) for status in STATUSES for tier in TIERS)]

    # -- pairs and the scan's clock ---------------------------------------------------------
    def add_pairs(self, model_key: str, pairs: list[tuple[str, str, str, float, int]]) -> None:
        """(a, b, verdict, score, contains) with a < b; a pair judged again is overwritten."""
        if pairs:
            self.redis.hset(self.key("dups", "pairs", model_key), mapping={
                f"{a} {b}": f"{verdict} {score:.6f} {contains}" for a, b, verdict, score, contains in pairs})

    def pairs(self, model_key: str) -> list[tuple[str, str, str, float, int]]:
        out = []
        for field, value in self.redis.hscan_iter(self.key("dups", "pairs", model_key), count=5000):
            (a, b), (verdict, score, contains) = field.decode().split(), value.decode().split()
            out.append((a, b, verdict, float(score), int(contains)))
        return sorted(set(out))  # HSCAN may repeat a field while the hash is resized

    def drop_pairs(self, model_key: str, pairs: list[tuple[str, str]]) -> None:
        for start in range(0, len(pairs), 5000):
            self.redis.hdel(self.key("dups", "pairs", model_key), *(f"{a} {b}" for a, b in pairs[start:start + 5000]))

    def scanned_seq(self, model_key: str) -> int:
        return int(self.redis.get(self.key("dups", "scanned", model_key)) or 0)

    def set_scanned_seq(self, model_key: str, seq: int) -> None:
        self.redis.set(self.key("dups", "scanned", model_key), seq)

    def claim_grouping(self, job_id: str, ttl_s: float) -> bool:
        """True for the one caller that groups this scan's pairs; the claim lapses after ttl_s (its
        holder died: then the job's watchdog sends the grouping step again)."""
        return bool(self.redis.set(self.key("dups", "grouping", job_id), 1, nx=True, px=int(ttl_s * 1000)))

    def release_grouping(self, job_id: str) -> None:
        self.redis.delete(self.key("dups", "grouping", job_id))

    def claim_resolving(self, group_id: str, ttl_s: float) -> bool:
        """True for the one request that resolves this group now (two resolves that each keep
        another member and delete the others would delete them all); lapses after ttl_s."""
        return bool(self.redis.set(self.key("dups", "resolving", group_id), 1, nx=True, px=int(ttl_s * 1000)))

    def release_resolving(self, group_id: str) -> None:
        self.redis.delete(self.key("dups", "resolving", group_id))

    def claim_pairs(self, job_id: str, range_key: str, pairs: list[tuple[str, str]],
                    ttl_s: float = JUDGED_TTL_S) -> list[bool]:
        """For each pair: whether this range of the scan judges it (no other range claimed it)."""
        out = []
        for start in range(0, len(pairs), 5000):
            digests = [hashlib.blake2b(f"{a} {b}".encode(), digest_size=8).digest()
                       for a, b in pairs[start:start + 5000]]
            out += [bool(r) for r in self._claim_pairs(keys=[self.key("dups", "judged", job_id)],
                                                       args=[range_key, int(ttl_s), *digests])]
        return out

    def forget_judged(self, job_id: str) -> None:
        self.redis.delete(self.key("dups", "judged", job_id))

    # -- groups -----------------------------------------------------------------------------
    def put_open_group(self, group_id: str, tier: str, members: list[dict], keep: list[str]) -> bool:
        """Write an open group; False when it is resolved and `members` adds nobody to it."""
        args = [group_id, tier, json.dumps(members), json.dumps(keep), time.time()]
        return bool(self._put_group(keys=self._group_keys(group_id), args=args))

    def drop_open_group(self, group_id: str) -> bool:
        return bool(self._drop_open_group(keys=self._group_keys(group_id), args=[group_id]))

    def resolve(self, group_id: str, keep: list[str], deleted: list[str], rule: str | None) -> bool:
        """Record a decision; False if there is no such group."""
        args = [group_id, json.dumps(keep), json.dumps(deleted), rule or "", time.time()]
        return self._resolve(keys=self._group_keys(group_id), args=args) > 0

    def get_group(self, group_id: str) -> dict | None:
        raw = self.redis.hgetall(self.key("dups", "group", group_id))
        return _group(raw) if raw else None

    def get_groups(self, group_ids: list[str]) -> list[dict]:
        pipe = self.redis.pipeline(transaction=False)
        for gid in group_ids:
            pipe.hgetall(self.key("dups", "group", gid))
        return [_group(raw) for raw in pipe.execute() if raw]

    def group_of(self, image_ids: list[str]) -> dict[str, str]:
        """image id -> group id, for the images that are in a group."""
        found = self.redis.hmget(self.key("dups", "of"), image_ids) if image_ids else []
        return {i: g.decode() for i, g in zip(image_ids, found) if g is not None}

    def group_ids(self, statuses=STATUSES) -> list[str]:
        pipe = self.redis.pipeline(transaction=False)
        for status in statuses:
            for tier in TIERS:
                pipe.zrange(self._list_key(status, tier), 0, -1)
        return sorted(g.decode() for ids in pipe.execute() for g in ids)

    def list_groups(self, statuses=STATUSES, tiers=TIERS, after: str | None = None,
                    limit: int = 50) -> tuple[list[dict], str | None, int]:
        """(groups ordered by id after the cursor `after`, the next cursor or None, the total)."""
        keys = [self._list_key(s, t) for s in statuses for t in tiers]
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.zrangebylex(key, f"({after}" if after else "-", "+", start=0, num=limit + 1)
        for key in keys:
            pipe.zcard(key)
        results = pipe.execute()
        ids = sorted(g.decode() for chunk in results[:len(keys)] for g in chunk)
        page = ids[:limit]
        return self.get_groups(page), (page[-1] if len(ids) > limit else None), sum(results[len(keys):])
