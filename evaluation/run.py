"""`vsearch eval COLLECTION_DIR` on the collection (COLLECTION_DIR/dev and /test): copy detection
per edit family (closed set), the open set, verdict thresholds fitted on dev and scored on both
splits, category retrieval; writes results.json, results.md and the calibration file
services/calibration/<model>-v<version>.json (thresholds + precision-recall curve) that the service reads.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from evaluation import calibrate, edits
from evaluation import copy_eval as cd
from services import verdicts

METHODS = {"baseline": "plain embedding (cosine)", "layouts": "layout re-rank (rounds 1-2)",
           "verified": "+ ORB verification (adopted)"}


def evaluate(root: Path, client, per_family: int = cd.QUERY_SOURCES,
             progress: Callable[[str], None] = print) -> dict:
    info = client.info()
    started = time.perf_counter()
    splits = {name: cd.load_split(root, name, client) for name in ("dev", "test")}
    progress(f"dev {len(splits['dev'].paths)} images, test {len(splits['test'].paths)} images")
    defaults = verdicts.Thresholds()
    queries = {"dev": cd.run_queries(splits["dev"], splits["test"], client, edits.DEV_SEED, defaults, per_family, progress),
               "test": cd.run_queries(splits["test"], splits["dev"], client, edits.TEST_SEED, defaults, per_family,
                                      progress)}
    similar = calibrate.similar_threshold(splits["dev"].emb, splits["dev"].labels)
    thresholds, curve = calibrate.fit(queries["dev"], similar)
    results = {"model": {"name": info.name, "version": info.version}, "thresholds": thresholds.to_json(),
               "pr_curve_dev": curve, "splits": {}}
    for name, split in splits.items():
        qs = queries[name]
        families = family_ranks(qs, edits.FAMILIES)
        progress(f"{name}: category retrieval")
        results["splits"][name] = {
            "images": len(split.paths), "classes": int(len(set(split.labels))), "families": families,
            "mean_rank1": {m: float(np.mean([f[m]["rank1"] for f in families.values()])) for m in METHODS},
            "min_rank1": {m: float(np.min([f[m]["rank1"] for f in families.values()])) for m in METHODS},
            "strict_rank1": {m: {family: float(np.mean([q.strict_ranks[m] == 1 for q in qs if q.family == family]))
                                 for family in edits.FAMILIES} for m in METHODS},
            "images_with_twins": len(split.twins),
            "open_set": calibrate.open_set_scores(qs, thresholds),
            "open_set_strict": calibrate.open_set_scores(qs, thresholds, strict=True),
            "exact": calibrate.exact_scores(qs, thresholds),
            "verdicts_by_family": verdicts_by_family(qs, thresholds),
            "category": cd.category(split, client, thresholds),
            "cost": {**split.timings, "rerank_verify_ms_p50": float(np.median([q.query_ms for q in qs]))},
        }
    results["took_s"] = time.perf_counter() - started
    results["queries"] = {name: [q.to_json() for q in qs] for name, qs in queries.items()}
    return results


def family_ranks(queries, families) -> dict:
    """Per family and method: the share of queries whose right answer came first, the mean rank."""
    out = {}
    for family in families:
        mine = [q for q in queries if q.family == family]
        out[family] = {m: {"rank1": float(np.mean([q.ranks[m] == 1 for q in mine])),
                           "mean_rank": float(np.mean([q.ranks[m] for q in mine])), "n": len(mine)}
                       for m in METHODS}
    return out


def verdicts_by_family(queries, t, families=edits.FAMILIES) -> dict:
    """For queries whose source is indexed (open set): the share answered copy-or-exact and right."""
    out = {}
    for family in families:
        mine = [q for q in queries if q.family == family and q.source_indexed]
        right = [q for q in mine if q.open_top and q.open_top[0] in q.group
                 and verdicts.at_least(verdicts.verdict(q.open_top[1], t), "copy")]
        out[family] = len(right) / max(len(mine), 1)
    return out


def publish(results: dict, folder: Path = verdicts.CALIBRATION_DIR) -> Path:
    """The calibration file the service reads: thresholds, the dev curve, and the test scores."""
    m = results["model"]
    path = verdicts.calibration_path(m["name"], m["version"], folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "model": m, "fitted_on": "dev split, open set (evaluation/calibrate.py)",
        "thresholds": results["thresholds"], "pr_curve_dev": results["pr_curve_dev"],
        "open_set": {s: results["splits"][s]["open_set"] for s in results["splits"]}}, indent=1) + "\n")
    return path


def markdown(results: dict) -> str:
    d, t = results["splits"]["dev"], results["splits"]["test"]
    lines = [f"Model {results['model']['name']} v{results['model']['version']}; dev {d['images']} images, "
             f"test {t['images']} images.", "",
             "#### Copy detection, closed set: rank-1 (mean rank), dev | test", "",
             "| family | " + " | ".join(f"{METHODS[m]} dev | test" for m in METHODS) + " |",
             "|---|" + "---|---|" * len(METHODS)]
    for family in edits.FAMILIES:
        cells = []
        for m in METHODS:
            for s in (d, t):
                f = s["families"][family][m]
                cells.append(f"{f['rank1']:.3f} ({f['mean_rank']:.2f})")
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    for key in ("mean_rank1", "min_rank1"):
        lines.append(f"| **{key.replace('_rank1', '')}** | " + " | ".join(
            f"**{s[key][m]:.3f}**" for m in METHODS for s in (d, t)) + " |")
    for m in METHODS:
        lines.append(f"| strict mean ({METHODS[m]}) | " + " | ".join(
            f"{np.mean(list(s['strict_rank1'][m].values())):.3f}" for s in (d, t)) + " |")
    lines += ["", f"Right answers are the source or one of its twins: originals of the same split sharing its "
              f"content (dev {d['images_with_twins']}, test {t['images_with_twins']} images have one, mostly "
              f"screenshots of one program). Strict: the source itself only (its twins count as wrong)."]
    th = results["thresholds"]
    lines += ["", "#### Verdicts, open set (half the originals indexed; thresholds fitted on dev)", "",
              "thresholds: " + ", ".join(f"`{k}` {v}" for k, v in th.items()), "",
              "| split | copy precision | copy recall | unindexed -> none/similar | exact precision | exact recall | queries |",
              "|---|---|---|---|---|---|---|"]
    for name, s in (("dev", d), ("test", t), ("dev, strict", d), ("test, strict", t)):
        o, e = s["open_set_strict" if "strict" in name else "open_set"], s["exact"]
        lines.append(f"| {name} | {o['precision']:.3f} | {o['recall']:.3f} | {o['unindexed_ok']:.3f} | "
                     f"{e['precision']:.3f} | {e['recall']:.3f} | {o['queries']} |")
    lines += ["", "Right `copy`/`exact` answers per family (open set, source indexed): " + "; ".join(
        f"{f} {d['verdicts_by_family'][f]:.2f} / {t['verdicts_by_family'][f]:.2f}" for f in edits.FAMILIES), "",
        "#### Category retrieval (leave-one-out), dev | test", "",
        "| method | P@1 dev | P@1 test | mAP dev | mAP test |", "|---|---|---|---|---|"]
    for m in ("baseline", "verified"):
        lines.append(f"| {METHODS[m]} | {d['category'][m]['precision_at_1']:.3f} | {t['category'][m]['precision_at_1']:.3f} "
                     f"| {d['category'][m]['map']:.3f} | {t['category'][m]['map']:.3f} |")
    c = d["cost"]
    lines += ["", f"Cost: embedding {c['embed_ms']:.1f} ms/image (batched), ORB keypoints {c['features_ms']:.1f} ms/image "
              f"and {c['feature_bytes'] / 1024:.1f} KB stored per image; query re-rank + verification p50 "
              f"{c['rerank_verify_ms_p50']:.1f} ms (dev), beyond the model call. Whole run {results['took_s']:.0f} s."]
    return "\n".join(lines) + "\n"
