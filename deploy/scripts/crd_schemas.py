"""Validate custom resources offline against the CRD schemas vendored in deploy/k8s/schemas.

Each vendored file is an upstream CustomResourceDefinition, byte for byte (gzip-compressed), listed
in ``deploy/k8s/schemas/SOURCES.json`` with its URL, release, commit, licence and the sha256 of the
uncompressed file, which is checked before use. Objects are validated against the
``openAPIV3Schema`` of their ``apiVersion`` made strict the way the API server's strict field
validation is (``kubectl apply --validate=strict``): an object schema with ``properties`` and no
``x-kubernetes-preserve-unknown-fields`` rejects fields it does not list.

    python deploy/scripts/crd_schemas.py rendered.yaml     # exit 1 if a custom resource is invalid
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import sys
from pathlib import Path

import yaml
from jsonschema import Draft4Validator

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "k8s" / "schemas"
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the KServe CRD is 2 MB of YAML


def strict(schema: dict) -> dict:
    """A copy of ``schema`` in which objects with listed properties refuse unlisted ones."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def load_schemas(schema_dir: Path = SCHEMA_DIR) -> dict[tuple[str, str], dict]:
    """{(apiVersion, kind): strict schema} of every served version of every vendored CRD."""
    sources = json.loads((schema_dir / "SOURCES.json").read_text(encoding="utf-8"))
    schemas = {}
    for entry in sources:
        raw = gzip.decompress((schema_dir / entry["file"]).read_bytes())
        digest = hashlib.sha256(raw).hexdigest()
        if digest != entry["sha256"]:
            raise SystemExit(f"{entry['file']}: sha256 {digest} differs from SOURCES.json ({entry['sha256']})")
        crd = yaml.load(raw, Loader=_Loader)
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                schemas[(f"{group}/{version['name']}", kind)] = strict(version["schema"]["openAPIV3Schema"])
    return schemas


def errors(doc: dict, schemas: dict[tuple[str, str], dict]) -> list[str] | None:
    """Schema violations of one object (path: message); None when no schema is vendored for it."""
    schema = schemas.get((doc.get("apiVersion"), doc.get("kind")))
    if schema is None:
        return None
    found = sorted(Draft4Validator(schema).iter_errors(doc), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in found]


def main(argv: list[str]) -> int:
    schemas = load_schemas()
    failed = False
    for path in argv or ["-"]:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        for doc in (d for d in yaml.safe_load_all(text) if d):
            name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            found = errors(doc, schemas)
            if found is None:
                continue
            for line in found:
                print(f"FAIL {path} {name}: {line}")
            failed = failed or bool(found)
            if not found:
                print(f"ok {path} {name} against the vendored {doc['apiVersion']} schema")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
