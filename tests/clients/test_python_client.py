"""The Python client (clients/python) installed alone in a fresh virtual environment and run
against a real `exemplar serve`: its own test suite, with the server's URL, keys, pools and model
endpoint in environment variables (clients/python/tests/support.py lists them).

What this proves besides the client's behaviour: installing it pulls neither the server nor its
heavy dependencies, and its models match this server's OpenAPI document (the drift test)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

from exemplar.samples import generate_shapes
from tests.processes import ROOT, free_port, running

pytestmark = pytest.mark.integration

CLIENT = ROOT / "clients" / "python"
KEYS = {"admin": "admin-key-for-client-tests", "reader": "reader-key-for-client-tests",
        "limited": "limited-key-for-client-tests"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fake_mllm: str) -> Iterator[dict[str, str]]:
    """`exemplar serve` with a built shapes pool, builds allowed under the sample's folder, the
    scripted model as endpoint 'fake', and three keys: admin, query-only, and rate-limited."""
    root = tmp_path_factory.mktemp("client-server")
    manifest = generate_shapes(root / "src", per_class_per_domain=2)
    env = {
        "EXEMPLAR_DATA_DIR": str(root / "data"),
        "EXEMPLAR_SOURCE_ROOTS": json.dumps([str(root / "src")]),
        "EXEMPLAR_MLLM_ENDPOINTS": json.dumps({"fake": {"base_url": f"{fake_mllm}/v1", "model": "majority"}}),
        "EXEMPLAR_API_KEYS": json.dumps([
            {"name": "admin", "key": KEYS["admin"], "scopes": ["admin"]},
            {"name": "reader", "key": KEYS["reader"], "scopes": ["query"]},
            # One request per 2 s: the second in a row is refused with Retry-After.
            {"name": "limited", "key": KEYS["limited"], "scopes": ["admin"], "rate_per_s": 0.5, "burst": 1},
        ]),
    }
    subprocess.run([sys.executable, "-m", "exemplar", "build", "shapes", str(manifest)], check=True, timeout=300,
                   env=dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), **env), capture_output=True,
                   cwd=ROOT)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running(["-m", "exemplar", "serve", "--port", str(port)], f"{base}/readyz", root / "serve.log", env=env):
        yield {
            "EXEMPLAR_CLIENT_TEST_URL": base,
            "EXEMPLAR_CLIENT_TEST_API_KEY": KEYS["admin"],
            "EXEMPLAR_CLIENT_TEST_QUERY_KEY": KEYS["reader"],
            "EXEMPLAR_CLIENT_TEST_LIMITED_KEY": KEYS["limited"],
            "EXEMPLAR_CLIENT_TEST_SHAPES_POOL": "shapes",
            "EXEMPLAR_CLIENT_TEST_MLLM": "fake",
            "EXEMPLAR_CLIENT_TEST_BUILD_SOURCE": str(manifest),
        }


def _clean_env(venv_dir: Path) -> dict[str, str]:
    """This process's environment without what would let the venv see this checkout or its venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_client_suite_passes_in_an_isolated_install(server: dict[str, str], tmp_path: Path) -> None:
    # A copy: pip writes build/ and *.egg-info next to the sources, and the checkout stays as it is.
    source = tmp_path / "exemplar-client"
    shutil.copytree(CLIENT, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    venv_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
    python = str(venv_dir / "bin" / "python")
    env = _clean_env(venv_dir)

    install = _run([python, "-m", "pip", "install", "--disable-pip-version-check", "-q", str(source), "pytest"],
                   tmp_path, env, timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr

    # From tmp_path, so the current directory offers no modules of its own.
    probe = _run([python, "-c", "import importlib.util, json; print(json.dumps({m: importlib.util.find_spec(m) "
                  "is not None for m in ('torch', 'faiss', 'exemplar', 'fastapi', 'exemplar_client')}))"],
                 tmp_path, env, timeout=60)
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout) == {"torch": False, "faiss": False, "exemplar": False, "fastapi": False,
                                        "exemplar_client": True}

    # The tests must exercise the installed package: the copy's sources would shadow it from its root.
    shutil.rmtree(source / "exemplar_client")
    tests = _run([python, "-m", "pytest", "tests", "-p", "no:cacheprovider", "-q", "-rs"],
                 source, {**env, **server, "HF_HUB_OFFLINE": "1"}, timeout=600)
    output = tests.stdout + tests.stderr
    print(output)  # shown with -rP: what ran in the isolated install
    assert tests.returncode == 0, output
    assert " passed" in output and " skipped" not in output and " failed" not in output, output
