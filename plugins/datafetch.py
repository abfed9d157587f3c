"""Fetching dataset archives: resumable, checksummed, idempotent, and extracted without escaping the target.

- resumable: bytes go to ``<root>/<archive>.part``; a rerun asks the server for the rest with an HTTP Range
  request (a server that answers with the whole file instead gets a fresh download);
- checksummed: the SHA-256 of the whole archive is checked before anything is extracted; a mismatch deletes
  the file, because a resumed download would only append to the corruption;
- safe: members are extracted one at a time through Python's tarfile "data" filter, which refuses paths with
  ``..``, links that leave the target and device files; an archive that tries is rejected, naming the member;
- idempotent: a marker ``.<archive>.extracted`` (holding the archive's SHA-256) is written after a complete
  extraction, and the archive is then deleted; a second call finds the marker and does nothing.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import lzma
import re
import tarfile
import zlib
from pathlib import Path
from typing import BinaryIO
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse
from urllib.request import Request, urlopen

from tqdm import tqdm

from anombench.errors import UserError

log = logging.getLogger("anombench.data")

CHUNK_BYTES = 1 << 20
TIMEOUT_SECONDS = 60.0
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def archive_name(url: str) -> str:
    """The file name the URL points at (query strings dropped); archives are stored under it in the root."""
    name = Path(urlparse(url).path).name
    return name or "download.tar"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def _resumed_at(response: http.client.HTTPResponse, offset: int) -> bool:
    """True if the server sent exactly the rest of the file from ``offset`` (206 with a matching range)."""
    if response.status != 206:
        return False
    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    return match is not None and int(match.group(1)) == offset


def _copy(response: BinaryIO, target: Path, mode: str, initial: int, total: int | None, label: str) -> int:
    """Stream the body into ``target``; returns the file's size afterwards."""
    size = initial
    with target.open(mode) as out, tqdm(
        total=total, initial=initial, unit="B", unit_scale=True, desc=label, disable=None
    ) as bar:
        while block := response.read(CHUNK_BYTES):
            out.write(block)
            size += len(block)
            bar.update(len(block))
    return size


def download(url: str, dest: Path) -> None:
    """Download ``url`` to ``dest``, resuming from ``dest.part`` if an earlier attempt left one."""
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        with urlopen(Request(url, headers=headers), timeout=TIMEOUT_SECONDS) as response:
            resumed = offset > 0 and _resumed_at(response, offset)
            start = offset if resumed else 0
            length = response.headers.get("Content-Length")
            total = start + int(length) if length is not None else None
            if offset and not resumed:
                log.info("server did not resume %s; downloading it again from the start", url)
            size = _copy(response, part, "ab" if resumed else "wb", start, total, dest.name)
    except HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left to send: an earlier run got every byte
            part.replace(dest)
            return
        raise UserError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (URLError, OSError, http.client.HTTPException) as exc:
        raise UserError(f"download of {url} was interrupted ({exc}); run the same command again to resume") from None
    if total is not None and size != total:
        raise UserError(f"download of {url} stopped at {size} of {total} bytes; run the same command again to resume")
    part.replace(dest)


def verify(path: Path, sha256: str | None) -> str:
    """Check the archive's SHA-256 (if one is expected) and return it; a bad file is deleted."""
    actual = sha256_of(path)
    if sha256 is None:
        log.warning("no sha256 given for %s: its integrity is not checked (sha256 %s)", path.name, actual)
    elif actual != sha256.lower():
        path.unlink()
        raise UserError(
            f"checksum mismatch for {path.name}: expected sha256 {sha256.lower()}, got {actual}; "
            "the file was deleted: check the URL and --sha256, then run the command again"
        )
    return actual


def safe_extract(archive: Path, root: Path) -> None:
    """Extract a tar archive (any compression tarfile reads) into ``root``, refusing unsafe members."""
    if not hasattr(tarfile, "data_filter"):
        raise UserError("safe extraction needs Python 3.10.12 / 3.11.4 or newer (tarfile extraction filters)")
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:  # one pass: extracting while iterating avoids decompressing the archive twice
                tar.extract(member, root, filter="data")
    except tarfile.FilterError as exc:
        raise UserError(
            f"refusing to extract {archive.name}: member {exc.tarinfo.name!r} is unsafe ({exc}); "
            "the archive is not what the URL should serve"
        ) from None
    except (tarfile.TarError, EOFError, lzma.LZMAError, zlib.error) as exc:
        raise UserError(f"{archive} is not a readable tar archive ({exc}); delete it and download again") from None


def _marker(root: Path, name: str) -> Path:
    return root / f".{name}.extracted"


def is_extracted(root: Path, url: str, sha256: str | None) -> bool:
    """Whether this archive was already extracted completely into ``root`` (by its marker)."""
    marker = _marker(root, archive_name(url))
    if not marker.is_file():
        return False
    return sha256 is None or marker.read_text().strip() == sha256.lower()


def fetch_archive(url: str, root: Path, sha256: str | None) -> None:
    """Download, verify and extract the archive at ``url`` into ``root``; a no-op if that was done before."""
    if sha256 is not None and not _SHA256.fullmatch(sha256):
        raise UserError(f"--sha256 must be 64 hexadecimal digits, got {sha256!r}")
    root.mkdir(parents=True, exist_ok=True)
    name = archive_name(url)
    if is_extracted(root, url, sha256):
        log.info("%s is already extracted in %s; nothing to do", name, root)
        return
    archive = root / name
    if not archive.exists():
        download(url, archive)
    digest = verify(archive, sha256)
    log.info("extracting %s into %s", name, root)
    safe_extract(archive, root)
    _marker(root, name).write_text(digest + "\n")
    archive.unlink()
