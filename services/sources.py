"""Where images come from: URLs, server-side directories and uploaded archives, fetched safely.

This module is the boundary between hostile input and the worker. Every refusal is a `SourceError`
(a ValueError) with a machine `code` and a human `message`; nothing here logs, and URLs in messages
have their credentials removed.

    fetch_url        bad_url, dns_error, blocked_address, connection_error, timeout, http_error,
                     too_large, too_many_redirects
    iter_directory   not_allowed, not_found
    extract_archive  bad_archive, too_many_members, too_large (the whole archive); per-member skips
                     (links, devices, unsafe paths, non-images, nested archives, oversized or
                     corrupt members) are returned as (member, error) pairs, not raised.
"""
from __future__ import annotations

import base64
import contextlib
import functools
import http.client
import ipaddress
import lzma
import os
import re
import socket
import ssl
import tarfile
import threading
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, NamedTuple
from urllib.parse import quote, urljoin, urlsplit

import certifi

from services.config import Settings

MIB = 1024 * 1024
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})
ARCHIVE_EXTENSIONS = frozenset({".zip", ".tar", ".gz", ".tgz", ".bz2", ".tbz2", ".xz", ".txz",
                                ".7z", ".rar"})
USER_AGENT = "vsearch/0.1 (image fetcher)"
_REDIRECTS = (301, 302, 303, 307, 308)
_CHUNK = 64 * 1024
# Embedded-IPv4 ranges the ipaddress module does not unwrap for us (IPv4-compatible, NAT64), and
# NAT64's local-use prefix, which reaches whatever the local translator reaches.
_V4_COMPAT = ipaddress.ip_network("::/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
# What the zip, tar and decompression libraries raise on corrupt or truncated input.
_ARCHIVE_ERRORS = (OSError, EOFError, RuntimeError, NotImplementedError, zipfile.BadZipFile,
                   tarfile.TarError, zlib.error, lzma.LZMAError)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class SourceError(ValueError):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class _MemberError(SourceError):
    """One archive member is skipped; the rest of the archive goes on."""


@dataclass(frozen=True)
class FetchedURL:
    final_url: str  # after redirects, credentials removed
    content: bytes
    content_type: str | None


@dataclass(frozen=True)
class DirectoryItem:
    path: Path
    label: str | None


@dataclass(frozen=True)
class ArchiveItem:
    path: Path    # the extracted file, inside dest_dir
    member: str   # the member's name in the archive
    label: str | None


class ArchiveSkip(NamedTuple):
    member: str
    error: str


@dataclass
class ArchiveResult:
    items: list[ArchiveItem]
    skipped: list[ArchiveSkip]


# ---------------------------------------------------------------------------------------------- URLs

def is_public_address(ip: IPAddress) -> bool:
    """True for globally routable unicast addresses; IPv4 embedded in IPv6 is judged as IPv4."""
    if ip.version == 6:
        if ip in _NAT64_LOCAL:
            return False
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and (ip in _V4_COMPAT or ip in _NAT64):
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public_address(embedded)
    return ip.is_global and not ip.is_multicast


def fetch_url(url: str, *, max_bytes: int = Settings.max_upload_mb * MIB, timeout_s: float = 10.0,
              allow_private: bool = False, max_redirects: int = 5, user_agent: str = USER_AGENT,
              is_allowed_address: Callable[[IPAddress], bool] = is_public_address,
              ssl_context: ssl.SSLContext | None = None) -> FetchedURL:
    """GET an http(s) URL whose every hop resolves only to allowed addresses, within one deadline.

    `allow_private` lifts the address check (`is_allowed_address`), nothing else.
    """
    deadline = time.monotonic() + timeout_s
    check = None if allow_private else is_allowed_address
    for _ in range(max_redirects + 1):
        parts = _parse_url(url)
        addresses = _resolve(parts.hostname, parts.port, check, url)
        status, location, content, content_type = _get(parts, addresses, deadline, max_bytes,
                                                       user_agent, ssl_context or _default_tls())
        if status not in _REDIRECTS:
            return FetchedURL(redact_url(url), content, content_type)
        if not location:
            raise SourceError("http_error", f"{redact_url(url)}: HTTP {status} without a Location")
        url = urljoin(url, location)
    raise SourceError("too_many_redirects", f"more than {max_redirects} redirects")


def fetch_with_settings(url: str, settings: Settings) -> bytes:
    """fetch_url under the deployment's limits: upload size, total time, private addresses."""
    return fetch_url(url, max_bytes=settings.max_upload_mb * MIB, timeout_s=settings.url_timeout_s,
                     allow_private=settings.allow_private_urls).content


class _Target(NamedTuple):
    scheme: str
    hostname: str  # ASCII (IDNA) form
    port: int
    path: str      # path and query, as sent
    auth: str | None


def _parse_url(url: str) -> _Target:
    try:
        split = urlsplit(url.strip())
        scheme, host, port = split.scheme.lower(), split.hostname, split.port
        host = host.encode("idna").decode("ascii") if host else host
    except (ValueError, UnicodeError):
        raise SourceError("bad_url", f"not a valid URL: {redact_url(url)}") from None
    if scheme not in ("http", "https"):
        raise SourceError("bad_url", "only http and https URLs can be fetched")
    # Non-ASCII is percent-encoded as browsers do; spaces and control characters are refused.
    path = _quote_non_ascii(split.path or "/")
    path += f"?{_quote_non_ascii(split.query)}" if split.query else ""
    if not host or re.search(r"[\x00-\x20\x7f]", path):
        raise SourceError("bad_url", f"not a valid URL: {redact_url(url)}")
    auth = None
    if split.username is not None:  # allowed, sent as basic auth to this hop only, never echoed
        raw = f"{split.username}:{split.password or ''}".encode()
        auth = "Basic " + base64.b64encode(raw).decode("ascii")
    return _Target(scheme, host, port or (443 if scheme == "https" else 80), path, auth)


def _quote_non_ascii(text: str) -> str:
    return re.sub(r"[^\x00-\x7f]+", lambda match: quote(match.group()), text)


def redact_url(url: str) -> str:
    """The URL without `user:password@` (a regex: it must work on URLs urlsplit rejects)."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*:)?//[^/?#]*@", r"\1//", url.strip())


def _resolve(host: str, port: int, check: Callable | None, url: str) -> list[str]:
    """The host's addresses, refused unless every one passes `check`.

    Numeric spellings (2130706433, 0x7f.1, 0177.0.0.1) come back from getaddrinfo as dotted quads,
    so they are judged like any other address.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise SourceError("dns_error", f"cannot resolve the host of {redact_url(url)}") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if check is not None and not all(check(ipaddress.ip_address(a)) for a in addresses):
        raise SourceError("blocked_address", f"{redact_url(url)} points to a private or reserved address")
    return addresses


@functools.cache
def _default_tls() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=certifi.where())


