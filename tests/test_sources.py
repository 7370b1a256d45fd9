"""services.sources: URL fetching against local servers, directory walks, archive extraction.

Every connection goes to 127.0.0.1 or 127.0.0.2 (a "canary" server that must never be reached).
"""
from __future__ import annotations

import io
import ipaddress
import os
import shutil
import socket
import ssl
import stat
import subprocess
import tarfile
import threading
import time
import zipfile
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from services import sources
from services.sources import archives
from services.sources.base import Deadline, MemberError
from services.sources import SourceError, extract_archive, fetch_url, is_public_address
from tests.conftest import QuietHandler

PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS"
       b"\xde\x00\x00\x00\x0cIDATx\x9cc\xf8\xcf\xc0\x00\x00\x03\x01\x01\x00\xc9\xfe\x92\xef\x00\x00\x00"
       b"\x00IEND\xaeB`\x82")
DRIBBLE_S = 0.05


# ------------------------------------------------------------------------------------ test servers

class Handler(QuietHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.server.seen.append({"path": self.path, "host": self.headers["Host"],
                                 "auth": self.headers["Authorization"]})
        route = getattr(self, "route_" + self.path.strip("/").split("?")[0].replace("-", "_"), None)
        (route or self.route_missing)()

    def route_img(self):
        self.send(200, PNG, Content_Type="image/png")

    def route_missing(self):
        self.send(404, b"no")

    def route_redirect(self):
        self.send(302, Location="/img")

    def route_redirect_absolute(self):
        self.send(301, Location=f"http://127.0.0.1:{self.server.server_port}/img")

    def route_redirect_blocked(self):
        self.send(302, Location=f"http://127.0.0.2:{self.server.canary_port}/img")

    def route_redirect_file(self):
        self.send(302, Location="file:///etc/passwd")

    def route_redirect_nowhere(self):
        self.send(302)

    def route_loop(self):
        self.send(307, Location="/loop")

    def route_huge(self):
        self.send(200, Content_Length=str(10**12))  # and no body at all

    def route_endless(self):
        self.close_connection = True
        self.send_response(200)
        self.send_header("Connection", "close")
        self.end_headers()
        for _ in range(320):  # 20 MiB at most, should the client keep reading
            self.wfile.write(b"\0" * 65536)

    def route_slow(self):
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.dribble(b"x" * 1000)

    def route_slow_headers(self):
        self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        self.dribble(b"a" * 1000)

    def dribble(self, data):
        for i in range(len(data)):
            self.wfile.write(data[i:i + 1])
            time.sleep(DRIBBLE_S)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address):
        super().__init__(address, Handler)
        self.seen = []
        self.canary_port = None

    def handle_error(self, request, client_address):
        pass  # clients hang up on purpose (size caps, deadlines)


def start(server):
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def servers():
    canary = start(Server(("127.0.0.2", 0)))
    main = start(Server(("127.0.0.1", 0)))
    main.canary_port = canary.server_port
    yield main, canary
    for server in (main, canary):
        server.shutdown()
        server.server_close()


@pytest.fixture
def server(servers):
    main, canary = servers
    main.seen.clear()
    canary.seen.clear()
    yield main
    assert canary.seen == [], "the canary on 127.0.0.2 must never be reached"


@pytest.fixture
def connections(monkeypatch):
    """Every address a TCP connection is opened to."""
    opened = []
    real = socket.create_connection

    def spy(address, *args, **kwargs):
        opened.append(address[0])
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", spy)
    return opened


def url(server, path="/img", host="127.0.0.1"):
    return f"http://{host}:{server.server_port}{path}"


def only_127_0_0_1(ip):
    return ip == ipaddress.ip_address("127.0.0.1")


# ------------------------------------------------------------------------------------------ fetching

def test_fetch_image(server):
    got = fetch_url(url(server), allow_private=True)
    assert got.content == PNG and got.content_type == "image/png"
    assert got.final_url == url(server)
    assert server.seen[0]["host"] == f"127.0.0.1:{server.server_port}"


@pytest.mark.parametrize("path", ["/redirect", "/redirect-absolute"])
def test_redirects_followed(server, path):
    got = fetch_url(url(server, path), allow_private=True)
    assert got.content == PNG and got.final_url == url(server, "/img")
    assert [r["path"] for r in server.seen] == [path, "/img"]


