"""Fetching archives from a real HTTP server on 127.0.0.1: checksums, resume, idempotency, safe extraction."""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from dataset_layouts import add_symlink, make_mvtec_category, make_tar

from anombench.errors import UserError
from anombench_plugins.datafetch import fetch_archive
from anombench_plugins import mvtec
from anombench_plugins.mvtec import MVTecAD


@dataclass
class ArchiveServer:
    """Serves one payload at /<name>, honouring "Range: bytes=N-" unless told not to; can cut a response short."""

    payload: bytes = b""
    ranges: bool = True
    cut_after: int | None = None  # send only this many body bytes of the next response, then drop the connection
    requests: list[str | None] = field(default_factory=list)  # the Range header of every request
    url: str = ""

    def respond(self, handler: BaseHTTPRequestHandler) -> None:
        requested = handler.headers.get("Range")
        self.requests.append(requested)
        if not handler.path.endswith(".tar.gz") and not handler.path.endswith(".tar.xz"):
            handler.send_error(404)
            return
        start = int(re.fullmatch(r"bytes=(\d+)-", requested).group(1)) if requested and self.ranges else 0
        if start >= len(self.payload) and requested and self.ranges:
            handler.send_response(416)
            handler.send_header("Content-Range", f"bytes */{len(self.payload)}")
            handler.end_headers()
            return
        body = self.payload[start:]
        handler.send_response(206 if start else 200)
        if start:
            handler.send_header("Content-Range", f"bytes {start}-{len(self.payload) - 1}/{len(self.payload)}")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if self.cut_after is not None:
            body, self.cut_after = body[: self.cut_after], None
            handler.close_connection = True
        handler.wfile.write(body)


@pytest.fixture
def server() -> Iterator[ArchiveServer]:
    state = ArchiveServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.respond(self)

        def log_message(self, *args) -> None:  # keep test output clean
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def archive(tmp_path: Path) -> bytes:
    """A tar.gz of one small MVTec category, laid out like the official archive (categories at the top)."""
    source = tmp_path / "source"
    make_mvtec_category(source, "bottle", size=(32, 32), n_train=8, n_good=4, defects={"crack": 4})
    return make_tar(tmp_path / "bottle.tar.gz", source)


def test_download_verify_extract_and_clean_up(server, archive, tmp_path):
    server.payload = archive
    root = tmp_path / "data"
    fetch_archive(f"{server.url}/mvtec.tar.gz", root, sha256(archive))
    assert len(list((root / "bottle/train/good").iterdir())) == 8
    assert (root / "bottle/ground_truth/crack/003_mask.png").is_file()
    assert (root / ".mvtec.tar.gz.extracted").read_text().strip() == sha256(archive)
    assert not (root / "mvtec.tar.gz").exists() and not (root / "mvtec.tar.gz.part").exists()


def test_second_call_is_a_no_op(server, archive, tmp_path):
    server.payload = archive
    root = tmp_path / "data"
    fetch_archive(f"{server.url}/mvtec.tar.gz", root, sha256(archive))
    (root / "bottle/train/good/000.png").unlink()  # would come back if it extracted again
    fetch_archive(f"{server.url}/mvtec.tar.gz", root, sha256(archive))
    assert len(server.requests) == 1
    assert not (root / "bottle/train/good/000.png").exists()


def test_checksum_mismatch_deletes_and_extracts_nothing(server, archive, tmp_path):
    server.payload = archive
    root = tmp_path / "data"
    with pytest.raises(UserError, match=f"checksum mismatch for mvtec.tar.gz: expected sha256 {'0' * 64}, got"):
        fetch_archive(f"{server.url}/mvtec.tar.gz", root, "0" * 64)
    assert sorted(p.name for p in root.iterdir()) == []


def test_malformed_checksum_is_refused_before_downloading(server, tmp_path):
    with pytest.raises(UserError, match="--sha256 must be 64 hexadecimal digits"):
        fetch_archive(f"{server.url}/mvtec.tar.gz", tmp_path, "abc")
    assert server.requests == []


def test_interrupted_download_resumes_with_a_range_request(server, archive, tmp_path):
    server.payload, server.cut_after = archive, len(archive) // 2
    root = tmp_path / "data"
    url = f"{server.url}/mvtec.tar.gz"
    with pytest.raises(UserError, match=rf"stopped at {len(archive) // 2} of {len(archive)} bytes; run the same"):
        fetch_archive(url, root, sha256(archive))
    assert (root / "mvtec.tar.gz.part").stat().st_size == len(archive) // 2
    fetch_archive(url, root, sha256(archive))
    assert server.requests == [None, f"bytes={len(archive) // 2}-"]
    assert (root / "bottle/test/crack/000.png").is_file()


