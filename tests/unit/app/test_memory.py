"""The server processes' allocator settings (exemplar/app/memory.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from exemplar.app import memory

GLIBC = memory._glibc() is not None

# Frees 64 blocks of 512 KiB, each pinned by a 96 KiB block after it, and prints how much RssAnon
# that gave back (MiB). First a 16 MiB block is mmapped and freed, as a big numpy temporary is:
# with glibc's defaults that raises the mmap threshold to 16 MiB, so the 512 KiB blocks come from
# the heap and stay resident once freed (holes below the pins are not trimmed) until
# ``release_freed_memory`` (what the server runs after each snapshot swap).
_PROBE = r"""
import ctypes, sys
from pathlib import Path
from exemplar.app.memory import release_freed_memory, tune_allocator

assert tune_allocator({}), "nothing applied"
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def anon_mib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024

big = libc.malloc(16 << 20)
ctypes.memset(big, 1, 16 << 20)
libc.free(big)
blocks, pins = [], []
for _ in range(64):
    block = libc.malloc(512 << 10)
    ctypes.memset(block, 1, 512 << 10)
    blocks.append(block)
    pins.append(libc.malloc(96 << 10))  # too big for a free hole of the interpreter's own
before = anon_mib()
for block in blocks:
    libc.free(block)
if sys.argv[1] == "released":
    assert release_freed_memory({})
print(before - anon_mib())
"""


def _returned_mib(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(memory.__file__).parents[2])})
    assert out.returncode == 0, out.stderr
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC or not Path("/proc/self/status").exists(), reason="glibc on Linux only")
def test_after_a_release_freed_blocks_go_back_to_the_os() -> None:
    assert _returned_mib("kept") < 8  # glibc keeps them: the growth this module is for
    assert _returned_mib("released") > 28  # 32 MiB freed, returned


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_settings_the_operator_made_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []

    class Libc:
        class mallopt:  # noqa: N801 - stands in for the C function
            argtypes: list = []
            restype = None

            def __new__(cls, param: int, value: int) -> int:  # type: ignore[misc]
                calls.append((param, value))
                return 1

    monkeypatch.setattr(memory, "_glibc", lambda: Libc)
    assert memory.tune_allocator({}) == {"arena_max": 2}
    assert calls == [(-8, 2)]
    assert memory.tune_allocator({"MALLOC_ARENA_MAX": "4"}) == {}
    assert memory.tune_allocator({"GLIBC_TUNABLES": "glibc.malloc.arena_max=8"}) == {}
    assert memory.tune_allocator({memory.OPT_OUT: "off"}) == {}
    assert memory.release_freed_memory({memory.OPT_OUT: "off"}) is False
    assert len(calls) == 1


def test_without_glibc_it_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_glibc", lambda: None)
    assert memory.tune_allocator({}) == {}
    assert memory.release_freed_memory({}) is False


def test_serve_and_each_worker_apply_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from exemplar.app.cli import main
    from exemplar.app.main import create_app_from_environment

    calls: list[str] = []
    monkeypatch.setattr(memory, "tune_allocator", lambda environ=None: calls.append("tuned") or {})
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *a, **k: calls.append("served"))
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: calls.append("workers"))
    monkeypatch.setenv("EXEMPLAR_DATA_DIR", str(tmp_path))
    runner = CliRunner()
    for workers in ("1", "2"):
        result = runner.invoke(main, ["serve", "--data-dir", str(tmp_path), "--port", "8123", "--workers", workers])
        assert result.exit_code == 0, result.output
    assert calls == ["tuned", "served", "tuned", "workers"]
    create_app_from_environment()  # what each worker process runs first
    assert calls[-1] == "tuned"
