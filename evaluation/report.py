"""Writes an evaluation's results: results.json, results.md (Markdown tables) and PNG plots."""
from __future__ import annotations

import json
import math
from pathlib import Path

LABELS = {"adopted": "adopted (robust.py)", "baseline": "baseline (pooled, cosine)",
          "seed": "seed-style (raw, Euclidean)", "phash": "pHash (imagehash)"}


def write(results: dict, out: str | Path, plots: bool = True) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.json", out / "results.md"]
    written[0].write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    written[1].write_text(markdown(results))
    if plots:
        written += plot(results, out)
    return written


def _f(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def markdown(r: dict) -> str:
    d, lines = r["dataset"], []
    lines += [f"Dataset `{d['root']}`: {d['images']} images, {d['classes']} classes "
              f"({d['classes_with_2_or_more']} with 2 or more images, {d['category_queries']} category queries); "
              f"copy detection from {d['copy_sources']} sources. Model {r['model']['name']} "
              f"v{r['model']['version']}.", ""]
    cat = r["category"]
    lines += ["### Category retrieval (leave-one-out, exact search)", "",
              "| method | P@1 | P@10 | mAP |", "|---|---|---|---|"]
    for m in r["methods"]:
        if m in cat:
            c = cat[m]
            lines.append(f"| {LABELS.get(m, m)} | {_f(c['precision_at_1'])} | {_f(c['precision_at_10'])} | {_f(c['map'])} |")
    lines += ["", f"P@10 ceiling (classes are small): {_f(cat['precision_at_10_ceiling'])}.", ""]
    copy = r["copy"]
    methods = [m for m in r["methods"] if m in copy]
    lines += ["### Copy detection: rank-1 accuracy (mean rank)", "",
              "| transform | " + " | ".join(LABELS.get(m, m) for m in methods) + " |",
              "|---" * (len(methods) + 1) + "|"]
    for t in r["transforms"]:
        cells = [f"{_f(copy[m]['per_transform'][t]['rank1'])} ({_f(copy[m]['per_transform'][t]['mean_rank'], 2)})"
                 for m in methods]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines.append("| **mean of the issue's 11** | " + " | ".join(
        f"**{_f(copy[m]['mean_rank1_issue_transforms'])}**" for m in methods) + " |")
    lines.append("| min of the issue's 11 | " + " | ".join(
        _f(copy[m]["min_rank1_issue_transforms"]) for m in methods) + " |")
    lines.append("| mean of all | " + " | ".join(_f(copy[m]["mean_rank1_all"]) for m in methods) + " |")
    lines += ["", "### Annoy (angular) recall@10 against exact search (CNN stage; copy-query embeddings "
              "added as distractors)", "",
              "| method | trees | search_k | items | recall@10 | ms/query | build s |", "|---|---|---|---|---|---|---|"]
    for a in r["annoy"]:
        lines.append(f"| {a['method']} | {a['n_trees']} | {a['search_k_factor']} x trees x 10 | {a['items']} | "
                     f"{_f(a['recall_at_10'])} | {_f(a['query_ms'], 2)} | {_f(a['build_s'], 3)} |")
    c = r.get("cost", {})
    if c:
        lines += ["", "### Cost", "",
                  f"- index side: embedding {_f(c.get('embed_ms_per_image_batch'), 2)} ms/image (batched); "
                  f"layouts {_f(c.get('layout_ms_per_image'), 3)} ms/image and "
                  f"{c.get('layout_floats_per_image', 0)} numbers stored per image; Annoy unchanged.",
                  f"- query side: baseline {_f(c.get('baseline_query_ms'), 1)} ms, adopted "
                  f"{_f(c.get('adopted_query_ms'), 1)} ms per query ({_f(c.get('adopted_views_per_query'), 2)} "
                  "views embedded in one call), decode excluded."]
    return "\n".join(lines) + "\n"


def plot(r: dict, out: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    written = []
    copy = r["copy"]
    methods = [m for m in r["methods"] if m in copy]
    transforms = r["transforms"]
    fig, ax = plt.subplots(figsize=(11, 4.2))
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(transforms))
    for i, m in enumerate(methods):
        ax.bar(x + (i - (len(methods) - 1) / 2) * width,
               [copy[m]["per_transform"][t]["rank1"] for t in transforms], width, label=LABELS.get(m, m))
    ax.axhline(0.95, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x, transforms, rotation=30, ha="right")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("rank-1 accuracy")
    ax.set_title("Copy detection by transform")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.45), ncol=len(methods), fontsize=8)
    written.append(_save(fig, out / "quality_copy_rank1.png"))

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for m, marker in (("baseline", "o"), ("adopted", "s")):
        rows = [a for a in r["annoy"] if a["method"] == m]
        if not rows:
            continue
        ax.plot([a["query_ms"] for a in rows], [a["recall_at_10"] for a in rows], marker=marker,
                label=LABELS.get(m, m))
        for a in rows:
            ax.annotate(f"{a['n_trees']}t x{a['search_k_factor']}", (a["query_ms"], a["recall_at_10"]),
                        fontsize=7, xytext=(3, -9), textcoords="offset points")
    ax.set_xlabel("ms per query (all query views)")
    ax.set_ylabel("recall@10 vs exact")
    ax.set_title("Annoy: recall against query time")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    written.append(_save(fig, out / "quality_annoy_recall.png"))

    cat = r["category"]
    cmethods = [m for m in r["methods"] if m in cat]
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    x = np.arange(3)
    width = 0.8 / max(1, len(cmethods))
    for i, m in enumerate(cmethods):
        ax.bar(x + (i - (len(cmethods) - 1) / 2) * width,
               [cat[m]["precision_at_1"], cat[m]["precision_at_10"], cat[m]["map"]], width, label=LABELS.get(m, m))
    ax.set_xticks(x, ["P@1", "P@10", "mAP"])
    ax.set_ylim(0, 1)
    ax.set_title("Category retrieval (leave-one-out)")
    ax.legend(fontsize=8)
    written.append(_save(fig, out / "quality_category.png"))
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt  # loaded by plot(), with its backend chosen there
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