def test_redirect_hop_is_checked_again(server, connections):
    with pytest.raises(SourceError) as err:
        fetch_url(url(server, "/redirect-blocked"), is_allowed_address=only_127_0_0_1)
    assert err.value.code == "blocked_address"
    assert connections == ["127.0.0.1"]  # first hop only; the fixture checks the canary too


def test_redirect_to_other_scheme_refused(server):
    with pytest.raises(SourceError) as err:
        fetch_url(url(server, "/redirect-file"), allow_private=True)
    assert err.value.code == "bad_url"


def test_redirect_limits(server):
    with pytest.raises(SourceError) as err:
        fetch_url(url(server, "/loop"), allow_private=True, max_redirects=3)
    assert err.value.code == "too_many_redirects" and len(server.seen) == 4
    with pytest.raises(SourceError) as err:
        fetch_url(url(server, "/redirect"), allow_private=True, max_redirects=0)
    assert err.value.code == "too_many_redirects"
    with pytest.raises(SourceError) as err:
        fetch_url(url(server, "/redirect-nowhere"), allow_private=True)
    assert err.value.code == "http_error"


def test_dns_answer_is_pinned(server, connections, monkeypatch):
    """A name that resolves to an allowed address first and elsewhere later (DNS rebinding)."""
    real = socket.getaddrinfo
    answers = iter(["127.0.0.1"])
    lookups = []

    def rebinding(host, *args, **kwargs):
        if host == "images.test":
            lookups.append(host)
            host = next(answers, "127.0.0.2")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    got = fetch_url(url(server, host="images.test"), is_allowed_address=only_127_0_0_1)
    assert got.content == PNG and lookups == ["images.test"] and connections == ["127.0.0.1"]
    assert server.seen[0]["host"] == f"images.test:{server.server_port}"  # the name, not the IP


def test_international_names_and_paths(server, monkeypatch):
    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: real(
        "127.0.0.1" if host == "xn--bcher-kva.test" else host, *a, **k))
    fetch_url(f"http://bücher.test:{server.server_port}/img?q=фото", allow_private=True)
    assert server.seen[0] == {"path": "/img?q=%D1%84%D0%BE%D1%82%D0%BE", "auth": None,
                              "host": f"xn--bcher-kva.test:{server.server_port}"}


BLOCKED = [
    "http://127.0.0.1:{port}/img", "http://localhost:{port}/img", "http://127.1:{port}/img",
    "http://2130706433:{port}/img", "http://0x7f.1:{port}/img", "http://0x7f000001:{port}/img",
    "http://0177.0.0.1:{port}/img", "http://0.0.0.0:{port}/img", "http://10.0.0.1/", "http://172.16.0.1/",
    "http://192.168.1.1/", "http://169.254.169.254/latest/meta-data/", "http://100.64.0.1/",
    "http://224.0.0.1/", "http://240.0.0.1/", "http://255.255.255.255/", "http://198.18.0.1/",
    "http://[::1]:{port}/img", "http://[::]/", "http://[fe80::1]/", "http://[fc00::1]/", "http://[fd12::1]/",
    "http://[ff02::1]/", "http://[::ffff:127.0.0.1]:{port}/img", "http://[::ffff:a9fe:a9fe]/",
    "http://[::127.0.0.1]/", "http://[64:ff9b::10.0.0.1]/", "http://[64:ff9b:1::1]/",
    "http://[2002:7f00:1::]/", "https://user:secret@127.0.0.1:{port}/img",
]


@pytest.mark.parametrize("template", BLOCKED)
def test_private_addresses_refused_without_connecting(server, connections, template):
    with pytest.raises(SourceError) as err:
        fetch_url(template.format(port=server.server_port))
    assert err.value.code == "blocked_address"
    assert "secret" not in err.value.message
    assert connections == [] and server.seen == []


@pytest.mark.parametrize("bad", [
    "file:///etc/passwd", "ftp://127.0.0.1/x.jpg", "gopher://127.0.0.1:70/_x", "javascript:alert(1)",
    "//127.0.0.1/img", "http:///img", "http://[::1/", "http://127.0.0.1:99999/", "http://127.0.0.1/a b",
    "http://127.0.0.1/a\r\nX-Injected: 1",
])
def test_bad_urls_refused(server, connections, bad):
    with pytest.raises(SourceError) as err:
        fetch_url(bad, allow_private=True)
    assert err.value.code == "bad_url" and connections == []


