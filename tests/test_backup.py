"""`vsearch backup` / `vsearch restore` for real: a deployment indexes photos, is backed up (once
while a job runs, once at rest), and each backup restored into an empty deployment."""
from __future__ import annotations

import io
import subprocess
import sys

import numpy as np

from gateway import create_app
from services.jobs import submit_job
from services.store import Store, image_id
from tests.conftest import ROOT
from tests.test_faults import MODEL_KEY
from tests.test_worker import variants
from tests.workers import (WorkerProcess, drop_keys, isolated_settings, settings_env, wait_for_index,
                           wait_for_job, wait_until)
from worker.celery_app import make_celery


def vsearch(settings, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT, env=settings_env(settings),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def search(client, data: bytes) -> list[tuple[str, float]]:
    found = client.post("/api/v1/search", data={"file": (io.BytesIO(data), "q.jpg"), "k": "10"},
                        content_type="multipart/form-data")
    assert found.status_code == 200, found.json
    return [(r["id"], r["score"]) for r in found.json["results"]]


def test_backup_then_restore_into_an_empty_deployment_gives_the_same_results(model_server, photos, tmp_path):
    source = isolated_settings(tmp_path / "source", model_server, ingest_chunk=3)
    targets = [isolated_settings(tmp_path / name, model_server) for name in ("at-rest", "mid-job")]
    worker = WorkerProcess(source, tmp_path, concurrency=2)
    try:
        worker.wait_ready()
        store, app = Store.from_settings(source), make_celery(source)
        folder = tmp_path / "source" / "photos"
        folder.mkdir(parents=True)
        for p in photos:
            (folder / p.name).write_bytes(p.read_bytes())
        first = wait_for_job(store, submit_job(app, store, {"kind": "directory", "directory": str(folder)}),
                             workers=[worker])
        assert (first["state"], first["done"]) == ("done", 20)

        # while a job runs: what is backed up is whole (record, vector, original), whatever the moment
        more = tmp_path / "source" / "more"
        variants(photos[:8], more)
        running = submit_job(app, store, {"kind": "directory", "directory": str(more)})
        wait_until(lambda: 0 < (store.get_job(running) or {}).get("done", 0), 60, "the job under way")
        mid_job = store.get_job(running)  # read before the backup starts: what it holds at least
        vsearch(source, "backup", str(tmp_path / "mid-job.bak"))
        wait_for_job(store, running, workers=[worker])
        wait_for_index(store, MODEL_KEY, 44)
        vsearch(source, "backup", str(tmp_path / "at-rest.bak"))
    finally:
        worker.stop()

    try:
        for target, name in zip(targets, ("at-rest", "mid-job")):
            assert "restored" in vsearch(target, "restore", str(tmp_path / f"{name}.bak"))
        restored, partial = (Store.from_settings(t) for t in targets)
        before = create_app({"SETTINGS": source, "TESTING": True}).test_client()
        after = create_app({"SETTINGS": targets[0], "TESTING": True}).test_client()
        for p in photos:
            expected, got = search(before, p.read_bytes()), search(after, p.read_bytes())
            assert [i for i, _ in got] == [i for i, _ in expected]
            np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], atol=1e-5)
        assert restored.get_index_info(MODEL_KEY)["count"] == 44
        with after.get(f"/api/v1/images/{image_id(photos[0].read_bytes())}/content") as content:
            assert content.data == photos[0].read_bytes()

        # the mid-job backup: at least what was done when it started, each image whole
        ids = [i for chunk in partial.iter_image_ids() for i in chunk]
        assert 20 <= len(ids) <= 44 and len(ids) >= 20 + mid_job["done"] - mid_job["duplicates"] - 1
        assert all(r["status"] == "indexed" for r in partial.get_images(ids))
        assert partial.get_vectors(MODEL_KEY, ids)[1].shape == (len(ids), 1280)
        assert partial.get_index_info(MODEL_KEY)["count"] == len(ids)
        assert all((targets[1].data_dir / "originals" / i[:2] / i).exists() for i in ids)
        assert "empty deployment" in subprocess.run(
            [sys.executable, "-m", "cli.main", "restore", str(tmp_path / "mid-job.bak")], cwd=ROOT,
            env=settings_env(targets[1]), capture_output=True, text=True, timeout=120).stderr
    finally:
        for s in (source, *targets):
            drop_keys(s)
