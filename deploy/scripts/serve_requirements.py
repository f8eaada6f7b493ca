"""Print the serving image's direct requirements, read from pyproject.toml (the only place pins live).

Core dependencies plus the ``serve`` extra; with ``--flavour gpu`` onnxruntime is swapped for the
onnxruntime-gpu pin in ``[tool.modelserve.image]`` (the two must never share an environment).
Stdlib only, so it runs inside a bare build stage.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

FORBIDDEN = ("torch", "transformers", "onnxscript", "onnx")  # training-only packages


def requirement_name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower().replace("_", "-")


def serve_requirements(pyproject: Path, flavour: str) -> list[str]:
    """Pinned direct requirements of the serving image for ``flavour`` ('cpu' or 'gpu')."""
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    reqs = list(data["project"]["dependencies"]) + list(data["project"]["optional-dependencies"]["serve"])
    if flavour == "gpu":
        gpu_ort = data["tool"]["modelserve"]["image"]["gpu-onnxruntime"]
        reqs = [gpu_ort if requirement_name(r) == "onnxruntime" else r for r in reqs]
    bad = [r for r in reqs if requirement_name(r) in FORBIDDEN]
    if bad:
        raise SystemExit(f"training-only packages in the serve set: {bad}")
    unpinned = [r for r in reqs if "==" not in r]
    if unpinned:
        raise SystemExit(f"serve requirements must be pinned exactly: {unpinned}")
    return reqs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    parser.add_argument("--flavour", choices=["cpu", "gpu"], default="cpu")
    args = parser.parse_args(argv)
    sys.stdout.write("\n".join(serve_requirements(args.pyproject, args.flavour)) + "\n")


if __name__ == "__main__":
    main()