@pytest.mark.parametrize("address,public", [
    ("8.8.8.8", True), ("2606:4700:4700::1111", True), ("::ffff:8.8.8.8", True), ("64:ff9b::808:808", True),
    ("2002:808:808::", True), ("127.0.0.2", False), ("100.127.255.255", False), ("::ffff:10.1.2.3", False),
    ("::ffff:169.254.169.254", False), ("fe80::1%1", False), ("2001:db8::1", False), ("ff0e::1", False),
])
def test_is_public_address(address, public):
    assert is_public_address(ipaddress.ip_address(address)) is public


def test_credentials_sent_but_never_echoed(server):
    got = fetch_url(url(server, host="user:s3cret@127.0.0.1"), allow_private=True)
    assert server.seen[0]["auth"] == "Basic dXNlcjpzM2NyZXQ="
    assert "s3cret" not in got.final_url and got.final_url == url(server)
    with pytest.raises(SourceError) as err:
        fetch_url("http://user:s3cret@[::1/", allow_private=True)
    assert "s3cret" not in err.value.message


def test_http_error(server):
    with pytest.raises(SourceError) as err:
        fetch_url(url(server, "/missing"), allow_private=True)
    assert err.value.code == "http_error" and "404" in err.value.message


def test_size_caps(server):
    assert fetch_url(url(server), allow_private=True, max_bytes=len(PNG)).content == PNG
    for path, cap in [("/img", len(PNG) - 1), ("/huge", 10**6), ("/endless", 100_000)]:
        started = time.monotonic()
        with pytest.raises(SourceError) as err:
            fetch_url(url(server, path), allow_private=True, max_bytes=cap)
        assert err.value.code == "too_large", path
        assert time.monotonic() - started < 2


@pytest.mark.parametrize("path", ["/slow", "/slow-headers"])
def test_dribbling_server_hits_the_total_deadline(server, path):
    started = time.monotonic()
    with pytest.raises(SourceError) as err:
        fetch_url(url(server, path), allow_private=True, timeout_s=0.5)
    assert err.value.code == "timeout"
    assert 0.4 < time.monotonic() - started < 1.5  # each byte came well within a per-read timeout


def test_connection_refused(server):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening
        with pytest.raises(SourceError) as err:
            fetch_url(f"http://127.0.0.1:{port}/", allow_private=True)
    assert err.value.code == "connection_error"


# ------------------------------------------------------------------------------------------------ TLS