def _get(target: _Target, addresses: list[str], deadline: float, max_bytes: int, user_agent: str,
         tls: ssl.SSLContext) -> tuple[int, str | None, bytes, str | None]:
    """One request: (status, Location, body, Content-Type); redirects come back with an empty body."""
    conn = _pinned_connection(target, addresses, deadline, tls)
    headers = {"User-Agent": user_agent, "Accept": "image/*,*/*;q=0.5", "Connection": "close"}
    if target.auth:
        headers["Authorization"] = target.auth
    try:
        conn.connect()
        with _shutdown_at_deadline(conn.sock, deadline - time.monotonic()) as expired:
            try:
                conn.request("GET", target.path, headers=headers)
                with conn.getresponse() as resp:
                    result = _read_response(resp, max_bytes)
            except (OSError, http.client.HTTPException):
                if not expired.is_set():
                    raise
        if expired.is_set():  # cut off: the error above, or a body that merely looks complete
            raise TimeoutError
        return result
    except TimeoutError:
        raise SourceError("timeout", "no complete answer within the time limit") from None
    except (OSError, http.client.HTTPException) as exc:
        raise SourceError("connection_error", f"request failed: {type(exc).__name__}: {exc}") from None
    finally:
        conn.close()


def _pinned_connection(target: _Target, addresses: list[str], deadline: float,
                       tls: ssl.SSLContext) -> http.client.HTTPConnection:
    """A connection to the validated addresses, never to a fresh lookup of the name.

    A second DNS answer could differ from the checked one (DNS rebinding). http.client opens its
    socket through `_create_connection`; pointing it at the checked addresses pins the connection,
    while the Host header, TLS SNI and the certificate check still use the name. No proxy is
    used (an HTTP(S)_PROXY would resolve the name again on its side).
    """
    timeout = max(deadline - time.monotonic(), 0.001)
    if target.scheme == "https":
        conn = http.client.HTTPSConnection(target.hostname, target.port, timeout=timeout, context=tls)
    else:
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=timeout)
    conn._create_connection = lambda _address, timeout, *_: _connect(addresses, target.port, timeout)
    return conn


