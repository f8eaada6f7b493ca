"""The CPU serving image, built and run here: Debian docker.io engine, local base, host wheelhouse.

Builds ./Dockerfile with a debootstrapped Debian base (no registry is reachable) and the locked
serve wheels downloaded on the host (the build needs no network), runs it with --network host on
127.0.0.1 against the smoke registry (mounted read-only, the way a newer model version is served),
waits for Docker's HEALTHCHECK to say healthy, sends one request per task and compares each answer
with the same model run in-process through modelkit's runtimes. Also checks the serving processes
run as non-root and that the image holds no torch.

Cached between runs under $MODELSERVE_DEPLOY_CACHE (default ~/.cache/modelserve-deploy): the base
root-filesystem tarball and the downloaded wheels. The engine itself lives in a temp dir and is
stopped at the end. Skips only where a Docker engine cannot run at all (not root, no apt-get).
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from modelkit import registry
from modelkit.onnx_session import SessionSettings
from modelkit.runtimes import create_runtime

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "deploy" / "scripts"
CACHE = Path(os.environ.get("MODELSERVE_DEPLOY_CACHE", Path.home() / ".cache" / "modelserve-deploy"))
BASE_TAG = "modelserve-base:bookworm"
IMAGE_TAG = "modelserve:cpu-test"
SERVICE_UID = 10001
ENDPOINT = {
    "text-classification": "classify",
    "multi-label-classification": "classify",
    "image-classification": "classify_image",
    "translation": "translate",
}


def sh(cmd: list, *, env: dict | None = None, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} -> {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def ensure_packages() -> None:
    """Install the Debian docker.io engine and debootstrap when missing (CI starts bare)."""
    missing = [pkg for pkg, exe in (("docker.io", "dockerd"), ("debootstrap", "debootstrap")) if not shutil.which(exe)]
    if not missing:
        return
    if os.geteuid() != 0:
        pytest.skip(f"Docker engine cannot run here: {missing} not installed and not root to install them")
    if not shutil.which("apt-get"):
        pytest.skip(f"Docker engine cannot run here: {missing} not installed and no apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    sh(["apt-get", "update", "-qq"], env=env, timeout=600)
    sh(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env, timeout=900)


@pytest.fixture(scope="module")
def docker_env():
    """A private dockerd (state in a temp dir) for this module; yields the env for docker commands."""
    if os.geteuid() != 0:
        pytest.skip("Docker engine cannot run here: dockerd needs root and rootless Docker is not set up")
    ensure_packages()
    state = Path(tempfile.mkdtemp(prefix="msdock-", dir="/tmp"))  # short: unix socket paths max 108 chars
    # Prefer the engine package's own client (matching API version) over any other docker on PATH.
    path = f"/usr/bin:{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path}
    try:
        host = sh(["bash", SCRIPTS / "dockerd.sh", "start", state], env=env, timeout=90).stdout.strip()
        env["DOCKER_HOST"] = host
        yield env
    finally:
        sh(["bash", SCRIPTS / "dockerd.sh", "stop", state], env=env, timeout=60, check=False)
        shutil.rmtree(state, ignore_errors=True)


def build_image(env: dict, flavour: str, tag: str) -> None:
    """docker build of ./Dockerfile on the local Debian base, offline from the host wheelhouse."""
    sh(["bash", SCRIPTS / "make_base.sh", CACHE, BASE_TAG], env=env, timeout=900)
    sh(["bash", SCRIPTS / "wheelhouse.sh", flavour, CACHE], env={**env, "PYTHON": sys.executable}, timeout=900)
    try:
        t0 = time.monotonic()
        sh(["docker", "build", "--network", "host", "--build-arg", f"BASE_IMAGE={BASE_TAG}",
            "--build-arg", f"ORT_FLAVOUR={flavour}", "-t", tag, ROOT], env=env, timeout=1500)
        size = int(sh(["docker", "image", "inspect", "-f", "{{.Size}}", tag], env=env).stdout)
        print(f"\nimage {tag}: {size / 1e6:.0f} MB, built in {time.monotonic() - t0:.0f} s")
    finally:
        for whl in (ROOT / "deploy" / "wheelhouse").glob("*.whl"):
            whl.unlink()  # the next build (other flavour, or a user's) must not find these wheels


@pytest.fixture(scope="module")
def cpu_image(docker_env):
    """The CPU image built from the local base and the host wheelhouse; yields its tag."""
    build_image(docker_env, "cpu", IMAGE_TAG)
    yield IMAGE_TAG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def readable_registry(request):
    """A copy of the smoke registry the container's non-root user can read (pytest dirs are 0700).

    MODELSERVE_DEPLOY_REGISTRY=<registry root> tests the image against that registry instead
    (e.g. ``exported/`` before shipping it).
    """
    chosen = os.environ.get("MODELSERVE_DEPLOY_REGISTRY")
    src = Path(chosen) if chosen else Path(request.getfixturevalue("smoke_registry"))
    parent = Path(tempfile.mkdtemp(prefix="msreg-"))
    os.chmod(parent, 0o755)
    dest = parent / "registry"
    shutil.copytree(src, dest)
    for p in [dest, *dest.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    yield dest
    shutil.rmtree(parent, ignore_errors=True)


def health(env: dict, name: str) -> tuple[str, dict]:
    info = json.loads(sh(["docker", "inspect", name], env=env).stdout)[0]
    return info["State"]["Status"], info["State"].get("Health") or {}


@pytest.fixture(scope="module")
def container(docker_env, cpu_image, readable_registry):
    """The image serving the smoke registry on 127.0.0.1:<free port>, read-only root filesystem."""
    name = f"modelserve-test-{os.getpid()}"
    port = free_port()
    sh(["docker", "run", "-d", "--name", name, "--network", "host",
        # the same writable paths as the Kubernetes Deployment (readOnlyRootFilesystem + emptyDirs), no
        # capabilities, no privilege escalation, Docker's default seccomp profile (RuntimeDefault)
        "--read-only", "--tmpfs", "/tmp", "--tmpfs", f"/home/app/bentoml:uid={SERVICE_UID},gid={SERVICE_UID}",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "-e", "SERVICE_SHUTDOWN_GRACE_S=1",
        "-e", "BENTOML_HOST=127.0.0.1", "-e", f"BENTOML_PORT={port}",
        "-e", "MODEL_REGISTRY=/mnt/registry", "-e", "SERVICE_PROVIDER=cpu",
        # one onnxruntime thread here and in the in-process reference: same arithmetic, same answers
        "-e", "SERVICE_THREADS=1",
        "-v", f"{readable_registry}:/mnt/registry:ro", cpu_image], env=docker_env)
    try:
        deadline = time.monotonic() + 240
        status, state = health(docker_env, name)
        while state.get("Status") != "healthy":
            if status != "running" or time.monotonic() > deadline:
                logs = sh(["docker", "logs", "--tail", "60", name], env=docker_env, check=False)
                pytest.fail(f"container {status}, health {state.get('Status')}: {state.get('Log', [])[-2:]}\n"
                            f"{logs.stdout[-3000:]}\n{logs.stderr[-3000:]}")
            time.sleep(1)
            status, state = health(docker_env, name)
        yield name, f"http://127.0.0.1:{port}"
    finally:
        sh(["docker", "rm", "-f", name], env=docker_env, check=False)


def test_healthcheck_is_healthy_and_probes_answer(docker_env, container):
    name, url = container
    status, state = health(docker_env, name)
    assert (status, state["Status"]) == ("running", "healthy")
    assert state["Log"][-1]["ExitCode"] == 0
    assert requests.get(f"{url}/readyz", timeout=30).status_code == 200
    assert requests.get(f"{url}/livez", timeout=30).status_code == 200
    config = json.loads(sh(["docker", "inspect", name], env=docker_env).stdout)[0]["Config"]
    assert "/readyz" in " ".join(config["Healthcheck"]["Test"])


def test_serving_processes_run_as_non_root(docker_env, container):
    name, _ = container
    assert sh(["docker", "exec", name, "id", "-u"], env=docker_env).stdout.strip() == str(SERVICE_UID)
    top = sh(["docker", "top", name, "-eo", "uid,pid,args"], env=docker_env).stdout.splitlines()[1:]
    assert top and any("bentoml" in line or "python" in line for line in top)
    uids = {line.split()[0] for line in top}
    assert uids == {str(SERVICE_UID)}, top


def test_serving_processes_hold_no_capabilities_and_run_under_seccomp(docker_env, container):
    name, _ = container
    config = json.loads(sh(["docker", "inspect", name], env=docker_env).stdout)[0]["HostConfig"]
    assert config["ReadonlyRootfs"] is True and config["CapDrop"] == ["ALL"]
    status = sh(["docker", "exec", name, "cat", "/proc/1/status"], env=docker_env).stdout
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    assert int(fields["CapEff"].strip(), 16) == 0 and int(fields["CapPrm"].strip(), 16) == 0
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"  # a seccomp filter is in force
    probe = sh(["docker", "exec", name, "sh", "-c", "touch /app/x 2>&1 || echo refused"], env=docker_env).stdout
    assert "refused" in probe or "Read-only" in probe


def test_image_holds_no_torch_and_no_training_code(docker_env, cpu_image):
    probe = ("import importlib.util as u, os; "
             "print([m for m in ('torch', 'transformers', 'onnx', 'sklearn') if u.find_spec(m)]); "
             "print(sorted(os.listdir('/app')))")
    out = sh(["docker", "run", "--rm", "--network", "none", cpu_image, "python", "-c", probe], env=docker_env).stdout
    found, app_dirs = out.splitlines()
    assert found == "[]", f"training packages in the serving image: {found}"
    assert app_dirs == "['modelkit', 'monitoring', 'service']"
    ort = sh(["docker", "run", "--rm", "--network", "none", cpu_image, "python", "-c",
              "import onnxruntime; print(onnxruntime.__version__)"], env=docker_env).stdout.strip()
    assert ort == "1.32.0"


def sample_input(manifest) -> object:
    """One valid input for the model's task (seeded, so host and container see the same bytes)."""
    prep = manifest.preprocessing
    if prep.kind == "image":
        from PIL import Image

        rng = np.random.default_rng(0)
        shape = (prep.image_size, prep.image_size) + (() if prep.channels == 1 else (prep.channels,))
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(buf, format="PNG")
        return buf.getvalue()
    if prep.kind == "translation":
        return "Das Haus ist klein."
    return "the delivery was late again but the support team was lovely"