@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """An HTTPS server on 127.0.0.1 whose certificate names only `images.test`."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", d / "key.pem", "-out", d / "cert.pem", "-days", "1",
                    "-subj", "/CN=images.test", "-addext", "subjectAltName=DNS:images.test"],
                   check=True, capture_output=True)
    server = Server(("127.0.0.1", 0))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(d / "cert.pem", d / "key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    start(server)
    yield server, ssl.create_default_context(cafile=str(d / "cert.pem"))
    server.shutdown()
    server.server_close()


def test_tls_pinned_address_keeps_name_for_sni_and_certificate(tls_server, connections, monkeypatch):
    server, client_context = tls_server
    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: real(
        "127.0.0.1" if host == "images.test" else host, *a, **k))
    got = fetch_url(f"https://images.test:{server.server_port}/img", allow_private=True,
                    ssl_context=client_context)
    assert got.content == PNG and connections == ["127.0.0.1"]
    with pytest.raises(SourceError) as err:  # same server by IP: the certificate does not name it
        fetch_url(f"https://127.0.0.1:{server.server_port}/img", allow_private=True,
                  ssl_context=client_context)
    assert err.value.code == "connection_error" and "certificate" in err.value.message.lower()


# ---------------------------------------------------------------------------------------- directories

@pytest.fixture
def tree(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    for rel in ["top.jpg", "cats/a.JPG", "cats/b.png", "cats/notes.txt", "cats/deep/c.jpeg", "dogs/d.webp",
                "dogs/e.TIFF", "empty/.keep"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"img")
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"secret")
    (root / "link_in.jpg").symlink_to(root / "cats" / "b.png")
    (root / "link_out.jpg").symlink_to(outside / "secret.jpg")
    (root / "linkdir").symlink_to(outside, target_is_directory=True)
    (root / "cats" / "dangling.jpg").symlink_to(root / "nope.jpg")
    os.mkfifo(root / "dogs" / "fifo.jpg")
    return root, outside


def test_directory_walk(tree):
    root, _ = tree
    listed = list(sources.iter_directory(root, (root,)))
    found = [(item.path.relative_to(root).as_posix(), item.label) for item in listed if not item.skip]
    assert found == [("cats/b.png", None),  # link_in.jpg: its target, labelled where the link is
                     ("top.jpg", None), ("cats/a.JPG", "cats"), ("cats/b.png", "cats"),
                     ("cats/deep/c.jpeg", "cats"), ("dogs/d.webp", "dogs"), ("dogs/e.TIFF", "dogs")]
    # the fifo is listed with the reason it is skipped, so its job reports it
    assert [(i.path.name, i.skip) for i in listed if i.skip] == [
        ("fifo.jpg", "not a regular file (a fifo, device or socket): skipped")]
    found.append(("dogs/fifo.jpg", "dogs"))
    assert sources.count_directory(str(root), [str(root)]) == len(found)
    # with the outside folder inside an allowed root, link_out.jpg counts too
    assert sources.count_directory(str(root), [str(root.parent)]) == len(found) + 1


def test_read_file_refuses_links_fifos_and_big_files(tree):
    root, outside = tree
    assert sources.read_file(root / "cats" / "a.JPG", [root], 100) == b"img"
    cases = {root / "link_out.jpg": "unreadable", root / "linkdir" / "secret.jpg": "unreadable",
             root / "dogs" / "fifo.jpg": "not_regular", outside / "secret.jpg": "not_allowed",
             root / "missing.jpg": "unreadable"}
    for path, code in cases.items():  # the fifo is refused at once, not read forever
        with pytest.raises(SourceError) as err:
            sources.read_file(path, [root], 100)
        assert err.value.code == code, path
    with pytest.raises(SourceError) as err:
        sources.read_file(root / "top.jpg", [root], 2)
    assert err.value.code == "too_large"
    # a folder swapped for a symlink between listing and reading is not followed
    (root / "dogs").rename(root / "dogs2")
    (root / "dogs").symlink_to(outside, target_is_directory=True)
    (outside / "d.webp").write_bytes(b"outside")
    with pytest.raises(SourceError) as err:
        sources.read_file(root / "dogs" / "d.webp", [root], 100)
    assert "symlink" in err.value.message


def test_directory_walk_of_a_subfolder(tree):
    root, _ = tree
    found = [(item.path.name, item.label) for item in sources.iter_directory(root / "cats", (root,))
             if not item.skip]
    assert found == [("a.JPG", None), ("b.png", None), ("c.jpeg", "deep")]


def test_directory_roots(tree):
    root, outside = tree
    (root / "escape").symlink_to(outside, target_is_directory=True)
    cases = {
        "not_allowed": [(root, ()), (outside, (root,)), (root / "cats" / ".." / ".." / "outside", (root,)),
                        (f"{root}/../outside", (root,)), (root / "escape", (root,)),
                        (root / "linkdir", (root,)),
                        ("/", (root,))],
        "not_found": [(root / "missing", (root,)), (root / "top.jpg", (root,))],
    }
    for code, calls in cases.items():
        for directory, roots in calls:
            with pytest.raises(SourceError) as err:
                sources.iter_directory(directory, roots)  # refused at call time, before iterating
            assert err.value.code == code, directory


# ------------------------------------------------------------------------------------------- archives

def make_zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return path


def make_tar(path, members: dict[str, bytes], mode="w:gz", special=()):
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in special:
            tf.addfile(info)
    return path


CALTECH = {"caltech/001.ak47/001_0001.jpg": b"a1", "caltech/001.ak47/001_0002.JPEG": b"a2",
           "caltech/002.bat/002_0001.png": b"b1", "caltech/README.txt": b"read me"}


def extracted(result):
    return [(item.member, item.label, item.path.read_bytes()) for item in result.items]


@pytest.mark.parametrize("kind", ["zip", "w", "w:gz", "w:bz2", "w:xz"])
def test_archive_with_wrapper_and_class_folders(tmp_path, kind):
    archive = tmp_path / "upload.bin"  # detected by content, not by name
    make_zip(archive, CALTECH) if kind == "zip" else make_tar(archive, CALTECH, kind)
    result = extract_archive(archive, tmp_path / "out")
    assert extracted(result) == [("caltech/001.ak47/001_0001.jpg", "001.ak47", b"a1"),
                                 ("caltech/001.ak47/001_0002.JPEG", "001.ak47", b"a2"),
                                 ("caltech/002.bat/002_0001.png", "002.bat", b"b1")]
    assert [item.path.name for item in result.items] == ["000000.jpg", "000001.jpeg", "000002.png"]
    assert all(item.path.parent == tmp_path / "out" for item in result.items)
    assert result.skipped == [("caltech/README.txt", "not an image file name")]


@pytest.mark.parametrize("names,labels", [
    (["top.jpg", "cats/b.jpg", "cats/more/c.jpg"], [None, "cats", "cats"]),
    (["cats/1.jpg", "cats/2.jpg"], ["cats", "cats"]),               # one class folder is not a wrapper
    (["wrap/x.jpg", "wrap/dogs/y.jpg"], [None, "dogs"]),
    (["./a/b.jpg", "./a/c/d.jpg", "__MACOSX/a/._b.jpg"], [None, "c"]),  # macOS junk is not a member
])
def test_archive_labels(tmp_path, names, labels):
    result = extract_archive(make_zip(tmp_path / "a.zip", dict.fromkeys(names, b"x")), tmp_path / "out")
    assert [item.label for item in result.items] == labels


def test_zip_slip_and_links(tmp_path):
    link = zipfile.ZipInfo("cats/link.jpg")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = make_zip(tmp_path / "evil.zip", {
        "../evil.jpg": b"e", "/abs.jpg": b"e", "C:/win.jpg": b"e", "cats/../../up.jpg": b"e",
        "..\\back.jpg": b"e", "cats/ok.jpg": b"ok"})
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr(link, "/etc/passwd")
    out = tmp_path / "deep" / "out"
    result = extract_archive(archive, out)
    assert extracted(result) == [("cats/ok.jpg", "cats", b"ok")]
    assert {member for member, _ in result.skipped} == {
        "../evil.jpg", "/abs.jpg", "C:/win.jpg", "cats/../../up.jpg", "..\\back.jpg", "cats/link.jpg"}
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["000000.jpg", "evil.zip"]


def test_a_nameless_zip_member_fails_alone(tmp_path):
    """A central-directory entry with an empty name (zipfile's is_dir raised IndexError on it, and
    the whole archive failed as an "unexpected error"): skipped, the other members extracted."""
    archive = make_zip(tmp_path / "blank.zip", {"": b"e", "cats/ok.jpg": b"ok"})
    result = extract_archive(archive, tmp_path / "out")
    assert extracted(result) == [("cats/ok.jpg", "cats", b"ok")]
    assert [member for member, _ in result.skipped] == [""]


def test_tar_links_devices_and_slip(tmp_path):
    def special(name, kind, linkname=""):
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, linkname
        return info
    archive = make_tar(tmp_path / "evil.tgz", {"../evil.jpg": b"e", "/abs.jpg": b"e", "cats/ok.jpg": b"ok"},
                       special=[special("cats/sym.jpg", tarfile.SYMTYPE, "/etc/passwd"),
                                special("cats/hard.jpg", tarfile.LNKTYPE, "cats/ok.jpg"),
                                special("cats/fifo.jpg", tarfile.FIFOTYPE),
                                special("cats/dev.jpg", tarfile.CHRTYPE)])
    result = extract_archive(archive, tmp_path / "out")
    assert extracted(result) == [("cats/ok.jpg", "cats", b"ok")]
    assert dict(result.skipped) == {
        "../evil.jpg": "path escapes the archive", "/abs.jpg": "absolute path",
        "cats/sym.jpg": "links are not extracted", "cats/hard.jpg": "links are not extracted",
        "cats/fifo.jpg": "devices and fifos are not extracted",
        "cats/dev.jpg": "devices and fifos are not extracted"}
    assert not (tmp_path / "evil.jpg").exists() and not Path("/abs.jpg").exists()


def zip_of_zeros(path, name, size):
    """A small zip whose member inflates to `size` bytes, written without holding them in memory."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ok.jpg", b"ok")
        with zf.open(name, "w") as member:
            for _ in range(size // 65536):
                member.write(bytes(65536))
    return path


def test_zip_bomb_declared_size(tmp_path):
    archive = zip_of_zeros(tmp_path / "bomb.zip", "bomb.jpg", 4 * 2**20)
    assert archive.stat().st_size < 20_000
    result = extract_archive(archive, tmp_path / "out", max_member_bytes=2**20)
    assert [item.member for item in result.items] == ["ok.jpg"]
    assert result.skipped[0].member == "bomb.jpg" and "limit" in result.skipped[0].error
    assert len(list((tmp_path / "out").iterdir())) == 1


def test_zip_bomb_lying_about_its_size(tmp_path):
    archive = zip_of_zeros(tmp_path / "liar.zip", "liar.jpg", 4 * 2**20)
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("liar.jpg")
    central = data.rindex(b"PK\x01\x02")  # the last central directory entry is liar.jpg's
    data[central + 24:central + 28] = (100).to_bytes(4, "little")   # uncompressed size
    data[info.header_offset + 22:info.header_offset + 26] = (100).to_bytes(4, "little")
    archive.write_bytes(data)
    result = extract_archive(archive, tmp_path / "out", max_member_bytes=2**20)
    assert [item.member for item in result.items] == ["ok.jpg"]
    assert [member for member, _ in result.skipped] == ["liar.jpg"]
    assert all(p.stat().st_size <= 2**20 for p in (tmp_path / "out").iterdir())


def test_real_bytes_are_counted_whatever_the_declared_size(tmp_path):
    lying = archives._Member("x.jpg", "file", 10, lambda: io.BytesIO(bytes(5000)))
    deadline = Deadline(60, "test")
    with pytest.raises(SourceError) as err:
        archives._copy(lying, tmp_path / "x.jpg", 1000, 10**9, deadline)
    assert err.value.code == "too_large" and not (tmp_path / "x.jpg").exists()
    with pytest.raises(SourceError) as err:
        archives._copy(lying, tmp_path / "x.jpg", 10**9, 1000, deadline)  # the archive's total budget
    assert err.value.code == "archive_too_large" and not isinstance(err.value, MemberError)


def test_archive_total_cap_removes_what_was_written(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"a/1.jpg": bytes(600_000), "a/2.jpg": bytes(600_000)})
    with pytest.raises(SourceError) as err:
        extract_archive(archive, tmp_path / "out", max_total_bytes=1_000_000)
    assert err.value.code == "archive_too_large" and list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("kind", ["zip", "w:gz"])