def _connect(addresses: list[str], port: int, timeout: float) -> socket.socket:
    error: OSError | None = None
    for address in addresses:  # e.g. an AAAA record first on a host without IPv6 routes
        try:
            return socket.create_connection((address, port), timeout)
        except OSError as exc:
            error = exc
    raise error or OSError("no address")


@contextlib.contextmanager
def _shutdown_at_deadline(sock: socket.socket, seconds: float) -> Iterator[threading.Event]:
    """Shuts the socket down when `seconds` have passed; the event says whether it did.

    Socket timeouts bound each read, not their sum: a server sending a byte every second would
    never trip them. Shutting the socket down from a timer thread wakes the blocked read at once.
    (The TCP connect has its own timeout; a TLS handshake is bounded per read only.)
    """
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        with contextlib.suppress(OSError):  # plain-socket method: SSLSocket's drops its TLS state
            socket.socket.shutdown(sock, socket.SHUT_RDWR)

    timer = threading.Timer(max(seconds, 0.0), expire)
    timer.daemon = True
    timer.start()
    try:
        yield expired
    finally:
        timer.cancel()


def _read_response(resp: http.client.HTTPResponse, max_bytes: int
                   ) -> tuple[int, str | None, bytes, str | None]:
    if resp.status in _REDIRECTS:
        return resp.status, resp.getheader("Location"), b"", None
    if not 200 <= resp.status < 300:
        raise SourceError("http_error", f"the server answered HTTP {resp.status}")
    if resp.length is not None and resp.length > max_bytes:
        raise SourceError("too_large", f"{resp.length} bytes, more than the limit of {max_bytes}")
    body = bytearray()
    while chunk := resp.read(_CHUNK):  # counted: Content-Length may be absent or wrong
        body += chunk
        if len(body) > max_bytes:
            raise SourceError("too_large", f"more than the limit of {max_bytes} bytes")
    return resp.status, None, bytes(body), resp.getheader("Content-Type")


# ----------------------------------------------------------------------------------------- directories

def iter_directory(directory: str | os.PathLike, allowed_roots: Iterable[str | os.PathLike]
                   ) -> Iterator[DirectoryItem]:
    """The image files below `directory`, sorted; label = first-level folder name (class folders).

    Checks happen at call time, before the first item. Symlinked folders are never entered;
    symlinked files count only when their target lies inside an allowed root (the target's path
    is yielded). An empty `allowed_roots` disables directory sources.
    """
    roots = [Path(os.path.realpath(root)) for root in allowed_roots]
    if not roots:
        raise SourceError("not_allowed", "directory sources are disabled (no allowed roots configured)")
    base = Path(os.path.realpath(directory))
    if not _inside(base, roots):
        raise SourceError("not_allowed", f"{directory} is not inside an allowed root")
    if not base.is_dir():
        raise SourceError("not_found", f"{directory} is not a directory")
    if not os.access(base, os.R_OK | os.X_OK):
        raise SourceError("not_allowed", f"{directory} cannot be read by the worker")
    return _walk(base, roots)


