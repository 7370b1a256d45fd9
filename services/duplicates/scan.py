"""A duplicate scan as plain functions; worker.tasks runs them as one job.

1. `plan`: which images to look at: all of them, or (incremental, the default) those whose vector
   was written after the last finished scan (`Store`'s seq clock), cut into seq ranges of CHUNK
   images, one task each.
2. `scan_range`: the range's images against the whole index (published file plus fresh items), each
   candidate pair judged, the duplicates among them kept (`DuplicateStore.add_pairs`). A new image
   meets every old one it duplicates this way: pairs among old images were judged by earlier scans.
3. `regroup`: every kept pair whose images still exist, grouped (services/duplicates/grouping.py),
   with a proposed keeper; decisions are kept: a resolved group comes back only when a new member
   joins it (the rule lives in DuplicateStore's scripts).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from services.store.duplicates import DuplicateStore
from services.duplicates import keepers
from services.duplicates.grouping import Group, Pair, group_pairs
from services.duplicates.judge import Judge
from services.duplicates.pairs import candidate_pairs
from services.store import Store

CHUNK = 2000
READ_BATCH = 1000


@dataclass(frozen=True)
class Range:
    after: int  # seq, exclusive
    upto: int  # seq, inclusive
    count: int  # images in it when planned


def plan(store: Store, dups: DuplicateStore, model_key: str, full: bool = False,
         chunk: int = CHUNK) -> tuple[list[Range], int]:
    """(the ranges to scan, the seq the scan covers once they are done)."""
    upto = store.current_seq()
    after = 0 if full else dups.scanned_seq(model_key)
    seqs = [seq for _, seq in store.added_since(model_key, after, upto)]
    ranges, start = [], after
    for i in range(0, len(seqs), chunk):
        part = seqs[i:i + chunk]
        end = upto if i + chunk >= len(seqs) else part[-1]
        ranges.append(Range(start, end, len(part)))
        start = end
    return ranges, upto


def scan_range(store: Store, dups: DuplicateStore, searcher, judge: Judge, model_key: str,
               after: int, upto: int, job_id: str) -> int:
    """Judge the range's images against the index; returns the duplicate pairs found. A pair that
    another range of the same scan found as well (each image among the other's neighbours) is
    judged by whichever range claims it first."""
    ids = [iid for iid, _ in store.added_since(model_key, after, upto)]
    candidates = []
    for start in range(0, len(ids), READ_BATCH):
        found, vectors = store.get_vectors(model_key, ids[start:start + READ_BATCH])
        if found:
            candidates += candidate_pairs(searcher, found, vectors)
    candidates = sorted({(a, b) for a, b, _ in candidates})
    claimed = dups.claim_pairs(job_id, f"{after}-{upto}", candidates)
    candidates = [pair for pair, mine in zip(candidates, claimed) if mine]
    verdicts = judge.judge(candidates)
    kept = [(a, b, v.verdict, v.score, v.contains) for (a, b), v in zip(candidates, verdicts)
            if v.verdict in ("exact", "copy")]
    dups.add_pairs(model_key, kept)
    return len(kept)


def regroup(store: Store, dups: DuplicateStore, model_key: str,
            rule: str = keepers.DEFAULT_RULE) -> dict:
    """Rebuild the open groups from the kept pairs; returns counts."""
    stored = dups.pairs(model_key)
    ids = sorted({x for a, b, *_ in stored for x in (a, b)})
    gone = {i for i, deleted in zip(ids, store.deleted_among(ids)) if deleted}
    dups.drop_pairs(model_key, [(a, b) for a, b, *_ in stored if a in gone or b in gone])
    groups = group_pairs([Pair(a, b, v, s, c) for a, b, v, s, c in stored if a not in gone and b not in gone])

    members = [m for g in groups for m in g.members]
    records = dict(zip(members, store.get_images(members)))
    owner = dups.group_of(members)
    previous = {g["group_id"]: g for g in dups.get_groups(sorted(set(owner.values())))}
    open_before = set(dups.group_ids(statuses=("open",)))
    written, kept_resolved, used = 0, 0, set()
    for group in groups:
        gid = _group_id(group, owner, previous, used)
        used.add(gid)
        keep = keepers.choose_keeper([records[m] or {"id": m} for m in group.members], rule, group.edited)
        listed = [{"id": m, "score": round(group.scores[m], 6), "edited": m in group.edited} for m in group.members]
        if dups.put_open_group(gid, group.tier, listed, [keep]):
            written += 1
        else:
            kept_resolved += 1
    dropped = sum(dups.drop_open_group(gid) for gid in sorted(open_before - used))
    return {"groups": len(groups), "open": written, "resolved_kept": kept_resolved, "dropped": dropped,
            "pairs": len(stored) - len([p for p in stored if p[0] in gone or p[1] in gone])}


def _group_id(group: Group, owner: dict[str, str], previous: dict[str, dict], used: set[str]) -> str:
    """A group keeps the id of the earlier group it overlaps most (a resolved one first: it is the
    one a new member reopens); a group with no predecessor is named after its members."""
    overlap: dict[str, int] = {}
    for m in group.members:
        if m in owner and owner[m] in previous and owner[m] not in used:
            overlap[owner[m]] = overlap.get(owner[m], 0) + 1
    if overlap:
        return min(overlap, key=lambda g: (previous[g]["status"] != "resolved", -overlap[g], g))
    return hashlib.sha256(" ".join(group.members).encode()).hexdigest()[:16]