def test_too_many_members(tmp_path, kind):
    members = {f"c/{i}.jpg": b"x" for i in range(20)}
    archive = tmp_path / "many"
    make_zip(archive, members) if kind == "zip" else make_tar(archive, members, kind)
    with pytest.raises(SourceError) as err:
        extract_archive(archive, tmp_path / "out", max_members=10)
    assert err.value.code == "too_many_members" and list((tmp_path / "out").iterdir()) == []
    assert len(extract_archive(archive, tmp_path / "out2", max_members=20).items) == 20


def test_nested_archives_and_non_images_skipped(tmp_path):
    inner = make_zip(tmp_path / "inner.zip", {"x.jpg": b"x"}).read_bytes()
    archive = make_zip(tmp_path / "a.zip", {"inner.zip": inner, "more.tar.gz": b"\x1f\x8b", "notes.txt": b"n",
                                            "page.html": b"<html>", "ok.gif": b"GIF89a"})
    result = extract_archive(archive, tmp_path / "out")
    assert [item.member for item in result.items] == ["ok.gif"]
    assert dict(result.skipped) == {"inner.zip": "archives inside archives are not extracted",
                                    "more.tar.gz": "archives inside archives are not extracted",
                                    "notes.txt": "not an image file name",
                                    "page.html": "not an image file name"}


