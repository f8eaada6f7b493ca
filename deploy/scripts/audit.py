"""Vulnerability audit of a lock file: pip-audit online, or a local copy of the PyPA advisory database.

    python deploy/scripts/audit.py deploy/requirements/serve-cpu.lock            # pip-audit (network)
    python deploy/scripts/audit.py deploy/requirements/serve-cpu.lock --advisories DIR

Online, pip-audit asks its advisory service (PyPI's JSON API, or OSV with ``--osv``) about every
pinned version; the script says so plainly when that service cannot be reached instead of
reporting a clean result. ``--advisories DIR`` matches the pins against a checkout of
https://github.com/pypa/advisory-database (``vulns/<package>/*.yaml``, OSV format: the
``versions`` lists and ``ECOSYSTEM`` ranges with introduced / fixed / last_affected), the data
PyPI's own vulnerability answers come from, for machines without that access.

Exit codes: 0 no known vulnerability, 1 vulnerabilities found, 2 the advisories could not be
read or reached (nothing was checked).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml
from packaging.version import InvalidVersion, Version


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[normalize(name.split("[", 1)[0])] = version.split(";", 1)[0].strip()
    return pins


def _in_range(version: Version, events: list[dict]) -> bool:
    """OSV ECOSYSTEM range events (sorted): affected from an ``introduced`` until a ``fixed`` (exclusive) or
    ``last_affected`` (inclusive)."""
    affected = False
    for event in events:
        try:
            if "introduced" in event:
                if event["introduced"] == "0" or version >= Version(event["introduced"]):
                    affected = True
            elif "fixed" in event and version >= Version(event["fixed"]):
                affected = False
            elif "last_affected" in event and version > Version(event["last_affected"]):
                affected = False
        except InvalidVersion:
            continue
    return affected


def affects(advisory: dict, name: str, version: str) -> bool:
    try:
        pinned = Version(version)
    except InvalidVersion:
        return False
    for entry in advisory.get("affected", []):
        package = entry.get("package", {})
        if package.get("ecosystem") != "PyPI" or normalize(package.get("name", "")) != name:
            continue
        if version in entry.get("versions", []):
            return True
        for r in entry.get("ranges", []):
            if r.get("type") == "ECOSYSTEM" and _in_range(pinned, r.get("events", [])):
                return True
    return False


def audit_offline(pins: dict[str, str], advisories: Path) -> list[dict]:
    """Advisories affecting the pins, from a pypa/advisory-database checkout."""
    vulns_dir = advisories / "vulns"
    if not vulns_dir.is_dir():
        raise FileNotFoundError(f"{advisories} holds no vulns/ folder (a checkout of pypa/advisory-database)")
    folders = {normalize(p.name): p for p in vulns_dir.iterdir() if p.is_dir()}
    found = []
    for name, version in sorted(pins.items()):
        folder = folders.get(name)
        if folder is None:
            continue
        for path in sorted(folder.glob("*.yaml")):
            advisory = yaml.safe_load(path.read_text())
            if advisory.get("withdrawn"):
                continue
            if affects(advisory, name, version):
                fixed = sorted({e["fixed"] for a in advisory.get("affected", []) for r in a.get("ranges", [])
                                for e in r.get("events", []) if "fixed" in e and r.get("type") == "ECOSYSTEM"})
                found.append({"package": name, "version": version, "id": advisory.get("id"),
                              "aliases": advisory.get("aliases", []), "fixed": fixed})
    return found


def audit_online(lock: Path, osv: bool) -> tuple[int, str]:
    """pip-audit's own run: (exit code as above, its report)."""
    cmd = [sys.executable, "-m", "pip_audit", "-r", str(lock), "--no-deps", "--disable-pip", "--progress-spinner",
           "off", "-f", "json"] + (["--vulnerability-service", "osv"] if osv else [])
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    try:
        report = json.loads(run.stdout)
    except ValueError:
        return 2, f"pip-audit could not reach its advisory service:\n{run.stderr.strip()[-1500:]}"
    deps = report.get("dependencies", [])
    skipped = [d for d in deps if d.get("skip_reason")]
    vulnerable = [d for d in deps if d.get("vulns")]
    if deps and len(skipped) == len(deps):
        return 2, (f"pip-audit checked nothing: all {len(deps)} pins skipped, e.g. {skipped[0]['skip_reason']!r} "
                   "(its advisory service is not reachable from here)")
    lines = [f"{d['name']} {d['version']}: {', '.join(v['id'] for v in d['vulns'])}" for d in vulnerable]
    summary = f"pip-audit: {len(deps) - len(skipped)} pins checked, {len(skipped)} skipped, {len(vulnerable)} vulnerable"
    return (1 if vulnerable else 0), "\n".join([summary, *lines])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lock", type=Path)
    parser.add_argument("--advisories", type=Path, help="a checkout of github.com/pypa/advisory-database")
    parser.add_argument("--osv", action="store_true", help="pip-audit asks OSV instead of PyPI")
    args = parser.parse_args(argv)
    pins = read_lock(args.lock)
    if args.advisories is None:
        code, report = audit_online(args.lock, args.osv)
        print(report)
        return code
    try:
        found = audit_offline(pins, args.advisories)
    except (OSError, yaml.YAMLError) as exc:
        print(f"could not read the advisories: {exc}", file=sys.stderr)
        return 2
    for f in found:
        print(f"{f['package']} {f['version']}: {f['id']} {' '.join(f['aliases'])} (fixed in {', '.join(f['fixed']) or '?'})")
    print(f"{len(pins)} pins checked against {args.advisories}: {len(found)} known vulnerabilities")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