def count_directory(directory: str | os.PathLike, allowed_roots: Iterable[str | os.PathLike]) -> int:
    return sum(1 for _ in iter_directory(directory, allowed_roots))


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path.is_relative_to(root) for root in roots)


def _walk(base: Path, roots: list[Path]) -> Iterator[DirectoryItem]:
    stack = [base]  # explicit stack: deep trees must not hit the recursion limit
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as scan:
                entries = sorted(scan, key=lambda e: e.name)
        except OSError:
            continue  # an unreadable subfolder is skipped, not fatal
        subfolders = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                subfolders.append(Path(entry.path))
            elif (path := _image_file(entry, roots)) is not None:
                yield DirectoryItem(path, _label(Path(entry.path).relative_to(base).parts))
        stack.extend(reversed(subfolders))


def _image_file(entry: os.DirEntry, roots: list[Path]) -> Path | None:
    if Path(entry.name).suffix.lower() not in IMAGE_EXTENSIONS:
        return None
    if entry.is_symlink():
        target = Path(os.path.realpath(entry.path))
        return target if _inside(target, roots) and target.is_file() else None
    return Path(entry.path) if entry.is_file(follow_symlinks=False) else None  # no fifos, devices


def _label(parts: tuple[str, ...]) -> str | None:
    """`<class>/<image>` (or deeper) -> the class folder; a file at the top has no label."""
    return parts[0] if len(parts) >= 2 else None


# -------------------------------------------------------------------------------------------- archives

class _Member(NamedTuple):
    name: str
    kind: str  # "file", "dir", "link" or "other" (device, fifo)
    size: int  # as declared, which may be a lie
    open: Callable[[], BinaryIO]


def extract_archive(archive_path: str | os.PathLike, dest_dir: str | os.PathLike, *,
                    max_members: int = Settings.max_archive_members,
                    max_total_bytes: int = Settings.max_archive_mb * MIB,
                    max_member_bytes: int = Settings.max_upload_mb * MIB) -> ArchiveResult:
    """Extract the images of a zip or tar (plain, gz, bz2, xz; sniffed, not by extension).

    Files are written as `dest_dir/000000.jpg`, `000001.png`...: member names never become paths,
    so nothing can land outside dest_dir whatever the names say. Unsafe names are still reported.
    On a SourceError the files written so far are removed.
    """
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    extracted: list[tuple[tuple[str, ...], Path, str]] = []
    skipped: list[ArchiveSkip] = []
    total = 0
    try:
        with contextlib.closing(_members(Path(archive_path))) as members:
            for count, member in enumerate(members, 1):
                if count > max_members:  # folders count too: they cost a header each
                    raise SourceError("too_many_members", f"more than {max_members} members")
                if member.kind == "dir":
                    continue
                try:
                    parts = _vet(member, max_member_bytes)
                    if member.size > max_total_bytes - total:
                        raise SourceError("too_large", "the archive expands beyond the total size limit")
                    path = dest / f"{len(extracted):06d}{Path(parts[-1]).suffix.lower()}"
                    total += _copy(member, path, max_member_bytes, max_total_bytes - total)
                except _MemberError as exc:
                    skipped.append(ArchiveSkip(member.name, exc.message))
                    continue
                extracted.append((parts, path, member.name))
    except BaseException:
        for _, path, _ in extracted:
            path.unlink(missing_ok=True)
        raise
    labels = _archive_labels([parts for parts, _, _ in extracted])
    items = [ArchiveItem(path, name, label) for (_, path, name), label in zip(extracted, labels)]
    return ArchiveResult(items, skipped)


def _members(path: Path) -> Iterator[_Member]:
    """The archive's entries in order; a tar is read as one stream (no second pass)."""
    try:
        with open(path, "rb") as f:
            is_zip = f.read(4) in (b"PK\x03\x04", b"PK\x05\x06")
        if is_zip:
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    yield _Member(info.filename, _zip_kind(info), info.file_size,
                                  functools.partial(zf.open, info))
        else:
            with tarfile.open(path, "r|*") as tf:
                for info in tf:
                    yield _Member(info.name, _tar_kind(info), info.size,
                                  functools.partial(tf.extractfile, info))
    except _ARCHIVE_ERRORS as exc:  # raised by the readers, not by the loop body in our caller
        raise SourceError("bad_archive", f"corrupt, truncated or not a zip or tar archive ({exc})") from None