def expected(manifest, version_dir: Path, variant: str, item, options: dict) -> dict:
    settings = SessionSettings(provider="cpu", variant=variant, intra_op_threads=1)
    runtime = create_runtime(manifest, version_dir, settings)
    runtime.load()
    return runtime.predict([runtime.validate(item)], **options)[0]


def test_one_request_per_task_matches_in_process_runtime(container, readable_registry):
    _, url = container
    models = requests.get(f"{url}/models", timeout=10).json()["models"]
    assert {m["name"] for m in models} == set(registry.model_names(readable_registry))
    assert all(m["status"] == "ready" for m in models), [(m["name"], m["status"], m.get("reason")) for m in models]
    seen_tasks = set()
    for info in models:
        if info["task"] in seen_tasks:
            continue
        seen_tasks.add(info["task"])
        manifest, vdir = registry.load_version(readable_registry, info["name"])
        assert info["version"] == manifest.version and info["provider"] == "CPUExecutionProvider"
        item = sample_input(manifest)
        endpoint = ENDPOINT[manifest.task]
        if endpoint == "translate":
            gen = manifest.generation
            body = {"model": info["name"], "texts": [item], "num_beams": gen.num_beams, "max_new_tokens": gen.max_new_tokens}
            options = {"num_beams": gen.num_beams, "max_new_tokens": gen.max_new_tokens}
        elif endpoint == "classify_image":
            body = {"model": info["name"], "images": [base64.b64encode(item).decode()], "top_k": len(manifest.labels)}
            options = {"top_k": len(manifest.labels)}
        elif manifest.task == "multi-label-classification":
            body, options = {"model": info["name"], "texts": [item]}, {}
        else:
            body = {"model": info["name"], "texts": [item], "top_k": len(manifest.labels)}
            options = {"top_k": len(manifest.labels)}
        response = requests.post(f"{url}/{endpoint}", json=body, timeout=60)
        assert response.status_code == 200, (info["name"], response.status_code, response.text[:500])
        answer = response.json()
        assert (answer["model"], answer["version"]) == (info["name"], manifest.version)
        (result,) = answer["results"]
        want = expected(manifest, vdir, info["variant"], item, options)
        if endpoint == "translate":
            assert result["translation"] == want["translation"]
        else:
            got = {x["label"]: x["score"] for x in result["labels"]}
            wanted = {x["label"]: x["score"] for x in want["labels"]}
            assert got.keys() == wanted.keys() and set(got) <= set(manifest.labels), (info["name"], result, want)
            assert np.allclose([got[k] for k in wanted], list(wanted.values()), atol=1e-5), (info["name"], got, wanted)
            if manifest.task != "multi-label-classification":  # top-k answers come best first
                scores = [x["score"] for x in result["labels"]]
                assert scores == sorted(scores, reverse=True)
    assert seen_tasks == {m.task for m in (registry.load_version(readable_registry, n)[0]
                                           for n in registry.model_names(readable_registry))}


