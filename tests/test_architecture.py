"""The dependency direction of ../shared/DESIGN.md, enforced by the import-linter contracts in pyproject.toml."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept() -> None:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert lint, "import-linter is part of the test extra"
    result = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout and "6 kept" in result.stdout


def test_public_surfaces_are_explicit() -> None:
    import exemplar.app
    import exemplar.encoders
    import exemplar.retrieval
    import exemplar.samples

    for module in (exemplar.app, exemplar.encoders, exemplar.retrieval, exemplar.samples):
        assert module.__all__ and all(hasattr(module, name) for name in module.__all__), module.__name__
