"""Duplicate groups: grouping (property-based), keepers, and their storage on the real Redis."""
from __future__ import annotations

import itertools
import random
import time

import pytest
from hypothesis import given, settings, strategies as st

from services.store.duplicates import DuplicateStore
from services.duplicates.grouping import MAX_HOPS, Pair, group_pairs
from services.duplicates.keepers import RULES, choose_keeper

NAMES = [f"{i:02d}" for i in range(24)]
pair_lists = st.lists(st.builds(Pair, st.sampled_from(NAMES), st.sampled_from(NAMES),
                                st.sampled_from(["exact", "copy"]), st.floats(0.5, 2.0), st.sampled_from([-1, 0, 1])),
                      max_size=60)


def _hops(members: list[str], pairs: list[Pair]) -> int:
    """The group's diameter over the pairs among its members (inf if not connected)."""
    inside = set(members)
    near = {m: set() for m in members}
    for p in pairs:
        if p.a in inside and p.b in inside and p.a != p.b:
            near[p.a].add(p.b)
            near[p.b].add(p.a)
    worst = 0
    for m in members:
        dist, frontier = {m: 0}, [m]
        while frontier:
            frontier = [y for x in frontier for y in near[x] if y not in dist and not dist.update({y: dist[x] + 1})]
        if len(dist) < len(members):
            return 10 ** 9
        worst = max(worst, *dist.values())
    return worst


@settings(max_examples=300, deadline=None)
@given(pair_lists)
def test_groups_are_disjoint_connected_and_never_chain_past_the_guard(pairs):
    groups = group_pairs(pairs)
    seen = [m for g in groups for m in g.members]
    assert len(seen) == len(set(seen))  # a partition of some images
    real = [p for p in pairs if p.a != p.b]
    for g in groups:
        assert len(g.members) >= 2 and g.members == sorted(g.members)
        assert _hops(g.members, real) <= MAX_HOPS
        inside = [p for p in real if p.a in g.members and p.b in g.members]
        assert g.tier == ("copy" if any(p.verdict == "copy" for p in inside) else "exact")
        assert set(g.scores) == set(g.members)


@settings(max_examples=200, deadline=None)
@given(pair_lists, st.randoms(use_true_random=False))
def test_grouping_depends_on_the_pairs_not_their_order(pairs, rnd):
    shuffled = list(pairs)
    rnd.shuffle(shuffled)
    flipped = [Pair(p.b, p.a, p.verdict, p.score, -p.contains) for p in shuffled]
    assert [g.members for g in group_pairs(pairs)] == [g.members for g in group_pairs(flipped)]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(2, 7), min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_planted_cliques_and_stars_are_found_whole(sizes, rnd):
    pairs, planted = [], []
    for n, size in enumerate(sizes):
        members = sorted(f"g{n}-{i}" for i in range(size))
        planted.append(members)
        if rnd.random() < 0.5:  # an original and its copies: a star
            pairs += [Pair(members[0], m, "copy", rnd.uniform(1, 2), 1) for m in members[1:]]
        else:
            pairs += [Pair(a, b, "exact", rnd.uniform(1, 2)) for a, b in itertools.combinations(members, 2)]
    assert sorted(g.members for g in group_pairs(pairs)) == sorted(planted)


def test_a_chain_is_cut_into_short_pieces():
    chain = [f"frame{i:02d}" for i in range(12)]
    pairs = [Pair(a, b, "copy", 1.5 - i * 0.01) for i, (a, b) in enumerate(zip(chain, chain[1:]))]
    groups = group_pairs(pairs)
    assert all(len(g.members) <= MAX_HOPS + 1 for g in groups)
    assert sum(len(g.members) for g in groups) >= 8  # cut, not dropped


def test_one_wrong_pair_does_not_fuse_two_groups():
    a = [f"a{i}" for i in range(4)]
    b = [f"b{i}" for i in range(4)]
    pairs = [Pair(x, y, "copy", 1.6) for group in (a, b) for x, y in itertools.combinations(group, 2)]
    pairs.append(Pair("a0", "b0", "copy", 1.2))  # a burst-like pair judged a copy by mistake
    assert sorted(g.members for g in group_pairs(pairs)) == [a, b]


def test_edited_members_are_the_contained_ones():
    (g,) = group_pairs([Pair("orig", "crop", "copy", 1.4, 1), Pair("copy2", "orig", "copy", 1.3, 0)])
    assert g.edited == {"crop"} and g.tier == "copy"


def _record(iid, w, h, size, created):
    return {"id": iid, "width": w, "height": h, "size_bytes": size, "created_at": created}


