"""Wait for a child process's HTTP readiness endpoint (the service, Prometheus): stdlib only."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Callable


def wait_until_ready(url: str, proc: subprocess.Popen, *, timeout: float, name: str,
                     log: Callable[[], str] = lambda: "", poll_s: float = 0.2) -> None:
    """Poll ``url`` until it answers 200; raise with the tail of ``log()`` if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:  # refused while starting, or 503 until ready (HTTPError is an OSError)
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} not ready after {timeout} s:\n{log()[-4000:]}")
        time.sleep(poll_s)
