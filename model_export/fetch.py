"""Weights given as a local path or an http(s) URL, read through one local file."""
from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from .errors import ModelExportError

DOWNLOAD_TIMEOUT_S = (10.0, 60.0)  # connect; read, between chunks


def is_url(source: str | Path) -> bool:
    return str(source).startswith(("http://", "https://"))


@contextmanager
def local_file(source: str | Path, what: str = "weights") -> Iterator[Path]:
    """Yields a path to the weights: `source` itself, or a temporary download removed afterwards."""
    if not is_url(source):
        path = Path(source)
        if not path.is_file():
            raise ModelExportError(f"{what} file not found: {path}")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="vsearch-weights-") as tmp:
        path = Path(tmp) / "weights"
        try:
            with requests.get(str(source), stream=True, timeout=DOWNLOAD_TIMEOUT_S) as response:
                response.raise_for_status()
                with path.open("wb") as file:
                    for chunk in response.iter_content(chunk_size=1 << 20):
                        file.write(chunk)
        except requests.RequestException as exc:
            raise ModelExportError(f"cannot download {what} from {source}: {exc}") from exc
        yield path
