"""Helpers shared by the differ and ELF tests (kept out of conftest.py,
which other test suites of this directory may own)."""

import json
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from world import CORPUS, corpus_present, require

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def corpus() -> Path:
    """The kpatch unit-object corpus (CI has shared/ beside the clone)."""
    require(corpus_present(), f"kpatch's conformance corpus at {CORPUS} (beside the repo)")
    return CORPUS


def load_cases() -> List[dict]:
    """The corpus cases, or [] when the corpus is absent (tests then skip)."""
    if not corpus_present():
        return []
    return json.loads((CORPUS / "expectations.json").read_text())["cases"]


def run_diff_cli(args: List[str]) -> subprocess.CompletedProcess:
    """Run kpatch-diff-object as a user would, in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "pykpatch.cli.diff_object", *args],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)


def tool(*cmd: str) -> str:
    """stdout of a binutils command (fails the test on a non-zero exit)."""
    return subprocess.run(list(cmd), capture_output=True, text=True, check=True).stdout


def compile_kernel_like(source: str, obj: Path, value: int) -> Path:
    """Compile C *source* as the kernel compiles for a live patch (function
    and data sections, ``__fentry__`` calls), with ``-DVALUE=value``."""
    src = obj.parent / "source.c"  # one name: the FILE symbol of both halves of a pair
    src.write_text(source)
    subprocess.run(["gcc", "-O2", "-fno-pic", "-ffunction-sections", "-fdata-sections", "-pg",
                    "-mfentry", f"-DVALUE={value}", "-c", str(src), "-o", str(obj)], check=True)
    return obj


def site_table_source(section: str) -> str:
    """C of a function demo() with one entry of table *section* pointing
    inside it (the way objtool's and the kernel's tables point at an
    instruction), and a pointer to its start in section __demo_ops."""
    return r"""
int helper(int);
int demo(int x)
{
	asm volatile("1: nop\n\t"
		     ".pushsection SECTION, \"a\"\n\t.long 1b - .\n\t.popsection");
	return helper(x) + VALUE;
}
int (*const demo_ops)(int) __attribute__((section("__demo_ops"))) = demo;
""".replace("SECTION", section)
