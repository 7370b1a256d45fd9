"""Which member of a duplicate group to keep.

A rule ranks the members by one property of their records; originals come before edited copies
(a member that another member contains, e.g. a crop of it) whatever the rule says, and ties go to
the larger picture, then the larger file, then the older one, then the smaller id (so the choice is
always the same).
"""
from __future__ import annotations

RULES = ("most_pixels", "largest_file", "oldest", "newest")
DEFAULT_RULE = "most_pixels"


def _pixels(record: dict) -> int:
    return (record.get("width") or 0) * (record.get("height") or 0)


def _key(rule: str, record: dict, edited: bool) -> tuple:
    created = record.get("created_at") or 0.0
    primary = {"most_pixels": _pixels(record), "largest_file": record.get("size_bytes") or 0,
               "oldest": -created, "newest": created}[rule]
    # max() of these: not edited, the rule, then the tie-breaks (the id last, smaller wins)
    return (not edited, primary, _pixels(record), record.get("size_bytes") or 0, -created,
            [-ord(c) for c in record["id"]])


def choose_keeper(records: list[dict], rule: str = DEFAULT_RULE, edited: set[str] = frozenset()) -> str:
    """The id to keep among image records (dicts with id, width, height, size_bytes, created_at)."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, not {rule!r}")
    if not records:
        raise ValueError("a group without members has no keeper")
    return max(records, key=lambda r: _key(rule, r, r["id"] in edited))["id"]
