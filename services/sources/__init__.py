"""Where images come from: URLs, server-side directories and uploaded archives, read safely.

This package is the boundary between hostile input and the worker. Every refusal is a
`SourceError` (a ValueError) with a machine `code` and a human `message`; nothing here logs, and
URLs in messages are redacted. One module per source:

    urls         fetch_url, fetch_with_settings, redact_url, is_public_address
    directories  iter_directory, count_directory, read_file
    archives     extract_archive
    base         SourceError, MemberError, printable, the extensions judged by
"""
from services.sources.archives import ArchiveItem, ArchiveResult, ArchiveSkip, extract_archive
from services.sources.base import (
    ARCHIVE_EXTENSIONS, IMAGE_EXTENSIONS, MIB, MemberError, SourceError, printable,
)
from services.sources.directories import DirectoryItem, count_directory, iter_directory, read_file
from services.sources.urls import (
    USER_AGENT, FetchedURL, fetch_url, fetch_with_settings, is_public_address, redact_url,
)

__all__ = [
    "ARCHIVE_EXTENSIONS", "IMAGE_EXTENSIONS", "MIB", "USER_AGENT", "ArchiveItem", "ArchiveResult",
    "ArchiveSkip", "DirectoryItem", "FetchedURL", "MemberError", "SourceError", "count_directory",
    "extract_archive", "fetch_url", "fetch_with_settings", "is_public_address", "iter_directory",
    "printable", "read_file", "redact_url",
]
