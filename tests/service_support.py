"""Helpers for the service tests: a real ``bentoml serve`` subprocess on a free port."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from modelkit.readiness import wait_until_ready

ROOT = Path(__file__).resolve().parents[1]
BENTOML = Path(sys.executable).with_name("bentoml")


def benchmark_module(name: str):
    """A script of benchmarks/ imported as a module (registered in sys.modules: its dataclasses look it up)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A running ``bentoml serve service.app:ModelService``; ``log()`` returns its output so far.

    ``url`` is the HTTP base URL, ``grpc_address`` the ``host:port`` of its gRPC door.
    """

    def __init__(self, proc: subprocess.Popen, url: str, log_path: Path, grpc_address: str):
        self.proc = proc
        self.url = url
        self.log_path = log_path
        self.grpc_address = grpc_address
        self.http_address = url.removeprefix("http://")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)


@contextmanager
def serve(registry: Path, workdir: Path, *, env: dict[str, str] | None = None, ready_timeout: float = 120.0,
          wait_path: str = "/readyz"):
    """Start the service against ``registry``; wait for ``wait_path`` to answer 200; stop it (process group) after."""
    port, grpc_port = free_port(), free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "serve.log"
    full_env = {
        **os.environ,
        "MODEL_REGISTRY": str(registry),
        "BENTOML_HOME": str(workdir / "bentoml_home"),
        "BENTOML_DO_NOT_TRACK": "True",
        "PYTHONUNBUFFERED": "1",
        # a port of its own: workers share the gRPC port with SO_REUSEPORT, so two test servers on
        # one port would silently split each other's calls
        "SERVICE_GRPC_HOST": "127.0.0.1",
        "SERVICE_GRPC_PORT": str(grpc_port),
        # stop at once when the test is done (the drain's grace period is tested on its own)
        "SERVICE_SHUTDOWN_GRACE_S": "0",
        **(env or {}),
    }
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [str(BENTOML), "serve", "service.app:ModelService", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT, env=full_env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", log_path, f"127.0.0.1:{full_env['SERVICE_GRPC_PORT']}")
    try:
        wait_until_ready(f"{server.url}{wait_path}", proc, timeout=ready_timeout, name="bentoml serve", log=server.log)
        yield server
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def copy_model(src_root: Path, name: str, dst_root: Path, new_name: str | None = None) -> Path:
    """Copy ``name``'s LATEST version into ``dst_root`` (renamed in folder and manifest); returns the version dir."""
    version = (src_root / name / "LATEST").read_text().strip()
    new_name = new_name or name
    dst = dst_root / new_name / version
    shutil.copytree(src_root / name / version, dst)
    (dst_root / new_name / "LATEST").write_text(version + "\n")
    if new_name != name:
        manifest_path = dst / "manifest.json"
        data = json.loads(manifest_path.read_text())
        data["name"] = new_name
        manifest_path.write_text(json.dumps(data, indent=2))
    return dst


def names_by_task(registry: Path) -> dict[str, str]:
    """First model name (sorted) per task in a registry."""
    found: dict[str, str] = {}
    for latest in sorted(registry.glob("*/LATEST")):
        manifest = json.loads((latest.parent / latest.read_text().strip() / "manifest.json").read_text())
        found.setdefault(manifest["task"], latest.parent.name)
    return found


def model_graph(version_dir: Path) -> Path:
    """The fp32 ``model`` (or ``encoder``) graph file of a version."""
    data = json.loads((version_dir / "manifest.json").read_text())
    for role in ("model", "encoder"):
        for g in data["graphs"]:
            if g["role"] == role and g["variant"] == "fp32":
                return version_dir / g["path"]
    raise LookupError(f"no fp32 graph in {version_dir}")


@pytest.fixture(scope="session")
def smoke_models(request) -> Path:
    """The session's smoke registry; ``SERVICE_TEST_REGISTRY`` reuses one built earlier (skips ~3 min of training)."""
    prebuilt = os.environ.get("SERVICE_TEST_REGISTRY")
    if prebuilt:
        return Path(prebuilt)
    return request.getfixturevalue("smoke_registry")
