"""The model registry on disk: ``exported/<name>/<version>/`` plus ``exported/<name>/LATEST``.

Versions are written to a hidden staging folder and renamed into place only when
complete, so a crash never leaves a half-written version behind. Torch-free.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .manifest import FileEntry, Manifest

MANIFEST_FILE = "manifest.json"
LATEST_FILE = "LATEST"
STAGING_PREFIX = ".staging-"


class RegistryError(Exception):
    """A registry folder or manifest is missing, invalid or does not match its files."""


def default_root() -> Path:
    """Registry root: $MODEL_REGISTRY or ./exported."""
    return Path(os.environ.get("MODEL_REGISTRY", "exported"))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entries(version_dir: Path) -> list[FileEntry]:
    """Checksums of every file in a version folder except the manifest itself."""
    entries = []
    for p in sorted(version_dir.rglob("*")):
        if p.is_file() and p.name != MANIFEST_FILE:
            entries.append(
                FileEntry(path=p.relative_to(version_dir).as_posix(), sha256=sha256_file(p), size=p.stat().st_size)
            )
    return entries


def verify_files(manifest: Manifest, version_dir: Path) -> None:
    """Raise RegistryError naming the first missing or altered file."""
    for entry in manifest.files:
        p = version_dir / entry.path
        if not p.is_file():
            raise RegistryError(f"{manifest.name}/{manifest.version}: file missing: {entry.path}")
        size = p.stat().st_size
        if size != entry.size:
            raise RegistryError(
                f"{manifest.name}/{manifest.version}: {entry.path} is {size} bytes, manifest says {entry.size}"
            )
        if sha256_file(p) != entry.sha256:
            raise RegistryError(f"{manifest.name}/{manifest.version}: checksum mismatch for {entry.path}")


def new_version_id(now: datetime | None = None) -> str:
    """Sortable, unique-per-second version id, e.g. ``20261123-130501``."""
    return (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")


def staging_dir(root: Path, name: str) -> Path:
    """A fresh hidden folder under ``root/name`` to build a version in."""
    parent = root / name
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=parent))


def publish(root: Path, staging: Path, manifest: Manifest, *, servable: bool = True) -> Path:
    """Checksum the staged files, write the manifest, rename into place, update LATEST.

    ``servable=False`` (a model that failed its gate) keeps the version for inspection
    but leaves LATEST untouched, so serving never picks it up.
    """
    manifest.files = file_entries(staging)
    manifest.dump(staging / MANIFEST_FILE)
    Manifest.load(staging / MANIFEST_FILE)  # round-trip check before publishing
    final = root / manifest.name / manifest.version
    if final.exists():
        raise RegistryError(f"version {manifest.name}/{manifest.version} exists; versions are never overwritten")
    os.replace(staging, final)
    if servable:
        set_latest(root, manifest.name, manifest.version)
    return final


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)


def set_latest(root: Path, name: str, version: str) -> None:
    if not (root / name / version / MANIFEST_FILE).is_file():
        raise RegistryError(f"cannot point LATEST at {name}/{version}: no manifest there")
    tmp = root / name / f".{LATEST_FILE}.tmp"
    tmp.write_text(version + "\n", encoding="utf-8")
    os.replace(tmp, root / name / LATEST_FILE)


def latest_version(root: Path, name: str) -> str | None:
    p = root / name / LATEST_FILE
    return p.read_text(encoding="utf-8").strip() if p.is_file() else None


def model_names(root: Path) -> list[str]:
    """Names with a LATEST pointer (servable models)."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / LATEST_FILE).is_file())


def load_version(root: Path, name: str, version: str | None = None, *, verify: bool = True) -> tuple[Manifest, Path]:
    """Manifest and folder of ``name`` at ``version`` (LATEST when None), checksums verified."""
    version = version or latest_version(root, name)
    if not version:
        raise RegistryError(f"{name}: no LATEST file under {root / name}")
    vdir = root / name / version
    mpath = vdir / MANIFEST_FILE
    if not mpath.is_file():
        raise RegistryError(f"{name}/{version}: {mpath} not found")
    try:
        manifest = Manifest.load(mpath)
    except Exception as exc:  # pydantic ValidationError or JSON error
        raise RegistryError(f"{name}/{version}: invalid manifest: {exc}") from exc
    if manifest.name != name or manifest.version != version:
        raise RegistryError(f"{mpath} names {manifest.name}/{manifest.version}, expected {name}/{version}")
    if verify:
        verify_files(manifest, vdir)
    return manifest, vdir


@dataclass
class RegistryRow:
    name: str
    version: str
    task: str
    metric: str
    value: float | None
    baseline: float | None
    gate: str
    size_bytes: int
    created: str
    latest: bool


def list_versions(root: Path) -> list[RegistryRow]:
    """Every version folder with a readable manifest (gate failures included)."""
    rows: list[RegistryRow] = []
    if not root.is_dir():
        return rows
    for name_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        latest = latest_version(root, name_dir.name)
        for vdir in sorted(p for p in name_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                m = Manifest.load(vdir / MANIFEST_FILE)
            except Exception:
                continue
            baseline_values = [b[m.headline_metric] for b in m.baseline_metrics.values() if m.headline_metric in b]
            rows.append(
                RegistryRow(
                    name=m.name,
                    version=m.version,
                    task=m.task,
                    metric=m.headline_metric,
                    value=m.metrics.get("fp32", {}).get(m.headline_metric),
                    baseline=max(baseline_values) if baseline_values else None,
                    gate="pass" if m.gate.passed else "FAIL",
                    size_bytes=sum(f.size for f in m.files),
                    created=m.created_at.strftime("%Y-%m-%d %H:%M"),
                    latest=(m.version == latest),
                )
            )
    return rows
