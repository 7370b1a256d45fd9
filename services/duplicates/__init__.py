"""Library-wide duplicates: judged pairs of nearest neighbours merged into groups, each with a
proposed keeper, reviewed and resolved by people (issue 17).

    pairs.py     candidate pairs from the index's nearest neighbours
    judge.py     the verdict of a pair, as search gives it (services/verdicts.py), plus containment
    grouping.py  pairs -> groups (union-find with a guard against chaining)
    keepers.py   which member to keep (most_pixels, largest_file, oldest, newest)
    scan.py      the scan as plain functions (a job's chunks and its final grouping step)
"""
