"""Helpers shared by the differ and ELF tests (kept out of conftest.py,
which other test suites of this directory may own)."""

import json
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CORPUS = REPO_ROOT.parent / "shared" / "conformance" / "kpatch-unit-x86_64"


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The kpatch unit-object corpus (CI checks it out next to the clone)."""
    if not (CORPUS / "expectations.json").is_file():
        pytest.skip(f"conformance corpus not found at {CORPUS} (expected beside the repo)")
    return CORPUS


def load_cases() -> List[dict]:
    """The corpus cases, or [] when the corpus is absent (tests then skip)."""
    path = CORPUS / "expectations.json"
    if not path.is_file():
        return []
    return json.loads(path.read_text())["cases"]


def run_diff_cli(args: List[str]) -> subprocess.CompletedProcess:
    """Run kpatch-diff-object as a user would, in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "pykpatch.cli.diff_object", *args],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)


def tool(*cmd: str) -> str:
    """stdout of a binutils command (fails the test on a non-zero exit)."""
    return subprocess.run(list(cmd), capture_output=True, text=True, check=True).stdout
