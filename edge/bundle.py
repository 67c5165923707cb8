"""Bundles: one folder (optionally a zip) per device target, with a manifest that says what ships.

A bundle is staged in a hidden folder, verified, and only then moved into place with its
``manifest.json`` (format, files with sizes and sha256, input schema, parity, compression), so a
folder without a manifest never looks finished.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def files(folder: Path) -> list[dict[str, Any]]:
    """Every file under ``folder`` (sorted) with its size and sha256."""
    out = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        out.append({"path": path.relative_to(folder).as_posix(), "bytes": path.stat().st_size, "sha256": sha256(path)})
    return out


def finish(staging: Path, final: Path, manifest: dict[str, Any], make_zip: bool = False) -> Path:
    """Write the manifest into ``staging`` and move it to ``final`` (replacing an older bundle)."""
    listed = files(staging)
    manifest = {
        **manifest,
        "files": listed,
        "size_bytes": int(sum(f["bytes"] for f in listed)),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    if make_zip:
        archive = shutil.make_archive(str(final), "zip", root_dir=final.parent, base_dir=final.name)
        manifest["zip"] = archive
    return final


def verify_files(folder: Path) -> list[str]:
    """Files whose sha256 or size no longer matches the manifest (empty when the bundle is intact)."""
    manifest = json.loads((folder / MANIFEST).read_text())
    bad = []
    for entry in manifest["files"]:
        path = folder / entry["path"]
        if not path.is_file() or path.stat().st_size != entry["bytes"] or sha256(path) != entry["sha256"]:
            bad.append(entry["path"])
    return bad