def test_corrupt_archives(tmp_path):
    good_zip = make_zip(tmp_path / "good.zip", {"a/b.jpg": bytes(100_000)}).read_bytes()
    good_tgz = make_tar(tmp_path / "good.tgz", {"a/b.jpg": os.urandom(100_000)}).read_bytes()
    for name, data in [("empty", b""), ("random", os.urandom(5000)), ("text", b"hello " * 200),
                       ("truncated.zip", good_zip[:len(good_zip) // 2]),
                       ("truncated.tgz", good_tgz[:200])]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(SourceError) as err:
            extract_archive(tmp_path / name, tmp_path / "out")
        assert err.value.code == "bad_archive", name
    with pytest.raises(SourceError) as err:
        extract_archive(tmp_path / "does-not-exist.zip", tmp_path / "out")
    assert err.value.code == "bad_archive"


def test_corrupt_member_is_skipped(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"a.jpg": b"A" * 1000, "b.jpg": b"B" * 1000})
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        crc_at = zf.getinfo("a.jpg").header_offset + 14
    data[crc_at:crc_at + 4] = b"\0\0\0\0"
    central = data.index(b"PK\x01\x02")  # a.jpg's central entry: CRC at +16
    data[central + 16:central + 20] = b"\0\0\0\0"
    archive.write_bytes(data)
    result = extract_archive(archive, tmp_path / "out")
    assert [item.member for item in result.items] == ["b.jpg"]
    assert result.skipped[0].member == "a.jpg" and "corrupt" in result.skipped[0].error
