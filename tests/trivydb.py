"""A tiny Trivy vulnerability DB for tests, written with the standard library only.

Trivy reads `<cache-dir>/db/trivy.db` (a BoltDB file, trivy-db schema 2) and
`<cache-dir>/db/metadata.json`. No DB can be downloaded where the tests run, so `write_db` builds
one holding just the advisories a test needs; the real `trivy image --skip-db-update
--offline-scan --cache-dir <cache_dir>` then scans against it.

Layout written (the subset of trivy-db that OS package scanning reads):

- bucket `data-source`: platform (`debian 12`) -> {"ID", "Name", "URL"}
- bucket per platform (`debian 12`) -> nested bucket per *source* package -> CVE id ->
  {"FixedVersion": ...}
- bucket `vulnerability`: CVE id -> {"Title", "Description", "Severity", "VendorSeverity",
  "References"}

The BoltDB file is written fresh as one committed transaction: pages 0 and 1 are the meta pages,
page 2 an empty freelist, then every bucket as its own tree of leaf (and, when it does not fit
one page, branch) pages. Keys are sorted bytewise as bbolt requires.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

__all__ = ["SEVERITIES", "Vulnerability", "write_db"]

SEVERITIES = ("UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL")  # index = trivy-db's number

# Data sources trivy-db records per platform, by the platform's first word.
_DATA_SOURCES = {
    "debian": ("Debian Security Tracker", "https://salsa.debian.org/security-tracker-team/security-tracker"),
    "ubuntu": ("Ubuntu CVE Tracker", "https://git.launchpad.net/ubuntu-cve-tracker"),
    "alpine": ("Alpine Secdb", "https://secdb.alpinelinux.org/"),
}  # fmt: skip


@dataclass(frozen=True)
class Vulnerability:
    """One advisory: `package` (a Debian *source* package) is vulnerable below `fixed_version`."""

    id: str
    package: str
    fixed_version: str
    severity: str = "HIGH"
    title: str = ""
    description: str = ""
    platform: str = "debian 12"


def write_db(
    cache_dir: Path,
    vulnerabilities: Sequence[Vulnerability],
    *,
    updated_at: datetime,
    next_update: datetime | None = None,
    downloaded_at: datetime | None = None,
) -> None:
    """Write <cache_dir>/db/trivy.db (BoltDB, trivy-db schema 2) and <cache_dir>/db/metadata.json.

    Datetimes must be timezone-aware. `next_update` defaults to `updated_at` + 24 h and
    `downloaded_at` to `updated_at`. Existing files are replaced."""
    next_update = updated_at + timedelta(hours=24) if next_update is None else next_update
    downloaded_at = updated_at if downloaded_at is None else downloaded_at
    metadata = {
        "Version": 2,
        "NextUpdate": _rfc3339(next_update),
        "UpdatedAt": _rfc3339(updated_at),
        "DownloadedAt": _rfc3339(downloaded_at),
    }
    content = bolt_file(_tree(vulnerabilities))
    db_dir = Path(cache_dir) / "db"
    db_dir.mkdir(parents=True, exist_ok=True)
    (db_dir / "trivy.db").write_bytes(content)
    (db_dir / "metadata.json").write_text(json.dumps(metadata) + "\n")


def _rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"datetime must be timezone-aware: {moment!r}")
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _tree(vulnerabilities: Sequence[Vulnerability]) -> dict[bytes, object]:
    """The bucket tree trivy-db schema 2 expects for these advisories."""
    data_source: dict[bytes, object] = {}
    platforms: dict[bytes, dict[bytes, object]] = {}
    details: dict[str, dict[str, object]] = {}
    for vuln in vulnerabilities:
        severity = vuln.severity.upper()
        if severity not in SEVERITIES:
            raise ValueError(f"{vuln.id}: unknown severity {vuln.severity!r}")
        source_id = vuln.platform.split(" ", 1)[0]
        name, url = _DATA_SOURCES.get(source_id, (source_id, ""))
        data_source[vuln.platform.encode()] = _json({"ID": source_id, "Name": name, "URL": url})
        packages = platforms.setdefault(vuln.platform.encode(), {})
        advisories = packages.setdefault(vuln.package.encode(), {})
        assert isinstance(advisories, dict)
        key = vuln.id.encode()
        if key in advisories:
            raise ValueError(f"duplicate advisory {vuln.id} for {vuln.package} ({vuln.platform})")
        advisories[key] = _json({"FixedVersion": vuln.fixed_version})
        detail = details.setdefault(
            vuln.id,
            {
                "Title": vuln.title,
                "Description": vuln.description,
                "Severity": severity,
                "VendorSeverity": {},
                "References": [],
            },
        )
        vendor = detail["VendorSeverity"]
        assert isinstance(vendor, dict)
        vendor[source_id] = SEVERITIES.index(severity)
    tree: dict[bytes, object] = {b"data-source": data_source, b"vulnerability": {}}
    tree.update(platforms)
    tree[b"vulnerability"] = {k.encode(): _json(v) for k, v in details.items()}
    return tree


# --- BoltDB -------------------------------------------------------------------------------------

PAGE_SIZE = 4096
_MAGIC = 0xED0CDAED
_VERSION = 2
_BRANCH, _LEAF, _META, _FREELIST = 0x01, 0x02, 0x04, 0x10
_BUCKET_LEAF_FLAG = 0x01
_PAGE_HEADER = struct.Struct("<QHHI")  # id, flags, count, overflow
_LEAF_ELEMENT = struct.Struct("<IIII")  # flags, pos, ksize, vsize
_BRANCH_ELEMENT = struct.Struct("<IIQ")  # pos, ksize, pgid
_BUCKET = struct.Struct("<QQ")  # root pgid, sequence
_META_FIELDS = struct.Struct("<IIII QQ QQQ")  # magic..txid, checksummed
_MAX_COUNT = 0xFFFF


def fnv1a_64(data: bytes) -> int:
    value = 0xCBF29CE484222325
    for byte in data:
        value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return value


class _Pages:
    """Pages allocated in order, from page 3 on (0-1 meta, 2 freelist)."""

    def __init__(self) -> None:
        self.blobs: list[bytes] = []
        self.next_id = 3

    def leaf(self, elements: Sequence[tuple[int, bytes, bytes]]) -> int:
        """A leaf page of (flags, key, value) elements; its pgid."""
        headers, data = bytearray(), bytearray()
        start = _LEAF_ELEMENT.size * len(elements)  # data offset from the first element header
        for index, (flags, key, value) in enumerate(elements):
            pos = start + len(data) - _LEAF_ELEMENT.size * index
            headers += _LEAF_ELEMENT.pack(flags, pos, len(key), len(value))
            data += key + value
        return self._add(_LEAF, len(elements), bytes(headers + data))

    def branch(self, children: Sequence[tuple[bytes, int]]) -> int:
        """A branch page of (first key, child pgid) elements; its pgid."""
        headers, data = bytearray(), bytearray()
        start = _BRANCH_ELEMENT.size * len(children)
        for index, (key, child) in enumerate(children):
            pos = start + len(data) - _BRANCH_ELEMENT.size * index
            headers += _BRANCH_ELEMENT.pack(pos, len(key), child)
            data += key
        return self._add(_BRANCH, len(children), bytes(headers + data))

    def _add(self, flags: int, count: int, body: bytes) -> int:
        pgid = self.next_id
        size = _PAGE_HEADER.size + len(body)
        pages = -(-size // PAGE_SIZE)  # > 1: the page overflows into the next ones
        header = _PAGE_HEADER.pack(pgid, flags, count, pages - 1)
        self.blobs.append((header + body).ljust(pages * PAGE_SIZE, b"\0"))
        self.next_id += pages
        return pgid


def _chunks(sizes: Sequence[int]) -> list[range]:
    """Split elements (by their size, header included) into pages: as many as fit in one page,
    at least one per page (an oversized element gets an overflowing page of its own)."""
    chunks: list[range] = []
    first, used = 0, _PAGE_HEADER.size
    for index, size in enumerate(sizes):
        if index > first and (used + size > PAGE_SIZE or index - first == _MAX_COUNT):
            chunks.append(range(first, index))
            first, used = index, _PAGE_HEADER.size
        used += size
    chunks.append(range(first, len(sizes)))
    return chunks


def _write_bucket(pages: _Pages, bucket: Mapping[bytes, object]) -> int:
    """Write a bucket (values: bytes, or a Mapping for a nested bucket); its root pgid."""
    elements: list[tuple[int, bytes, bytes]] = []
    for key in sorted(bucket):
        if not isinstance(key, bytes) or not key:
            raise ValueError(f"BoltDB keys must be non-empty bytes: {key!r}")
        value = bucket[key]
        if isinstance(value, Mapping):
            elements.append((_BUCKET_LEAF_FLAG, key, _BUCKET.pack(_write_bucket(pages, value), 0)))
        elif isinstance(value, bytes):
            elements.append((0, key, value))
        else:
            raise TypeError(f"value of {key!r} must be bytes or a mapping")
    sizes = [_LEAF_ELEMENT.size + len(key) + len(value) for _, key, value in elements]
    level = [
        (elements[chunk[0]][1] if chunk else b"", pages.leaf(elements[chunk.start : chunk.stop]))
        for chunk in _chunks(sizes)
    ]
    while len(level) > 1:  # branch pages until a single root page remains
        sizes = [_BRANCH_ELEMENT.size + len(key) for key, _ in level]
        level = [
            (level[chunk[0]][0], pages.branch(level[chunk.start : chunk.stop]))
            for chunk in _chunks(sizes)
        ]
    return level[0][1]


def bolt_file(root: Mapping[bytes, object], *, txid: int = 1) -> bytes:
    """The bytes of a BoltDB file whose root bucket holds `root` (nested mappings = buckets)."""
    pages = _Pages()
    root_pgid = _write_bucket(pages, root)
    high_water = pages.next_id

    def meta(pgid: int, meta_txid: int) -> bytes:
        fields = _META_FIELDS.pack(
            _MAGIC, _VERSION, PAGE_SIZE, 0, root_pgid, 0, 2, high_water, meta_txid
        )
        body = fields + struct.pack("<Q", fnv1a_64(fields))
        return (_PAGE_HEADER.pack(pgid, _META, 0, 0) + body).ljust(PAGE_SIZE, b"\0")

    # Both meta pages valid; bbolt uses the one with the higher txid.
    freelist = _PAGE_HEADER.pack(2, _FREELIST, 0, 0).ljust(PAGE_SIZE, b"\0")
    return b"".join([meta(0, txid - 1 if txid else 0), meta(1, txid), freelist, *pages.blobs])
