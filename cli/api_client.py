"""A small HTTP client of the gateway's /api/v1, used by the CLI (`vsearch index/search/jobs`)."""
from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path
from typing import Callable, Iterable

import requests


class ApiError(RuntimeError):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{message} ({code}, HTTP {status})")
        self.status, self.code, self.message = status, code, message


class GatewayClient:
    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 60.0):
        self.base = base_url.rstrip("/") + "/api/v1"
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.timeout_s = timeout_s

    def _call(self, method: str, path: str, **kwargs) -> dict:
        try:
            response = self.session.request(method, self.base + path, timeout=self.timeout_s, **kwargs)
        except requests.ConnectionError:
            raise ApiError(0, "unreachable", f"no gateway answers at {self.base}; is `vsearch up` running?") from None
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                error = {"code": "http_error", "message": response.text[:200] or response.reason}
            raise ApiError(response.status_code, error["code"], error["message"])
        return response.json() if response.content else {}

    def search_file(self, path: Path, k: int, collection: str | None = None, min_verdict: str | None = None) -> dict:
        form = {"k": str(k)} | ({"collection": collection} if collection else {}) | \
            ({"min_verdict": min_verdict} if min_verdict else {})
        with open(path, "rb") as f:
            return self._call("POST", "/search", files={"file": (path.name, f)}, data=form)

    def search(self, **query) -> dict:
        return self._call("POST", "/search", json={k: v for k, v in query.items() if v is not None})

    def add_files(self, paths: list[Path], label: str | None = None, collection: str | None = None) -> dict:
        handles = [open(p, "rb") for p in paths]
        form = {k: v for k, v in (("label", label), ("collection", collection)) if v}
        try:
            files = [("file", (p.name, h)) for p, h in zip(paths, handles)]
            return self._call("POST", "/images", files=files, data=form or None)
        finally:
            for h in handles:
                h.close()

    def add_urls(self, urls: list[str], collection: str | None = None) -> dict:
        return self._call("POST", "/jobs", json={"urls": urls, "collection": collection})

    def add_directory(self, directory: Path, collection: str | None = None) -> dict:
        return self._call("POST", "/jobs", json={"directory": str(directory.resolve()), "collection": collection})

    def upload_directory(self, directory: Path, collection: str | None = None) -> dict:
        """For a gateway that may not read this directory: send it as a tar archive."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            tar.add(directory, arcname=directory.name)
        buffer.seek(0)
        return self._call("POST", "/jobs", files={"archive": (f"{directory.name}.tar", buffer)},
                          data={"collection": collection} if collection else None)

    def job(self, job_id: str) -> dict:
        return self._call("GET", f"/jobs/{job_id}")

    def jobs(self, limit: int = 20) -> list[dict]:
        return self._call("GET", "/jobs", params={"limit": limit})["jobs"]

    def index(self) -> dict:
        return self._call("GET", "/index")

    def scan_duplicates(self, full: bool = False) -> dict:
        return self._call("POST", "/duplicates/scan", json={"full": full})

    def duplicates(self, tier: str | None = None, status: str | None = None, cursor: str | None = None,
                   limit: int = 100) -> dict:
        params = {k: v for k, v in {"tier": tier, "status": status, "cursor": cursor, "limit": limit}.items() if v}
        return self._call("GET", "/duplicates", params=params)

    def all_duplicates(self, tier: str | None = None, status: str | None = None) -> list[dict]:
        groups, cursor = [], None
        while True:
            page = self.duplicates(tier, status, cursor, limit=200)
            groups += page["groups"]
            cursor = page["next_cursor"]
            if cursor is None:
                return groups

    def resolve_duplicates(self, group_id: str, *, keep: list[str] | None = None, rule: str | None = None,
                           delete_others: bool = False) -> dict:
        body = {"keep": keep} if keep is not None else {"rule": rule}
        return self._call("POST", f"/duplicates/{group_id}/resolve", json=body | {"delete_others": delete_others})

    def export_duplicates(self, fmt: str = "csv", tier: str | None = None, status: str | None = None) -> bytes:
        params = {k: v for k, v in {"format": fmt, "tier": tier, "status": status}.items() if v}
        response = self.session.get(f"{self.base}/duplicates/export", params=params, timeout=self.timeout_s)
        if response.status_code >= 400:
            self._call("GET", "/duplicates/export", params=params)  # raises the API's error
        return response.content

    def thumbnail(self, image_id: str) -> bytes:
        response = self.session.get(f"{self.base}/images/{image_id}/thumbnail", timeout=self.timeout_s)
        response.raise_for_status()
        return response.content

    def wait(self, job_id: str, on_progress: Callable[[dict], None] = lambda job: None,
             poll_s: float = 0.5, timeout_s: float | None = None) -> dict:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            on_progress(job)
            if job["state"] in ("done", "failed"):
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['state']} after {timeout_s}s")
            time.sleep(poll_s)


def split_targets(targets: Iterable[str]) -> tuple[list[str], list[Path], list[Path]]:
    """URLs, directories and files among command-line arguments."""
    urls, dirs, files = [], [], []
    for t in targets:
        if t.startswith(("http://", "https://")):
            urls.append(t)
        elif Path(t).is_dir():
            dirs.append(Path(t))
        elif Path(t).is_file():
            files.append(Path(t))
        else:
            raise FileNotFoundError(f"{t}: not a URL, a directory or a file")
    return urls, dirs, files
