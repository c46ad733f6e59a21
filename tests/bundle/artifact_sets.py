# Copyright (c) monai_medl developers. Licensed under the Apache License, Version 2.0.
"""Small artifact sets (a run's ``models`` folder with a manifest) for the promotion and lock tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

from monai_medl.bundle import write_manifest

FILES = ("model.pt", "site_vocabulary.json")


def make_set(folder: Path, tag: str, size: int = 2048) -> Path:
    """A complete set in ``folder`` whose file contents depend on ``tag``; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.pt").write_bytes((tag.encode() * size)[:size])
    (folder / "site_vocabulary.json").write_text('{"sites": ["a", "b"]}')
    write_manifest(folder, FILES, run=tag, sites=["a", "b"])
    return folder


def tree_bytes(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``folder`` (byte-identity check)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
