"""Judged pairs -> duplicate groups: union-find with a guard against chaining.

Pairs are merged strongest first (exact before copy, then by score), Kruskal's order. Union-find
alone would join everything a path of pairs connects: a burst of near-identical frames a~b~c~d~e,
each judged a copy of the next, would become one group although a and e share little, and one
wrong pair fuses two unrelated groups. So a merge is refused when it would leave two members more
than `max_hops` judged pairs apart inside the merged group (its diameter, counted over every judged
pair among its members). With the default of 2, every member is a duplicate of every other or of a
member that is a duplicate of both: an original with its edited copies (a star) always fits, a
chain of five does not.

The result depends only on the set of pairs (a total order decides ties), so a rescan that judges
the same pairs finds the same groups.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

VERDICTS = ("exact", "copy", "similar", "none")  # strongest first; only exact and copy make groups
MAX_HOPS = 2


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    verdict: str  # "exact" or "copy"
    score: float
    contains: int = 0  # +1: a contains b (b is a crop of a), -1: the other way, 0: neither known


@dataclass
class Group:
    members: list[str]  # sorted
    tier: str  # the weakest verdict among its pairs
    edited: set[str] = field(default_factory=set)  # members another member contains (crops)
    scores: dict[str, float] = field(default_factory=dict)  # each member's strongest pair score


def _order(p: Pair):
    return VERDICTS.index(p.verdict), -p.score, min(p.a, p.b), max(p.a, p.b)


def group_pairs(pairs: list[Pair], max_hops: int = MAX_HOPS) -> list[Group]:
    """Groups of two or more members, sorted by their first member."""
    pairs = sorted((p for p in pairs if p.verdict in ("exact", "copy") and p.a != p.b), key=_order)
    neighbours: dict[str, set[str]] = defaultdict(set)
    for p in pairs:
        neighbours[p.a].add(p.b)
        neighbours[p.b].add(p.a)
    root: dict[str, str] = {}
    members: dict[str, set[str]] = {}

    def find(x: str) -> str:
        root.setdefault(x, x)
        while root[x] != x:
            root[x] = root[root[x]]  # path halving
            x = root[x]
        return x

    for p in pairs:
        ra, rb = find(p.a), find(p.b)
        if ra == rb:
            continue
        a_side, b_side = members.get(ra, {p.a}), members.get(rb, {p.b})
        if not _within_hops(a_side, b_side, neighbours, max_hops):
            continue
        if len(a_side) < len(b_side):
            ra, rb, a_side, b_side = rb, ra, b_side, a_side
        root[rb] = ra
        members[ra] = a_side | b_side
        members.pop(rb, None)
    inside: dict[str, list[Pair]] = defaultdict(list)
    for p in pairs:
        if find(p.a) == find(p.b):
            inside[find(p.a)].append(p)
    return sorted((_describe(m, inside[r]) for r, m in members.items()), key=lambda g: g.members[0])


def _within_hops(a_side: set[str], b_side: set[str], neighbours: dict[str, set[str]], max_hops: int) -> bool:
    """Every member of a_side within max_hops of every member of b_side, over the judged pairs
    among the members of both (each side is already within max_hops on its own)."""
    merged = a_side | b_side
    for x in a_side:
        reach, frontier = {x}, {x}
        for _ in range(max_hops):
            frontier = {y for z in frontier for y in neighbours[z] & merged} - reach
            reach |= frontier
        if not b_side <= reach:
            return False
    return True


def _describe(members: set[str], inside: list[Pair]) -> Group:
    ordered = sorted(members)
    tier = max((p.verdict for p in inside), key=VERDICTS.index)
    edited = {p.b if p.contains > 0 else p.a for p in inside if p.contains}
    scores: dict[str, float] = {}
    for p in inside:
        for x in (p.a, p.b):
            scores[x] = max(scores.get(x, p.score), p.score)
    return Group(ordered, tier, edited, scores)