def _zip_kind(info: zipfile.ZipInfo) -> str:
    if info.is_dir():
        return "dir"
    file_type = (info.external_attr >> 16) & 0o170000  # Unix mode, when the zip was made on Unix
    return {0: "file", 0o100000: "file", 0o120000: "link"}.get(file_type, "other")


def _tar_kind(info: tarfile.TarInfo) -> str:
    if info.isreg():
        return "file"
    if info.isdir():
        return "dir"
    return "link" if info.issym() or info.islnk() else "other"


def _vet(member: _Member, max_member_bytes: int) -> tuple[str, ...]:
    """The member's path parts, or a _MemberError saying why it is skipped."""
    if member.kind == "link":
        raise _MemberError("unsafe_member", "links are not extracted")
    if member.kind != "file":
        raise _MemberError("unsafe_member", "devices and fifos are not extracted")
    parts = _safe_parts(member.name)
    suffix = Path(parts[-1]).suffix.lower()
    if suffix in ARCHIVE_EXTENSIONS:
        raise _MemberError("nested_archive", "archives inside archives are not extracted")
    if suffix not in IMAGE_EXTENSIONS or parts[0] == "__MACOSX" or parts[-1].startswith("._"):
        raise _MemberError("not_image", "not an image file name")
    if member.size > max_member_bytes:
        raise _MemberError("too_large", f"{member.size} bytes, more than the limit of {max_member_bytes}")
    return parts


def _safe_parts(name: str) -> tuple[str, ...]:
    normalized = name.replace("\\", "/")  # Windows tools write backslashes
    if normalized.startswith("/") or re.match(r"[A-Za-z]:", normalized):
        raise _MemberError("unsafe_member", "absolute path")
    parts = tuple(p for p in normalized.split("/") if p not in ("", "."))
    if ".." in parts or not parts:
        raise _MemberError("unsafe_member", "path escapes the archive")
    return parts


def _copy(member: _Member, path: Path, member_limit: int, total_left: int) -> int:
    """Copy, counting real bytes (declared sizes can lie); returns the size written."""
    limit = min(member_limit, total_left)
    written = 0
    out = open(path, "xb")  # "x": never writes through an existing file or link
    try:
        with out, _open_member(member) as src:
            while chunk := _read(src):
                written += len(chunk)
                if written > limit:
                    break
                out.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if written > limit:
        path.unlink()
        if limit == total_left < member_limit:
            raise SourceError("too_large", "the archive expands beyond the total size limit")
        raise _MemberError("too_large", f"expands beyond the limit of {member_limit} bytes")
    return written


def _open_member(member: _Member) -> BinaryIO:
    try:
        return member.open()
    except _ARCHIVE_ERRORS as exc:  # encrypted, unknown compression, bad local header
        raise _MemberError("bad_member", f"unreadable member ({exc})") from None


def _read(src: BinaryIO) -> bytes:
    try:
        return src.read(_CHUNK)
    except _ARCHIVE_ERRORS as exc:
        raise _MemberError("bad_member", f"corrupt member ({exc})") from None


def _archive_labels(paths: list[tuple[str, ...]]) -> list[str | None]:
    """Folder-per-class labels, after dropping one top-level folder that wraps all class folders.

    `caltech/001.ak47/x.jpg` -> `001.ak47`. A lone folder of images (`cats/1.jpg`, nothing deeper)
    is a class, not a wrapper.
    """
    firsts = {parts[0] for parts in paths}
    wrapped = (len(firsts) == 1 and all(len(p) >= 2 for p in paths)
               and any(len(p) >= 3 for p in paths))
    return [_label(parts[1:] if wrapped else parts) for parts in paths]
