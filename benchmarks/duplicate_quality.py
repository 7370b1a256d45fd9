"""Planted duplicate groups against a real scan: pairwise precision and recall, similar pairs grouped.

    python benchmarks/duplicate_quality.py [--photos var/eval/pkgphotos] [--seed 18] [--sweep]

Builds the planted set (evaluation/planted.py) from the evaluation photos
(benchmarks/make_eval_set.py), indexes it through the real system (a directory job run by a
`vsearch worker` process against `vsearch model-server` and Redis, db 14 under its own prefix,
cleaned up), runs a duplicate scan job and scores its groups. --sweep also prints the scores of the
judge's copy threshold around its default (the pairs judged again in this process).
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
from services.duplicates.pairs import candidate_pairs  # noqa: E402
from evaluation import planted as planted_set  # noqa: E402
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
    """Scores for other copy thresholds: every image's candidates judged again in-process."""
    from services.index import Searcher
    searcher = Searcher(store, model_key, index_dir)
    ids = list(names)
    found, vectors = store.get_vectors(model_key, ids)
    scored = candidate_pairs(searcher, found, vectors, min_cosine=-1.0)
    truth = {tuple(sorted(p)) for g in planted.groups for p in itertools.combinations(g, 2)}
    cosines = sorted(c for a, b, c in scored if tuple(sorted((names[a], names[b]))) in truth)
    reached = {tuple(sorted((names[a], names[b]))) for a, b, _ in scored} & truth
    print(json.dumps({"candidate_recall_any_cosine": len(reached) / len(truth),
                      "true_pair_cosine_quantiles": [round(cosines[int(q * (len(cosines) - 1))], 3)
                                                     for q in (0, 0.01, 0.05, 0.1, 0.5)]}))
    candidates = sorted({(a, b) for a, b, _ in candidate_pairs(searcher, found, vectors)})
    rows = []
    for threshold in (1.0, 1.05, 1.1, 1.15, 1.2, 1.25, 1.3):
        verdicts = judges.LayoutJudge(store, model_key, copy_score=threshold).judge(candidates)
        pairs = [Pair(a, b, v.verdict, v.score, v.contains) for (a, b), v in zip(candidates, verdicts)]
        groups = [[names[m] for m in g.members] for g in group_pairs(pairs)]
        s = planted_set.score(planted, groups)
        rows.append({"copy_score": threshold} | {k: s[k] for k in ("precision", "recall", "similar_grouped_share")})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", default="var/eval/pkgphotos")
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--model-base", default="var/models")
    parser.add_argument("--sweep", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dups-quality-"))
    planted = planted_set.build(args.photos, tmp / "planted", seed=args.seed)
    with local_model_server(Path(args.model_base)) as target:
        settings = isolated_settings(tmp, target)
        settings = replace(settings, redis_url=settings.redis_url.rsplit("/", 1)[0] + "/14")
        worker = WorkerProcess(settings, tmp, concurrency=2)
        store = Store.from_settings(settings)
        try:
            worker.wait_ready()
            app = make_celery(settings)
            job = wait_for_job(store, submit_job(app, store, {"kind": "directory", "directory": str(tmp / "planted")}),
                               timeout_s=600, workers=[worker])
            assert job["failed"] == 0, job
            scan = wait_for_job(store, submit_duplicate_scan(app, store), timeout_s=600, workers=[worker])
            assert scan["state"] == "done", scan
            records = [r for r in store.get_images(i for g in found_groups(store) for i in g)]
            model_key = store.redis.get(store.key("active_model", settings.model_name)).decode()
            ids, _ = store.get_vectors(model_key, [i for i, _ in store.added_since(model_key, 0)])
            names = {r["id"]: Path(r["source"]).name for r in store.get_images(ids)}
            result = planted_set.score(planted, [[names[i] for i in g] for g in found_groups(store)])
            result |= {"seed": args.seed, "scan_seconds": round(scan["finished_at"] - scan["created_at"], 2),
                       "judge": "LayoutJudge", "model": model_key}
            print(json.dumps(result, indent=1))
            if args.sweep:
                for row in sweep(store, model_key, names, planted, settings.index_dir):
                    print(json.dumps(row))
            del records
        finally:
            worker.stop()
            drop_keys(settings)


if __name__ == "__main__":
    main()
