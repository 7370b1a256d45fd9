"""Planted duplicate groups against a real scan: pairwise precision and recall, similar pairs grouped.

    python -m evaluation.build_collection                      # once: var/eval/collection/{dev,test}
    python benchmarks/duplicate_quality.py [--split test|dev] [--sweep]

Builds the planted set (evaluation/planted.py) from a split of the evaluation collection (the
split's edit seed: evaluation/edits.py), indexes it through the real system (a directory job run by a
`vsearch worker` process against `vsearch model-server` and Redis, db 14 under its own prefix,
cleaned up), runs a duplicate scan job and scores its groups. --sweep also prints how many true
pairs the candidates reach and the scores at other settings of the scan's second chances (judged
again in-process).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.store.duplicates import DuplicateStore  # noqa: E402
from services.duplicates import judge as judges  # noqa: E402
from services.duplicates.grouping import Pair, group_pairs  # noqa: E402
from services.duplicates.pairs import NEIGHBOURS, candidate_pairs  # noqa: E402
from evaluation import edits, planted as planted_set  # noqa: E402
from evaluation.server import local_model_server  # noqa: E402
from services.store import Store  # noqa: E402
from tests.workers import WorkerProcess, drop_keys, isolated_settings, wait_for_job  # noqa: E402
from services.broker import make_celery  # noqa: E402
from services.jobs import submit_duplicate_scan, submit_job  # noqa: E402


def found_groups(store: Store) -> list[list[str]]:
    groups, cursor = [], None
    while True:
        page, cursor, _ = DuplicateStore(store).list_groups(after=cursor, limit=200)
        groups += [[m["id"] for m in g["members"]] for g in page]
        if cursor is None:
            return groups


def sweep(store: Store, model_key: str, names: dict[str, str], planted, index_dir) -> list[dict]:
    """The candidates of every image judged again in-process with other settings of the scan's
    second chances (services/duplicates/judge.py; the verdict thresholds as published) and twice
    the neighbours, and what grouping then gives."""
    from services.index import Searcher
    searcher = Searcher(store, model_key, index_dir)
    found, vectors = store.get_vectors(model_key, list(names))
    scored = candidate_pairs(searcher, found, vectors, min_cosine=-1.0)
    truth = {tuple(sorted(p)) for g in planted.groups for p in itertools.combinations(g, 2)}
    cosines = sorted(c for a, b, c in scored if tuple(sorted((names[a], names[b]))) in truth)
    reached = {tuple(sorted((names[a], names[b]))) for a, b, _ in scored} & truth
    print(json.dumps({"candidate_recall_any_cosine": round(len(reached) / len(truth), 3),
                      "true_pair_cosine_quantiles": [round(cosines[int(q * (len(cosines) - 1))], 3)
                                                     for q in (0, 0.01, 0.05, 0.1, 0.5)]}))
    rows = []
    adopted = {"scan_inliers": judges.SCAN_INLIERS, "layout_cosine": judges.LAYOUT_COSINE}
    for k in (NEIGHBOURS, 2 * NEIGHBOURS):
        candidates = sorted({(a, b) for a, b, _ in candidate_pairs(searcher, found, vectors, k=k)})
        variants = [adopted]
        if k == NEIGHBOURS:  # 999 and 9.0: that second chance off; both off: the search verdict alone
            variants += [adopted | {"scan_inliers": i} for i in (12, 18, 20, 25, 999)]
            variants += [adopted | {"layout_cosine": c} for c in (0.3, 0.4, 0.45, 9.0)]
            variants += [{"scan_inliers": 999, "layout_cosine": 9.0}]
        for variant in variants:
            verdicts = judges.VerdictJudge(store, model_key, **variant).judge(candidates)
            pairs = [Pair(a, b, v.verdict, v.score, v.contains) for (a, b), v in zip(candidates, verdicts)]
            s = planted_set.score(planted, [[names[m] for m in g.members] for g in group_pairs(pairs)])
            rows.append({"neighbours": k} | variant | {n: round(s[n], 3) for n in ("precision", "recall", "similar_grouped_share")})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="test", choices=["dev", "test"])
    parser.add_argument("--collection", default="var/eval/collection", help="evaluation/build_collection.py's output")
    parser.add_argument("--model-base", default="var/models")
    parser.add_argument("--sweep", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dups-quality-"))
    seed = edits.TEST_SEED if args.split == "test" else edits.DEV_SEED
    planted = planted_set.build(Path(args.collection) / args.split, tmp / "planted", seed=seed)
    with local_model_server(Path(args.model_base).resolve()) as target:
        settings = isolated_settings(tmp, target)
        settings = replace(settings, redis_url=settings.redis_url.rsplit("/", 1)[0] + "/14")
        worker = WorkerProcess(settings, tmp, concurrency=2)
        store = Store.from_settings(settings)
        try:
            worker.wait_ready()
            app = make_celery(settings)
            job = wait_for_job(store, submit_job(app, store, {"kind": "directory", "directory": str(tmp / "planted")}),
                               timeout_s=1800, workers=[worker])
            assert job["failed"] == 0, job
            scan = wait_for_job(store, submit_duplicate_scan(app, store), timeout_s=600, workers=[worker])
            assert scan["state"] == "done", scan
            model_key = store.redis.get(store.key("active_model", settings.model_name)).decode()
            ids, _ = store.get_vectors(model_key, [i for i, _ in store.added_since(model_key, 0)])
            names = {r["id"]: Path(r["source"]).name for r in store.get_images(ids)}
            result = planted_set.score(planted, [[names[i] for i in g] for g in found_groups(store)])
            result |= {"split": args.split, "seed": seed, "index_seconds": round(job["finished_at"] - job["created_at"], 1),
                       "scan_seconds": round(scan["finished_at"] - scan["created_at"], 1),
                       "thresholds": judges.VerdictJudge(store, model_key).thresholds.to_json(), "model": model_key}
            by_name = {n: i for i, n in names.items()}
            stored = {(a, b): (v, sc, c) for a, b, v, sc, c in DuplicateStore(store).pairs(model_key)}
            group_of = {i: tuple(g) for g in found_groups(store) for i in g}
            result["similar_grouped_via"] = [  # the judged pairs that put a similar pair in one group
                [[names[x], names[y], *stored[(x, y)]] for x, y in itertools.combinations(sorted(group_of[by_name[a]]), 2)
                 if (x, y) in stored] for a, b in result["similar_grouped_examples"][:4]]
            print(json.dumps(result, indent=1))
            if args.sweep:
                for row in sweep(store, model_key, names, planted, settings.index_dir):
                    print(json.dumps(row))
        finally:
            worker.stop()
            drop_keys(settings)


if __name__ == "__main__":
    main()
