"""Duplicates end to end: real photos and edited copies indexed by a real worker against the model
server, scans as jobs, the API, `vsearch duplicates`, and the page in headless Chromium."""
from __future__ import annotations

import csv
import io
import threading

import pytest
import requests
from click.testing import CliRunner
from PIL import Image
from werkzeug.serving import make_server

from gateway import create_app
from evaluation import transforms
from cli.duplicates import duplicates_cmd
from services.store import Store, image_id
from tests.test_browser import browser  # noqa: F401  (the headless Chromium fixture)
from tests.workers import WorkerProcess, drop_keys, isolated_settings, wait_for_job

TOKEN = "dup-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# photo index -> edits whose copies join it (edits the interim judge and the verdicts both call copies)
PLANTED = {0: ["crop70", "half_scale"], 1: ["jpeg20"], 2: ["brightness_contrast"], 3: ["crop70"]}

pytestmark = pytest.mark.slow


def open_rgb(path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def copy_bytes(photo, edit: str) -> bytes:
    return transforms.to_jpeg_bytes(transforms.TRANSFORMS[edit](open_rgb(photo)), 90)


class Collection:
    def __init__(self, settings, base: str, store: Store, worker: WorkerProcess):
        self.settings, self.base, self.store, self.worker = settings, base, store, worker
        self.api = base + "/api/v1"

    def get(self, path: str, **params):
        return requests.get(self.api + path, params=params, headers=AUTH, timeout=30)

    def post(self, path: str, **kwargs):
        return requests.post(self.api + path, headers=AUTH, timeout=60, **kwargs)

    def wait(self, job_id: str) -> dict:
        job = wait_for_job(self.store, job_id, timeout_s=120, workers=[self.worker])
        assert job["state"] == "done", job
        return job

    def scan(self, full: bool = False) -> dict:
        response = self.post("/duplicates/scan", json={"full": full})
        assert response.status_code == 202, response.text
        return self.wait(response.json()["job_id"])

    def add(self, files: list[tuple[str, bytes]]) -> None:
        response = self.post("/images", files=[("file", (name, data)) for name, data in files])
        assert response.status_code == 202, response.text
        self.wait(response.json()["job_id"])

    def groups(self, **filters) -> list[dict]:
        groups, cursor = [], None
        while True:
            body = self.get("/duplicates", **filters, **({"cursor": cursor} if cursor else {})).json()
            groups += body["groups"]
            cursor = body["next_cursor"]
            if cursor is None:
                return groups


@pytest.fixture
def collection(tmp_path, model_server, photos):
    """12 photos plus edited copies of four of them, indexed; the gateway on a real port."""
    settings = isolated_settings(tmp_path, model_server, api_token=TOKEN)
    worker = WorkerProcess(settings, tmp_path, concurrency=2)
    app = create_app({"SETTINGS": settings})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    store = Store.from_settings(settings)
    try:
        worker.wait_ready()
        d = Collection(settings, f"http://127.0.0.1:{server.server_port}", store, worker)
        files = [(p.name, p.read_bytes()) for p in photos[:12]]
        files += [(f"{photos[n].stem}-{edit}.jpg", copy_bytes(photos[n], edit))
                  for n, edits in PLANTED.items() for edit in edits]
        d.add(files)
        yield d
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        resources = app.extensions.get("vsearch")
        if resources is not None:
            for name in ("model", "store"):
                if name in vars(resources):
                    obj = vars(resources)[name]
                    (obj.close() if name == "model" else obj.redis.close())
        worker.stop()
        drop_keys(settings)
        store.redis.close()


def planted_groups(photos) -> list[set[str]]:
    return [{image_id(photos[n].read_bytes())} | {image_id(copy_bytes(photos[n], e)) for e in edits}
            for n, edits in PLANTED.items()]


def test_scan_resolve_and_rescan_through_the_api(collection, photos):
    d = collection
    job = d.scan()
    assert (job["kind"], job["total"], job["done"], job["failed"]) == ("duplicates", 18, 18, 0)
    groups = d.groups()
    assert sorted(map(sorted, ({im["id"] for im in g["images"]} for g in groups))) == \
        sorted(map(sorted, planted_groups(photos)))
    for g in groups:
        assert g["status"] == "open" and g["tier"] in ("exact", "copy") and len(g["keep"]) == 1
        for im in g["images"]:
            assert im["width"] > 0 and im["height"] > 0 and im["size_bytes"] > 0 and im["created_at"] > 0
            assert im["thumbnail_url"] == f"/api/v1/images/{im['id']}/thumbnail" and im["score"] > 0
    group_of = {im["id"]: g for g in groups for im in g["images"]}
    crop_group = group_of[image_id(photos[0].read_bytes())]
    crop_id = image_id(copy_bytes(photos[0], "crop70"))
    assert crop_group["keep"] != [crop_id]  # an edited copy is never proposed over its original

    # one page at a time, and the filters
    page = d.get("/duplicates", limit=1).json()
    assert page["total"] == 4 and len(page["groups"]) == 1 and page["next_cursor"]
    assert d.get("/duplicates", status="resolved").json() == {"groups": [], "next_cursor": None, "total": 0}
    tiers = {g["tier"] for g in groups}
    assert sum(d.get("/duplicates", tier=t).json()["total"] for t in ("exact", "copy")) == 4 and tiers
    for bad in ({"tier": "similar"}, {"status": "gone"}, {"cursor": "zz"}, {"limit": 0}, {"limit": "x"}):
        response = d.get("/duplicates", **bad)
        assert response.status_code == 400 and "error" in response.json(), bad

    # resolve: a rule and delete the others; explicit keep and keep everything
    a = group_of[image_id(photos[0].read_bytes())]
    resolved = d.post(f"/duplicates/{a['group_id']}/resolve", json={"rule": "most_pixels", "delete_others": True}).json()
    assert resolved["status"] == "resolved" and resolved["keep"] == [image_id(photos[0].read_bytes())]
    others = [im["id"] for im in resolved["images"] if im["id"] not in resolved["keep"]]
    assert len(others) == 2 and all(im["deleted"] for im in resolved["images"] if im["id"] in others)
    for other in others:
        assert d.get(f"/images/{other}").status_code == 404
    b = group_of[image_id(photos[1].read_bytes())]
    both = [im["id"] for im in b["images"]]
    assert d.post(f"/duplicates/{b['group_id']}/resolve", json={"keep": both}).json()["status"] == "resolved"
    assert d.post(f"/duplicates/{b['group_id']}/resolve", json={"keep": ["0" * 64]}).status_code == 400
    assert d.post(f"/duplicates/{b['group_id']}/resolve", json={"rule": "prettiest"}).status_code == 400
    assert d.post("/duplicates/0123456789abcdef/resolve", json={"rule": "oldest"}).status_code == 404
    assert requests.post(f"{d.api}/duplicates/{b['group_id']}/resolve", json={"rule": "oldest"}).status_code == 401
    search = d.post("/search", json={"image_id": resolved["keep"][0], "k": 20}).json()["results"]
    assert not {r["id"] for r in search} & set(others)

    # a rescan (new images only, then everything) brings no resolved group back
    for full in (False, True):
        d.scan(full=full)
        assert {g["group_id"] for g in d.groups(status="resolved")} == {a["group_id"], b["group_id"]}
        assert {g["group_id"] for g in d.groups(status="open")} == {g["group_id"] for g in groups} - {a["group_id"], b["group_id"]}

    # ...until a new member joins: then the group is open again, under its id
    d.add([("late-copy.jpg", copy_bytes(photos[1], "crop70"))])
    job = d.scan()
    assert job["total"] == 2  # the one new image and the grouping step
    reopened = d.get(f"/duplicates/{b['group_id']}").json()
    assert reopened["status"] == "open" and len(reopened["images"]) == 3
    assert image_id(copy_bytes(photos[1], "crop70")) in {im["id"] for im in reopened["images"]}
    assert d.get(f"/duplicates/{a['group_id']}").json()["status"] == "resolved"

    # export: every group, one row per image
    rows = d.get("/duplicates/export", format="json").json()["rows"]
    listed = d.groups()
    assert len(rows) == sum(len(g["images"]) for g in listed)
    table = list(csv.DictReader(io.StringIO(d.get("/duplicates/export", format="csv").text)))
    assert [r["image_id"] for r in table] == [r["image_id"] for r in rows]
    assert {r["status"] for r in table} == {"open", "resolved"} and sum(r["keep"] == "True" for r in table) >= 4
    assert d.get("/duplicates/export", format="xml").status_code == 400


def test_cli_scans_summarises_exports_and_resolves(collection, photos, tmp_path):
    d = collection
    runner = CliRunner()
    out = tmp_path / "dups.csv"
    common = ["--gateway", d.base, "--token", TOKEN]
    result = runner.invoke(duplicates_cmd, [*common, "--csv", str(out)])
    assert result.exit_code == 0, result.output
    assert "4 duplicate groups, 9 images" in result.output
    assert len(list(csv.DictReader(io.StringIO(out.read_text())))) == 9

    result = runner.invoke(duplicates_cmd, [*common, "--no-scan", "--tier", "copy", "--resolve", "oldest",
                                            "--delete-others"], input="n\n")
    assert result.exit_code == 0 and "nothing changed" in result.output
    assert len(d.groups(status="open")) == 4

    result = runner.invoke(duplicates_cmd, [*common, "--no-scan", "--resolve", "oldest", "--delete-others", "--yes"])
    assert result.exit_code == 0, result.output
    assert "resolved 4 groups by oldest; 5 images deleted" in result.output
    assert d.groups(status="open") == [] and len(d.groups(status="resolved")) == 4
    result = runner.invoke(duplicates_cmd, [*common])  # a rescan: nothing reopens
    assert result.exit_code == 0, result.output
    assert "4 duplicate groups, 9 images" in result.output and " open" not in result.output.split("\n  ")[0]
    assert d.groups(status="open") == []
    bad = runner.invoke(duplicates_cmd, ["--gateway", d.base])  # a scan is a write: it needs the token
    assert bad.exit_code != 0 and "HTTP 401" in bad.output


def test_review_page_in_chromium(collection, browser, photos):
    from tests.test_browser import wait_until
    d = collection
    d.scan()
    driver = browser
    driver.get(d.base + "/duplicates?limit=2")
    driver.find_element("id", "token").send_keys(TOKEN)
    driver.execute_script("document.activeElement.blur()")

    def shown():
        return driver.execute_script("""
            const groups = [...document.querySelectorAll('#groups .group')];
            if (!groups.length || !groups.every(g => [...g.querySelectorAll('img')].every(i => i.complete && i.naturalWidth > 0)))
                return null;
            return groups.map(g => ({id: g.dataset.id, current: g.classList.contains('current'), status: [...g.classList].includes('resolved') ? 'resolved' : 'open',
                members: [...g.querySelectorAll('.member')].map(m => m.dataset.id),
                keep: [...g.querySelectorAll('.member.keep')].map(m => m.dataset.id),
                badges: [...g.querySelectorAll('.member.keep .badge')].map(b => b.innerText.toLowerCase()),
                side_by_side: new Set([...g.querySelectorAll('.member')].map(m => Math.round(m.getBoundingClientRect().top))).size === 1}));
        """)

    def keys(text):
        from selenium.webdriver.common.action_chains import ActionChains
        ActionChains(driver).send_keys(text).perform()

    groups = wait_until(shown, what="the first page of groups")
    api_groups = {g["group_id"]: g for g in d.groups()}
    assert len(groups) == 2 and driver.find_element("id", "page").text == "page 1 · 4 groups"
    for g in groups:
        assert g["members"] == [im["id"] for im in api_groups[g["id"]]["images"]] and g["side_by_side"]
        assert g["keep"] == api_groups[g["id"]]["keep"] and g["badges"] == ["keep"]
    assert [g["current"] for g in groups] == [True, False]
    keys("j")
    assert [g["current"] for g in wait_until(shown)] == [False, True]
    keys("k")
    assert [g["current"] for g in wait_until(shown)] == [True, False]

    # change the keeper (the number keys, then the arrows), accept and delete the others
    first = groups[0]
    keys("2")
    assert wait_until(shown)[0]["keep"] == [first["members"][1]]
    keys("\ue014")  # ArrowRight
    chosen = first["members"][2 % len(first["members"])]
    assert wait_until(shown)[0]["keep"] == [chosen]
    driver.find_element("id", "delete-others").click()
    driver.execute_script("document.activeElement.blur()")
    keys("a")
    wait_until(lambda: (shown() or [{}])[0].get("status") == "resolved", what="the group resolved")
    resolved = d.get(f"/duplicates/{first['id']}").json()
    assert resolved["status"] == "resolved" and resolved["keep"] == [chosen]
    assert all(im["deleted"] == (im["id"] != chosen) for im in resolved["images"])
    assert "deleted" in driver.find_element("id", "message").text
    assert [g["current"] for g in shown()] == [False, True]  # on to the next open group

    # paging, and Enter accepts keeping the proposed keeper
    keys("n")
    wait_until(lambda: driver.find_element("id", "page").text == "page 2 · 3 groups", what="the second page")
    page2 = wait_until(shown)
    keys("\ue007")  # Enter
    wait_until(lambda: (shown() or [{}])[0].get("status") == "resolved", what="accepted with Enter")
    assert d.get(f"/duplicates/{page2[0]['id']}").json()["keep"] == page2[0]["keep"]
    keys("p")
    wait_until(lambda: driver.find_element("id", "page").text == "page 1 · 2 groups", what="back to the first page")
    assert first["id"] not in {g["id"] for g in wait_until(shown)}  # the open ones only, by default
    console = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert not console, console


def test_lost_scan_messages_are_sent_again(tmp_path, model_server):
    """A scan's start message and one of its ranges, lost with a worker (see worker.watchdog), are
    sent again; the job ends with its groups. Synthetic vectors written as ingest would."""
    import numpy as np

    from services.store.duplicates import DuplicateStore
    from services.broker import INGEST_QUEUE, SCAN_RANGE_TASK, make_celery
    from services.jobs import submit_duplicate_scan

    settings = isolated_settings(tmp_path, model_server, task_visibility_timeout_s=2)
    store, app = Store.from_settings(settings), make_celery(settings)
    model_key = "effnet_lite0:1"
    store.redis.set(store.key("active_model", settings.model_name), model_key)
    rng = np.random.default_rng(5)
    ids = [f"{i:064x}" for i in range(40)]
    vectors = rng.standard_normal((40, 64)).astype(np.float32)
    layouts = rng.standard_normal((40, 4, 256)).astype(np.float32)
    for copy, original in ((1, 0), (3, 2), (5, 4)):  # planted copies: the same content, a little noise
        vectors[copy] = vectors[original] + 0.01 * rng.standard_normal(64)
        layouts[copy] = layouts[original] + 0.01 * rng.standard_normal((4, 256))
    layouts /= np.linalg.norm(layouts, axis=-1, keepdims=True)
    store.create_images([(i, {"source": f"{n}.jpg", "width": 10 + n, "height": 10}) for n, i in enumerate(ids)])
    store.put_vectors(model_key, ids, vectors)
    store.put_layouts(model_key, ids, layouts)
    workers = []
    try:
        lost_start = submit_duplicate_scan(app, store, full=True)
        with app.connection_for_write() as conn:  # popped and dropped, as by a worker killed at once
            assert conn.default_channel.basic_get(INGEST_QUEUE, no_ack=True) is not None
        workers.append(WorkerProcess(settings, tmp_path, concurrency=2))
        workers[0].wait_ready()
        job = wait_for_job(store, lost_start, timeout_s=60, workers=workers)
        assert (job["state"], job["total"], job["done"], job["resent"]) == ("done", 41, 41, 1), job
        expected = sorted([[ids[0], ids[1]], [ids[2], ids[3]], [ids[4], ids[5]]])
        assert sorted(sorted(m["id"] for m in g["members"]) for g in DuplicateStore(store).list_groups()[0]) == expected

        # a scan whose start ran but whose second range (and so its grouping) never arrived
        more = [f"{i:064x}" for i in range(40, 44)]
        store.create_images([(i, {"source": i}) for i in more])
        store.put_vectors(model_key, more, np.concatenate([vectors[6:7] + 0.01, rng.standard_normal((3, 64))]))
        store.put_layouts(model_key, more, np.concatenate([layouts[6:7], layouts[:3] * -1]))
        seq = store.current_seq()
        ranges = [{"key": f"seq {seq - 4}-{seq - 2}", "after": seq - 4, "upto": seq - 2, "count": 2, "scan_upto": seq},
                  {"key": f"seq {seq - 2}-{seq}", "after": seq - 2, "upto": seq, "count": 2, "scan_upto": seq}]
        store.create_job("lost-range", None, "duplicates")
        store.save_job_chunks("lost-range", [[r] for r in ranges] + [[{"key": "grouping", "grouping": True, "scan_upto": seq}]])
        store.start_job("lost-range", total=5)
        app.send_task(SCAN_RANGE_TASK, args=["lost-range", *[ranges[1][k] for k in ("after", "upto", "count", "scan_upto")]])
        job = wait_for_job(store, "lost-range", timeout_s=60, workers=workers)
        assert (job["state"], job["done"], job["resent"]) >= ("done", 5, 1), job
        groups = DuplicateStore(store).list_groups()[0]
        assert sorted(m["id"] for g in groups for m in g["members"] if more[0] in {x["id"] for x in g["members"]}) == \
            sorted([ids[6], more[0]])
    finally:
        for w in workers:
            w.stop()
        drop_keys(settings)
        store.redis.close()
