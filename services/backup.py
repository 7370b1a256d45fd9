"""`vsearch backup` / `vsearch restore`: the records, vectors, originals and index state of a
deployment, copied to a directory and loaded into an empty deployment.

Consistent while ingest runs, without stopping it: the vectors of each model key are read first,
the image records after them, and an image is kept only if its record says `indexed` by that
model and its vector was read (a vector and its `indexed` status are written in one script, and
the original file before either). Every kept image has its record, vector, layouts, keypoints and original;
the set kept is what was indexed at some moment of the backup or added while it ran. Pending and
failed images (a job still running, bad input) and jobs are not kept: submit such jobs again after
a restore; indexed images are recognised by their bytes and not embedded twice.

Index state: the active model key and the index settings; the restore builds the Annoy index from
the restored vectors (derived data, rebuilt rather than copied, so it matches the new log).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from services import files
from services.copy_detection import LAYOUT_SIDE, LAYOUT_VIEWS
from services.index import build_index
from services.store import Store

FORMAT = 1
LAYOUT_SHAPE = (len(LAYOUT_VIEWS), LAYOUT_SIDE * LAYOUT_SIDE)
_KEPT_FIELDS = ("source", "label", "width", "height", "format", "size_bytes", "created_at", "near_duplicate_of")


def backup(store: Store, settings, out: Path) -> dict:
    """Writes the backup into `out` (created; must not exist); returns its manifest."""
    out.mkdir(parents=True)
    models = store.model_keys()
    vectors = {mk: dict(_vectors(store, mk)) for mk in models}
    kept = []
    for ids in store.iter_image_ids():
        for record in store.get_images(ids):
            if record and record["status"] == "indexed" and record["id"] in vectors.get(record["model"], {}):
                kept.append(record)
    by_model: dict[str, list[str]] = {}
    for record in kept:
        by_model.setdefault(record["model"], []).append(record["id"])
    parts = {}
    for i, (mk, ids) in enumerate(sorted(by_model.items())):
        found, _, layouts = store.get_vectors_and_layouts(mk, ids, LAYOUT_SHAPE)
        blobs = [b or b"" for b in store.get_features(ids)]  # keypoints (services/verify.py), one blob each
        np.savez(out / f"vectors-{i}.npz", ids=np.array(ids), vectors=np.stack([vectors[mk][x] for x in ids]),
                 layouts=_align(ids, found, layouts), keypoints=np.frombuffer(b"".join(blobs), np.uint8),
                 keypoint_ends=np.cumsum([len(b) for b in blobs], dtype=np.int64))
        parts[mk] = {"file": f"vectors-{i}.npz", "count": len(ids)}
    for record in kept:
        src = files.original_path(settings.data_dir, record["id"])
        dst = files.original_path(out, record["id"])
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    with open(out / "records.jsonl", "w") as f:
        for record in kept:
            f.write(json.dumps({k: record[k] for k in ("id", "model", *_KEPT_FIELDS)}) + "\n")
    manifest = {"format": FORMAT, "images": len(kept), "models": parts,
                "active_model": {settings.model_name: store.active_model(settings.model_name)},
                "index": {"n_trees": settings.index_trees}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def restore(store: Store, settings, src: Path) -> dict:
    """Loads a backup into an empty deployment and builds its indexes; returns the manifest."""
    manifest = json.loads((src / "manifest.json").read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{src} is not a backup of format {FORMAT}")
    if store.model_keys() or store.current_seq() or next(store.iter_image_ids(), None):
        raise ValueError("restore needs an empty deployment (no images, no vectors)")
    records = [json.loads(line) for line in (src / "records.jsonl").read_text().splitlines()]
    for record in records:
        dst = files.original_path(settings.data_dir, record["id"])
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(files.original_path(src, record["id"]), dst)
    for start in range(0, len(records), 1000):
        store.create_images([(r["id"], {k: r[k] for k in _KEPT_FIELDS}) for r in records[start:start + 1000]])
    for mk, part in manifest["models"].items():
        data = np.load(src / part["file"])
        ids = [str(i) for i in data["ids"]]
        keypoints = [b""] * len(ids)
        if "keypoints" in data:  # backups made before keypoints were stored have none
            ends = data["keypoint_ends"]
            keypoints = [b.tobytes() for b in np.split(data["keypoints"], ends[:-1])] if len(ends) else []
        for start in range(0, len(ids), 1000):
            chunk = slice(start, start + 1000)
            store.put_vectors(mk, ids[chunk], data["vectors"][chunk], data["layouts"][chunk], keypoints[chunk])
    for name, mk in manifest["active_model"].items():
        if mk:
            store.adopt_model(name, mk)
    for mk in manifest["models"]:
        build_index(store, mk, settings.index_dir, n_trees=manifest["index"]["n_trees"], pca_dims=settings.index_pca)
    return manifest


def _vectors(store: Store, model_key: str):
    for ids, matrix in store.iter_vectors(model_key):
        yield from zip(ids, matrix)


def _align(ids: list[str], found: list[str], layouts: np.ndarray) -> np.ndarray:
    """Layouts in the order of `ids`; zeros (no layout bonus) for an id deleted meanwhile."""
    row = {iid: i for i, iid in enumerate(found)}
    out = np.zeros((len(ids), *LAYOUT_SHAPE), np.float16)
    for i, iid in enumerate(ids):
        if iid in row:
            out[i] = layouts[row[iid]]
    return out
