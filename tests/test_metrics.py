"""Gateway metrics under gunicorn with several worker processes: every scrape adds up all of them
(gateway/gunicorn_conf.py, Prometheus multiprocess mode), whichever process answers it."""
from __future__ import annotations

import re

import requests

from modelserver.process import stop_process
from tests.workers import drop_keys, isolated_settings, start_gateway

REQUESTS = 40


def test_every_scrape_counts_the_requests_of_every_process(tmp_path, model_server):
    settings = isolated_settings(tmp_path, model_server)
    proc, base = start_gateway(settings, workers=3, threads=2)
    try:
        session = requests.Session()
        for _ in range(REQUESTS):
            assert session.get(base + "/index", timeout=10).status_code == 200
        root = base.removesuffix("/api/v1")
        pattern = re.compile(r'^vsearch_http_request_seconds_count\{[^}]*route="/api/v1/index"[^}]*status="200"[^}]*\} '
                             r'(\S+)$', re.M)
        counts = set()
        for _ in range(6):  # new connections: the scrapes land on different processes
            text = requests.get(root + "/metrics", timeout=10).text
            counts.add(sum(float(v) for v in pattern.findall(text)))
        assert counts == {REQUESTS}, counts  # before: each process's own share
        methods = requests.request("BREW", base + "/index", timeout=10)
        assert methods.status_code == 405
        assert 'method="BREW"' not in requests.get(root + "/metrics", timeout=10).text
    finally:
        stop_process(proc)
        drop_keys(settings)
