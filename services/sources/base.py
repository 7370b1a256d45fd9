"""What the source modules share: the error type, display-safe names, the extensions they judge by."""
from __future__ import annotations

import time

MIB = 1024 * 1024
CHUNK = 64 * 1024
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})
ARCHIVE_EXTENSIONS = frozenset({".zip", ".tar", ".gz", ".tgz", ".bz2", ".tbz2", ".xz", ".txz",
                                ".7z", ".rar"})


class SourceError(ValueError):
    """A refusal: `code` for machines, `message` for people (never holds credentials)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class MemberError(SourceError):
    """One archive member or directory entry is skipped; the rest goes on."""


def printable(text: str) -> str:
    """`text` safe to store and show: lone surrogates (the undecodable bytes of a file name, as
    os.fsdecode keeps them, or a "\\ud800" escape in JSON) become U+FFFD. Redis, JSON logs and
    HTTP answers all need valid UTF-8; the real name stays in the item's path."""
    try:
        raw = text.encode("utf-8", "surrogateescape")  # the file name's own bytes back
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace")


class Deadline:
    """A wall-clock limit shared by the steps of one piece of work."""

    def __init__(self, seconds: float, what: str):
        self.at = time.monotonic() + seconds
        self.seconds, self.what = seconds, what

    def left(self) -> float:
        return self.at - time.monotonic()

    def check(self) -> None:
        if time.monotonic() > self.at:
            raise SourceError("timeout", f"{self.what} took longer than the limit of {self.seconds:g} s")
