"""The web page end to end in headless Chromium (Debian's `chromium` + `chromium-driver`, via Selenium).

A real deployment (own Redis prefix, a Celery worker process, the session's model server), the gateway
served over HTTP by werkzeug on 127.0.0.1, ten real photos indexed through the API. The browser then
searches by upload and by URL and reads the jobs table. Set VSEARCH_UPDATE_SCREENSHOTS=1 to refresh
docs/img/web-search.png from the run.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time

import pytest
import requests
from PIL import Image
from werkzeug.serving import make_server

from gateway import create_app
from evaluation import transforms
from services.store import Store, image_id
from tests.conftest import ROOT, imagenet_label, serving_image
from tests.workers import WorkerProcess, drop_keys, isolated_settings, wait_for_job

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SCREENSHOT = ROOT / "docs" / "img" / "web-search.png"
# Without these, headless Chromium on a machine with no outside network floods refused connections
# (component updates, sync, safe browsing, metrics).
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-default-apps",
    "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1280,900",
)

pytestmark = pytest.mark.slow


def open_rgb(path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


@pytest.fixture
def browser(tmp_path, monkeypatch):
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    # Never let Selenium Manager look for (or download) a driver or browser: both paths are given.
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console, read at the end
    log = open(tmp_path / "chromedriver.log", "w")
    service = Service(CHROMEDRIVER, log_output=log)
    try:
        driver = webdriver.Chrome(service=service, options=options)
    except Exception:
        log.close()
        raise
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        log.close()


@pytest.fixture
def served(tmp_path, model_server, photos):
    """A deployment with 10 photos indexed (labels from class folders), its gateway on a real port."""
    settings = isolated_settings(tmp_path, model_server)
    worker = WorkerProcess(settings, tmp_path, concurrency=1)
    app = create_app({"SETTINGS": settings})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    store = Store.from_settings(settings)
    try:
        worker.wait_ready()
        tree = tmp_path / "photos"
        for p in photos[:10]:
            folder = tree / f"class_{imagenet_label(p):03d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / p.name).write_bytes(p.read_bytes())
        with requests.post(f"{base}/api/v1/jobs", json={"directory": str(tree)}, timeout=10) as response:
            assert response.status_code == 202, response.text
            job_id = response.json()["job_id"]
        job = wait_for_job(store, job_id, timeout_s=60, workers=[worker])
        assert (job["state"], job["done"], job["failed"]) == ("done", 10, 0), job
        yield base, job_id
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        resources = app.extensions.get("vsearch")
        if resources is not None:
            for name in ("model", "store"):
                if name in vars(resources):  # cached_property: only close what was made
                    obj = vars(resources)[name]
                    (obj.close() if name == "model" else obj.redis.close())
        worker.stop()
        drop_keys(settings)
        store.redis.close()


@pytest.fixture
def image_server(photos):
    """Serves a mirrored copy of photos[6] over HTTP on 127.0.0.1, for search by URL."""
    with serving_image(transforms.to_jpeg_bytes(transforms.mirror(open_rgb(photos[6])))) as url:
        yield url


def wait_until(condition, timeout_s: float = 20, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}")


def result_cards(driver) -> list[dict]:
    """The grid as the user sees it, once every thumbnail has loaded."""
    return driver.execute_script("""
        const cards = [...document.querySelectorAll('#results .card')];
        if (!cards.length || !cards.every(c => { const i = c.querySelector('img');
                                                 return i.complete && i.naturalWidth > 0; })) return null;
        return cards.map(c => ({
            id: c.dataset.id,
            score: c.querySelector('.score').innerText,
            labels: [...c.querySelectorAll('.label')].map(l => l.innerText),
            visible: c.getBoundingClientRect().width > 0 && getComputedStyle(c).visibility === 'visible',
        }));
    """)


def search_and_wait(driver, previous_took: str) -> list[dict]:
    driver.find_element("id", "search-button").click()
    wait_until(lambda: driver.find_element("id", "took").text not in ("", previous_took)
               or driver.find_element("id", "message").get_attribute("class") == "error",
               what="search results")
    message = driver.find_element("id", "message")
    assert message.get_attribute("class") != "error", message.text
    return wait_until(lambda: result_cards(driver), what="thumbnails")


def test_search_page_in_chromium(browser, served, image_server, photos, tmp_path):
    base, job_id = served
    driver = browser
    driver.get(base + "/")
    assert driver.title.startswith("vsearch")

    # the jobs view: the finished directory job with its progress; the index state in the header
    row = wait_until(lambda: [r for r in driver.find_elements("css selector", "#jobs tbody tr")
                              if r.text.startswith(job_id[:8])], what="jobs table")[0]
    cells = [td.text for td in row.find_elements("tag name", "td")]
    assert cells[1:5] == ["directory", "done", "10/10", "0"], cells
    progress = row.find_element("tag name", "progress")
    assert (progress.get_attribute("value"), progress.get_attribute("max")) == ("10", "10")
    assert "10 images" in driver.find_element("id", "index-state").text

    # search by URL: a mirrored copy served by a local web server
    url_photo = photos[6]
    driver.find_element("id", "url").send_keys(image_server)
    cards = search_and_wait(driver, "")
    assert cards[0]["id"] == image_id(url_photo.read_bytes())
    assert cards[0]["labels"] == [f"class_{imagenet_label(url_photo):03d}", url_photo.name]
    assert driver.find_element("css selector", "#query-preview img").get_attribute("src") == image_server

    # search by upload: a mirrored, watermarked JPEG copy of one indexed photo
    photo = photos[2]
    query = tmp_path / "my-copy.jpg"
    query.write_bytes(transforms.to_jpeg_bytes(transforms.watermark(transforms.mirror(open_rgb(photo)))))
    driver.find_element("id", "file").send_keys(str(query))
    assert driver.find_element("id", "url").get_attribute("value") == ""  # choosing a file clears the URL
    preview = wait_until(lambda: driver.execute_script(
        "const i = document.querySelector('#query-preview img'); return i && i.complete && i.naturalWidth;"),
        what="query preview")
    assert preview > 0
    took = driver.find_element("id", "took").text
    cards = search_and_wait(driver, took)
    assert len(cards) == 10 and all(c["visible"] for c in cards)
    first = cards[0]
    assert first["id"] == image_id(photo.read_bytes())
    assert first["labels"] == [f"class_{imagenet_label(photo):03d}", photo.name]
    scores = [float(c["score"].split("·")[1].split()[0]) for c in cards]
    assert [c["score"].split("·")[0].strip() for c in cards] == [f"#{i}" for i in range(1, 11)]
    assert scores == sorted(scores, reverse=True)  # no layout bonus below rank 1: cosine order
    assert scores[0] > 0.5 and scores[0] - scores[1] > 0.2, scores  # the copy stands out
    assert "copy" in cards[0]["score"]  # its layout confirmed it
    assert driver.find_element("id", "took").text.startswith("10 results in ")

    console = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert not console, console  # no script errors, no failed requests, no DOM warnings

    # the whole page, as in the docs
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 1280, "height": height, "deviceScaleFactor": 1, "mobile": False})
    shot = tmp_path / "web-search.png"
    assert driver.save_screenshot(str(shot))
    if os.environ.get("VSEARCH_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