def test_keeper_rules_prefer_originals():
    records = [_record("big", 4000, 3000, 900_000, 30.0), _record("heavy", 2000, 1500, 2_000_000, 20.0),
               _record("old", 1000, 750, 100_000, 10.0), _record("new", 1200, 900, 150_000, 40.0)]
    assert [choose_keeper(records, rule) for rule in RULES] == ["big", "heavy", "old", "new"]
    # "big" is a crop (upscaled) of "heavy": the original wins even where the rule says otherwise
    assert choose_keeper(records, "most_pixels", edited={"big"}) == "heavy"
    assert choose_keeper(records, "oldest", edited={"old", "big", "heavy", "new"}) == "old"
    with pytest.raises(ValueError):
        choose_keeper(records, "prettiest")


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 3)), min_size=1, max_size=8))
def test_keeper_is_a_member_and_independent_of_order(specs):
    records = [_record(f"i{n}", w, h, s, float(n % 3)) for n, (w, h, s) in enumerate(specs)]
    for rule in RULES:
        chosen = choose_keeper(records, rule)
        assert chosen in {r["id"] for r in records}
        assert choose_keeper(list(reversed(records)), rule) == chosen


def _members(*ids):
    return [{"id": i, "score": 1.0, "edited": False} for i in ids]


def test_store_keeps_decisions_until_a_new_member_joins(store):
    dups = DuplicateStore(store)
    gid = "0123456789abcdef"
    assert dups.put_open_group(gid, "copy", _members("a", "b"), ["a"])
    assert dups.group_of(["a", "b", "c"]) == {"a": gid, "b": gid}
    assert dups.resolve(gid, ["a"], ["b"], None)
    assert not dups.put_open_group(gid, "copy", _members("a", "b"), ["a"])  # the same: stays resolved
    assert not dups.put_open_group(gid, "copy", _members("a"), ["a"])
    assert not dups.drop_open_group(gid)
    group = dups.get_group(gid)
    assert (group["status"], group["keep"], group["deleted"]) == ("resolved", ["a"], ["b"])
    assert dups.put_open_group(gid, "exact", _members("a", "c"), ["c"])  # c joins: open again
    group = dups.get_group(gid)
    assert (group["status"], group["tier"], group["keep"]) == ("open", "exact", ["c"])
    assert dups.group_of(["a", "b", "c"]) == {"a": gid, "c": gid}
    assert dups.drop_open_group(gid) and dups.get_group(gid) is None and not dups.group_of(["a", "c"])
    assert not dups.resolve(gid, ["a"], [], None)


def test_store_lists_by_filter_with_a_cursor(store):
    dups = DuplicateStore(store)
    rng = random.Random(3)
    made = {}
    for n in range(57):
        gid = f"{rng.getrandbits(64):016x}"
        tier = rng.choice(["exact", "copy"])
        dups.put_open_group(gid, tier, _members(f"x{n}", f"y{n}"), [f"x{n}"])
        status = "open"
        if n % 3 == 0:
            dups.resolve(gid, [f"x{n}"], [], "oldest")
            status = "resolved"
        made[gid] = (status, tier)
    for statuses, tiers in [(("open", "resolved"), ("exact", "copy")), (("open",), ("copy",)),
                            (("resolved",), ("exact", "copy"))]:
        expected = sorted(g for g, (s, t) in made.items() if s in statuses and t in tiers)
        got, cursor = [], None
        while True:
            page, cursor, total = dups.list_groups(statuses, tiers, cursor, limit=10)
            assert total == len(expected) and len(page) <= 10
            got += [g["group_id"] for g in page]
            assert all(made[g["group_id"]] == (g["status"], g["tier"]) for g in page)
            if cursor is None:
                break
        assert got == expected


def test_pairs_round_trip_and_scan_clock(store):
    dups = DuplicateStore(store)
    dups.add_pairs("m:1", [("a", "b", "copy", 1.25, 1), ("a", "c", "exact", 1.7, 0)])
    dups.add_pairs("m:1", [("a", "b", "copy", 1.3, 1)])
    assert dups.pairs("m:1") == [("a", "b", "copy", 1.3, 1), ("a", "c", "exact", 1.7, 0)]
    dups.drop_pairs("m:1", [("a", "b")])
    assert dups.pairs("m:1") == [("a", "c", "exact", 1.7, 0)] and dups.pairs("m:2") == []
    assert dups.scanned_seq("m:1") == 0
    dups.set_scanned_seq("m:1", 42)
    assert dups.scanned_seq("m:1") == 42
    assert dups.claim_grouping("job", 60) and not dups.claim_grouping("job", 60)
    dups.release_grouping("job")
    assert dups.claim_grouping("job", 0.05) and not dups.claim_grouping("job", 60)
    time.sleep(0.1)
    assert dups.claim_grouping("job", 60)  # its holder died: the claim lapsed


def test_a_pair_is_judged_by_one_range_of_a_scan(store):
    dups = DuplicateStore(store)
    pairs = [("a", "b"), ("a", "c"), ("b", "c")]
    assert dups.claim_pairs("job", "0-10", pairs[:2]) == [True, True]
    assert dups.claim_pairs("job", "10-20", pairs) == [False, False, True]
    assert dups.claim_pairs("job", "0-10", pairs) == [True, True, False]  # the same range again: its own
    assert dups.claim_pairs("other-job", "0-10", pairs) == [True, True, True]
    dups.forget_judged("job")
    assert dups.claim_pairs("job", "10-20", pairs) == [True, True, True]
