"""The Dockerfile, built and run: over a local Debian base (debootstrap; base images cannot be pulled
here), with podman, the container answers /readyz and a select, runs as its own user, passes its
HEALTHCHECK, and keeps what it acknowledged across a restart on its volume.

Skipped where no container engine is installed or none can run a container (CI installs podman,
runc and debootstrap and sets EXEMPLAR_TEST_REQUIRE_CONTAINER=1: there, a skip is a failure)."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest

from tests.processes import ROOT, free_port

pytestmark = pytest.mark.integration

BASE = "localhost/exemplar-test-base:bookworm"
IMAGE = "localhost/exemplar:test"
BUILD_TIMEOUT_S = 1800


def _unavailable(reason: str) -> None:
    if os.environ.get("EXEMPLAR_TEST_REQUIRE_CONTAINER"):
        raise AssertionError(f"a container engine is required here: {reason}")
    pytest.skip(reason)


def _engine_flags() -> list[str]:
    """What this sandbox needs: runc (crun refuses hybrid cgroups) and limits within the hard ones
    (podman's defaults exceed them)."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    flags = [f"--ulimit=nofile={nofile}:{nofile}", "--ulimit=nproc=4096:4096"]
    if shutil.which("runc"):
        flags.insert(0, "--runtime=runc")
    return flags


def _podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=check)


def _pip_mirrors() -> tuple[list[str], list[str]]:
    """The machine's local package mirrors (file:// indexes in pip's configuration), as build
    volumes and pip options: the build installs what this machine's pip would."""
    out = subprocess.run(["pip", "config", "list"], capture_output=True, text=True, timeout=60).stdout
    volumes, options = [], []
    for line in out.splitlines():
        if "extra-index-url" in line:
            for url in line.split("=", 1)[1].strip("'\" ").split():
                if url.startswith("file://"):
                    top = Path(url[len("file://"):]).parent
                    volumes.append(f"--volume={top}:{top}:ro")
                    options.append(f"--extra-index-url {url}")
    return volumes, options


def _base_image() -> None:
    if _podman("image", "exists", BASE, check=False).returncode == 0:
        return
    if shutil.which("debootstrap") is None:
        _unavailable("debootstrap is not installed (apt-get install debootstrap)")
    with tempfile.TemporaryDirectory() as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
                        "bookworm", str(rootfs), "http://deb.debian.org/debian"],
                       check=True, capture_output=True, timeout=900)
        # This machine's trust store: its package registries may sit behind its own CA.
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", rootfs / "etc/ssl/certs/ca-certificates.crt")
        for deb in (rootfs / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["podman", "import", "-q", "-", BASE], stdin=tar.stdout, check=True, capture_output=True,
                       timeout=600)
        tar.wait(60)


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    if shutil.which("podman") is None:
        _unavailable("no container engine is installed (apt-get install podman runc debootstrap)")
    _base_image()
    probe = _podman("run", "--rm", *_engine_flags(), "--network=host", BASE, "true", check=False)
    if probe.returncode != 0:
        _unavailable(f"podman cannot run a container here: {probe.stderr.strip()[-300:]}")
    with tempfile.TemporaryDirectory() as tmp:
        context = Path(tmp)
        for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md"):
            shutil.copy(ROOT / name, context / name)
        shutil.copytree(ROOT / "exemplar", context / "exemplar", ignore=shutil.ignore_patterns("__pycache__"))
        volumes, options = _pip_mirrors()
        torch_spec = f"torch=={version('torch').split('+')[0]} torchvision=={version('torchvision').split('+')[0]}"
        # docker format: OCI images drop HEALTHCHECK.
        build = _podman("build", "--format=docker", *_engine_flags(), "--network=host", *volumes,
                        f"--build-arg=BASE_IMAGE={BASE}", "--build-arg=TORCH_INDEX_URL=",
                        f"--build-arg=TORCH_SPEC={torch_spec}", f"--build-arg=PIP_OPTIONS={' '.join(options)}",
                        "-t", IMAGE, str(context), timeout=BUILD_TIMEOUT_S, check=False)
        assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    try:
        yield IMAGE
    finally:
        # The image holds torch twice over (build stage, runtime stage): some GB a build. Keep the base.
        _podman("rmi", "-f", IMAGE, check=False)
        _podman("image", "prune", "-f", timeout=600, check=False)


def _wait_ready(url: str, container: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"the container did not become ready: {_podman('logs', container, check=False).stderr[-3000:]}")


def test_the_image_serves_a_pool_and_keeps_it_across_a_restart(image: str) -> None:
    volume = f"exemplar-test-{uuid.uuid4().hex[:8]}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # Host networking on loopback: no port leaves the machine, so no API keys are needed.
    run = ["run", "-d", *_engine_flags(), "--network=host", f"--volume={volume}:/data",
           f"--env=EXEMPLAR_PORT={port}", "--env=EXEMPLAR_HOST=127.0.0.1", "--env=HF_HUB_OFFLINE=1"]
    containers: list[str] = []
    try:
        containers.append(_podman(*run, image).stdout.strip())
        _wait_ready(f"{base}/readyz", containers[-1])
        assert _podman("exec", containers[-1], "id", "-un").stdout.strip() == "exemplar"
        assert _podman("healthcheck", "run", containers[-1], check=False).returncode == 0
        with httpx.Client(base_url=base, timeout=30) as http:
            assert http.post("/v1/pools", json={"name": "p", "encoder": "precomputed:4"}).status_code == 201
            items = [{"id": f"i{n}", "label": "xy"[n % 2], "embedding": [1.0, float(n), 0.5, 1.0]} for n in range(6)]
            assert http.post("/v1/pools/p/items", json={"items": items}).status_code == 201
            query = {"query": {"embedding": [1, 2, 0.5, 1]}, "strategy": "balanced", "k": 4}
            first = http.post("/v1/pools/p/select", json=query)
            assert first.status_code == 200 and len(first.json()["demonstrations"]) == 4
            missing = http.post("/v1/pools/nope/select", json=query)
            assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
        _podman("stop", "--time=30", containers[-1])  # SIGTERM: a clean stop
        containers.append(_podman(*run, image).stdout.strip())
        _wait_ready(f"{base}/readyz", containers[-1])
        with httpx.Client(base_url=base, timeout=30) as http:
            assert http.get("/v1/pools/p").json()["size"] == 6
            again = http.post("/v1/pools/p/select", json=query).json()
            assert again["demonstrations"] == first.json()["demonstrations"]
    finally:
        for container in containers:
            _podman("rm", "-f", container, check=False)
        _podman("volume", "rm", "-f", volume, check=False)
