"""Fetching an http(s) URL safely: every hop's addresses checked, connections pinned to the checked
addresses, one deadline over DNS, connect, redirects and body, a size cap counted on the bytes.

Refusals (`SourceError.code`): bad_url, dns_error, blocked_address, connection_error, timeout,
http_error, too_large, too_many_redirects. URLs in messages are redacted (`redact_url`).
"""
from __future__ import annotations

import base64
import contextlib
import functools
import http.client
import ipaddress
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Callable, Collection, Iterator, NamedTuple
from urllib.parse import quote, urljoin, urlsplit

import certifi

from services.config import Settings
from services.sources.base import CHUNK, MIB, SourceError

USER_AGENT = "vsearch/0.1 (image fetcher)"
_REDIRECTS = (301, 302, 303, 307, 308)
# IPv6 forms that carry an IPv4 address, judged as that address: IPv4-compatible (::/96), SIIT
# (::ffff:0:0/96, RFC 6052/7915) and NAT64's well-known prefix. (IPv4-mapped and 6to4 the
# ipaddress module unwraps itself.) NAT64's local-use prefix reaches whatever the local
# translator reaches: refused. Any other IPv6 address must be global unicast (2000::/3), which
# leaves out site-local fec0::/10, unique-local, link-local and the rest of the reserved space.
_EMBEDDING_V4 = tuple(ipaddress.ip_network(n) for n in ("::/96", "::ffff:0:0/96", "64:ff9b::/96"))
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class FetchedURL:
    final_url: str  # after redirects, redacted
    content: bytes
    content_type: str | None


# ---------------------------------------------------------------------------------------------- URLs

def is_public_address(ip: IPAddress) -> bool:
    """True for globally routable unicast addresses; IPv4 embedded in IPv6 is judged as IPv4."""
    if ip.version == 6:
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and any(ip in net for net in _EMBEDDING_V4):
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public_address(embedded)
        if ip in _NAT64_LOCAL or ip not in _GLOBAL_UNICAST:
            return False
    return ip.is_global and not ip.is_multicast


def fetch_url(url: str, *, max_bytes: int = Settings.max_upload_mb * MIB, timeout_s: float = 10.0,
              allow_private: bool = False, max_redirects: int = 5, user_agent: str = USER_AGENT,
              is_allowed_address: Callable[[IPAddress], bool] = is_public_address,
              allowed_ports: Collection[int] = (), ssl_context: ssl.SSLContext | None = None) -> FetchedURL:
    """GET an http(s) URL whose every hop resolves only to allowed addresses, within one deadline
    (DNS included). `allow_private` lifts the address check (`is_allowed_address`), nothing else;
    `allowed_ports`, when given, is the only ports any hop may use.
    """
    deadline = time.monotonic() + timeout_s
    check = None if allow_private else is_allowed_address
    for _ in range(max_redirects + 1):
        parts = _parse_url(url)
        if allowed_ports and parts.port not in allowed_ports:
            raise SourceError("blocked_port", f"port {parts.port} is not one of the allowed ports")
        addresses = _resolve(parts.hostname, parts.port, check, url, deadline)
        status, location, content, content_type = _get(parts, addresses, deadline, max_bytes,
                                                       user_agent, ssl_context or _default_tls())
        if status not in _REDIRECTS:
            return FetchedURL(redact_url(url), content, content_type)
        if not location:
            raise SourceError("http_error", f"{redact_url(url)}: HTTP {status} without a Location")
        url = urljoin(url, location)
    raise SourceError("too_many_redirects", f"more than {max_redirects} redirects")


def fetch_with_settings(url: str, settings: Settings) -> bytes:
    """fetch_url under the deployment's limits: size, total time, private addresses, ports."""
    return fetch_url(url, max_bytes=settings.max_upload_mb * MIB, timeout_s=settings.url_timeout_s,
                     allow_private=settings.allow_private_urls, allowed_ports=settings.url_ports).content


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
    """The URL as shown to people: without `user:password@`, query and fragment (presigned URLs
    carry their keys in the query). Parsed with urllib; what it cannot parse is cut by pattern."""
    text = url.strip()
    try:
        split = urlsplit(text)
    except ValueError:
        split = None
    if split is not None and split.netloc:
        host = split.netloc.rpartition("@")[2]
        return f"{split.scheme}:" * bool(split.scheme) + f"//{host}{split.path}"
    text = re.split(r"[?#]", text, maxsplit=1)[0]
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*:)?//[^/]*@", r"\1//", text)


def _resolve(host: str, port: int, check: Callable | None, url: str, deadline: float) -> list[str]:
    """The host's addresses, refused unless every one passes `check`; within the deadline.

    Numeric spellings (2130706433, 0x7f.1, 0177.0.0.1) come back from getaddrinfo as dotted quads,
    so they are judged like any other address. getaddrinfo has no timeout of its own: it runs in
    a daemon thread, abandoned (it ends with the resolver's own timeout) when the deadline passes.
    """
    answer: dict = {}

    def lookup() -> None:
        try:
            answer["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            answer["error"] = exc

    thread = threading.Thread(target=lookup, name="dns-lookup", daemon=True)
    thread.start()
    thread.join(max(deadline - time.monotonic(), 0.0))
    if thread.is_alive():
        raise SourceError("timeout", f"the host of {redact_url(url)} did not resolve within the time limit")
    if "error" in answer:
        raise SourceError("dns_error", f"cannot resolve the host of {redact_url(url)}")
    addresses = list(dict.fromkeys(info[4][0] for info in answer["infos"]))
    if check is not None and not all(check(ipaddress.ip_address(a.split("%")[0])) for a in addresses):
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
    while chunk := resp.read(CHUNK):  # counted: Content-Length may be absent or wrong
        body += chunk
        if len(body) > max_bytes:
            raise SourceError("too_large", f"more than the limit of {max_bytes} bytes")
    return resp.status, None, bytes(body), resp.getheader("Content-Type")