def test_sigterm_drains_and_the_container_exits_cleanly(docker_env, container):
    """What `docker stop` and Kubernetes do: SIGTERM to PID 1 (bentoml): not ready at once, then exit 0.
    Last test of the container (it stops it)."""
    name, url = container
    sh(["docker", "kill", "--signal", "TERM", name], env=docker_env)
    t0 = time.monotonic()
    assert requests.get(f"{url}/readyz", timeout=10).status_code == 503
    while health(docker_env, name)[0] == "running" and time.monotonic() - t0 < 60:
        time.sleep(0.2)
    state = json.loads(sh(["docker", "inspect", name], env=docker_env).stdout)[0]["State"]
    print(f"\ncontainer exited {time.monotonic() - t0:.1f} s after SIGTERM (grace 1 s), code {state['ExitCode']}")
    assert state["Status"] == "exited" and time.monotonic() - t0 < 1 + 20 + 5
    assert state["ExitCode"] in (0, 143), state  # 143: bentoml re-raises SIGTERM after its workers stopped


def test_gpu_flavour_installs_onnxruntime_gpu_and_refuses_a_cpu_fallback(docker_env, readable_registry):
    """The GPU flavour's lock and install path, built on the Debian base (the CUDA base cannot be
    pulled here): onnxruntime-gpu replaces onnxruntime, and with SERVICE_PROVIDER=cuda but no CUDA
    libraries every model fails to load with a clear reason instead of serving on CPU."""
    tag = "modelserve:gpu-flavour-test"
    build_image(docker_env, "gpu", tag)
    probe = ("import importlib.metadata as md, onnxruntime as ort; "
             "names = {d.metadata['Name'].lower() for d in md.distributions()}; "
             "print(sorted(n for n in names if n.startswith('onnxruntime')), 'CUDAExecutionProvider' in ort.get_available_providers())")
    out = sh(["docker", "run", "--rm", "--network", "none", tag, "python", "-c", probe], env=docker_env).stdout.strip()
    assert out == "['onnxruntime-gpu'] True", out
    port = free_port()
    name = f"modelserve-gpu-test-{os.getpid()}"
    sh(["docker", "run", "-d", "--name", name, "--network", "host", "-e", "BENTOML_HOST=127.0.0.1",
        "-e", f"BENTOML_PORT={port}", "-e", "MODEL_REGISTRY=/mnt/registry", "-e", "SERVICE_PROVIDER=cuda",
        "-v", f"{readable_registry}:/mnt/registry:ro", tag], env=docker_env)
    try:
        url, deadline, models = f"http://127.0.0.1:{port}", time.monotonic() + 180, None
        while models is None and time.monotonic() < deadline:
            try:
                models = requests.get(f"{url}/models", timeout=30).json()["models"]
            except (requests.RequestException, ValueError, KeyError):  # not up yet, or slow on a busy box
                time.sleep(1)
        assert models, sh(["docker", "logs", "--tail", "40", name], env=docker_env, check=False).stderr[-3000:]
        assert all(m["status"] == "failed" and "provider=cuda" in m["reason"] for m in models), models
        assert requests.get(f"{url}/readyz", timeout=30).status_code == 503
    finally:
        sh(["docker", "rm", "-f", name], env=docker_env, check=False)
        sh(["docker", "rmi", "-f", tag], env=docker_env, check=False)