def test_server_without_range_support_restarts_cleanly(server, archive, tmp_path):
    server.payload, server.ranges = archive, False
    root = tmp_path / "data"
    root.mkdir()
    stale = b"stale bytes from another attempt"
    (root / "mvtec.tar.gz.part").write_bytes(stale)
    fetch_archive(f"{server.url}/mvtec.tar.gz", root, sha256(archive))
    assert server.requests == [f"bytes={len(stale)}-"]
    assert (root / "bottle/train/good/007.png").is_file()


def test_complete_part_file_is_finished_without_new_bytes(server, archive, tmp_path):
    server.payload = archive
    root = tmp_path / "data"
    root.mkdir()
    (root / "mvtec.tar.gz.part").write_bytes(archive)  # an earlier run died just before renaming it
    fetch_archive(f"{server.url}/mvtec.tar.gz", root, sha256(archive))
    assert server.requests == [f"bytes={len(archive)}-"]
    assert (root / "bottle/train/good/000.png").is_file()


@pytest.mark.parametrize("member", ["../evil.txt", "bottle/../../evil.txt"])
def test_path_traversal_is_rejected(server, tmp_path, member):
    payload = make_tar(tmp_path / "evil.tar.gz", extra={"fine.txt": b"ok", member: b"pwned"})
    server.payload = payload
    root = tmp_path / "data"
    with pytest.raises(UserError, match=rf"refusing to extract evil.tar.gz: member '{re.escape(member)}' is unsafe"):
        fetch_archive(f"{server.url}/evil.tar.gz", root, sha256(payload))
    assert not (tmp_path / "evil.txt").exists()
    assert not (root / ".evil.tar.gz.extracted").exists()


def test_link_leaving_the_root_is_rejected(server, tmp_path):
    payload = add_symlink(tmp_path / "link.tar.gz", "bottle", "/etc")
    server.payload = payload
    with pytest.raises(UserError, match="member 'bottle' is unsafe"):
        fetch_archive(f"{server.url}/link.tar.gz", tmp_path / "data", sha256(payload))
    assert not (tmp_path / "data" / "bottle").exists()


def test_http_error_and_non_archive(server, tmp_path):
    with pytest.raises(UserError, match=r"download of .*/missing.zip failed: HTTP 404"):
        fetch_archive(f"{server.url}/missing.zip", tmp_path / "a", None)
    server.payload = b"<html>please log in</html>"
    with pytest.raises(UserError, match="is not a readable tar archive"):
        fetch_archive(f"{server.url}/page.tar.gz", tmp_path / "b", None)


def test_mvtec_download_skips_a_complete_release_extracted_by_hand(server, archive, tmp_path, monkeypatch):
    monkeypatch.setattr(mvtec, "OFFICIAL_COUNTS", {c: (1, 1, 1) for c in mvtec.CATEGORIES})  # a tiny "release"
    monkeypatch.setattr(mvtec, "DEFAULT_URL", f"{server.url}/mvtec_anomaly_detection.tar.gz")
    monkeypatch.setattr(mvtec, "DEFAULT_SHA256", sha256(archive))
    server.payload = archive
    root = tmp_path / "mvtec"
    for category in mvtec.CATEGORIES:
        make_mvtec_category(root, category, size=(8, 8), n_train=1, n_good=1, defects={"bent": 1})
    MVTecAD.download(str(root))
    assert server.requests == []
    (root / "zipper/ground_truth/bent/000_mask.png").unlink()  # incomplete now: fetch the release
    MVTecAD.download(str(root))
    assert server.requests == [None] and (root / "bottle/train/good/007.png").is_file()


def test_mvtec_download_of_an_xz_archive_then_check(server, tmp_path):
    source = tmp_path / "source"
    for category in ("bottle", "grid"):
        make_mvtec_category(source, category, size=(24, 24), n_train=2, n_good=1, defects={"bent": 1})
    payload = make_tar(tmp_path / "mvtec_anomaly_detection.tar.xz", source, mode="w:xz")
    server.payload = payload
    root = tmp_path / "mvtec"
    url = f"{server.url}/mvtec_anomaly_detection.tar.xz"
    MVTecAD.download(str(root), url=url, sha256=sha256(payload))
    MVTecAD.download(str(root), url=url, sha256=sha256(payload))
    assert len(server.requests) == 1
    assert MVTecAD(root=str(root)).categories() == ["grid", "bottle"]
    rows = {line.split()[0]: line.split() for line in MVTecAD.check(str(root)).splitlines()[2:]}
    assert rows["grid"][:6] == ["grid", "texture", "2", "1", "1", "1"]
    assert rows["total"] == ["total", "4", "2", "2", "2", "0", "of", "15", "categories", "complete"]
