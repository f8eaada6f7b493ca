"""deploy/scripts/audit.py's offline matcher: pins against OSV advisories in the PyPA database layout.

pip-audit's advisory services (PyPI's JSON API, OSV) cannot be reached from these machines, so
the serve lock is audited against a checkout of github.com/pypa/advisory-database; this checks
the matching on a small database written here (versions lists, ECOSYSTEM ranges with fixed and
last_affected, withdrawn advisories, name normalization)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "deploy" / "scripts" / "audit.py"


def _advisory(root: Path, package: str, ident: str, **affected) -> None:
    folder = root / "vulns" / package
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"id": ident, "aliases": [f"CVE-{ident}"],
           "affected": [{"package": {"name": package, "ecosystem": "PyPI"}, **affected}]}
    (folder / f"{ident}.yaml").write_text(yaml.safe_dump(doc))


def _run(lock: Path, db: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, lock, "--advisories", db], capture_output=True, text=True,
                          timeout=60)


def test_pins_are_matched_by_version_lists_and_ranges(tmp_path):
    db = tmp_path / "db"
    _advisory(db, "starlette", "A-1", ranges=[{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "0.25.0"}]}])
    _advisory(db, "starlette", "A-2", ranges=[{"type": "ECOSYSTEM", "events": [{"introduced": "1.0"}, {"fixed": "1.2"}]}])
    _advisory(db, "python_multipart", "A-3", versions=["0.0.5"])
    _advisory(db, "jinja2", "A-4", ranges=[{"type": "ECOSYSTEM",
                                            "events": [{"introduced": "2.0"}, {"last_affected": "2.10"}]}])
    _advisory(db, "jinja2", "A-5", ranges=[{"type": "GIT", "events": [{"introduced": "0"}, {"fixed": "abc123"}]}])
    lock = tmp_path / "serve.lock"
    lock.write_text("# generated\nstarlette==0.24.0\npython-multipart==0.0.5\njinja2==2.10\nuvicorn==0.54.0\n")
    run = _run(lock, db)
    assert run.returncode == 1, run.stdout + run.stderr
    found = {line.split(": ")[1].split()[0] for line in run.stdout.splitlines() if ": A-" in line}
    assert found == {"A-1", "A-3", "A-4"}, run.stdout  # other range; A-5: git range only
    lock.write_text("starlette==1.10.0\npython-multipart==0.0.34\njinja2==3.1.6\n")
    run = _run(lock, db)
    assert run.returncode == 0 and "0 known vulnerabilities" in run.stdout, run.stdout


def test_a_missing_database_checks_nothing_and_says_so(tmp_path):
    lock = tmp_path / "serve.lock"
    lock.write_text("starlette==1.10.0\n")
    run = _run(lock, tmp_path / "nowhere")
    assert run.returncode == 2 and "could not read the advisories" in run.stderr


def test_the_serve_locks_parse(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    from audit import read_lock

    for flavour in ("cpu", "gpu"):
        pins = read_lock(ROOT / "deploy" / "requirements" / f"serve-{flavour}.lock")
        assert len(pins) > 50 and pins["bentoml"] == "1.4.39"
