"""Compiling chosen objects through kbuild, with the flags the differ needs."""

import shutil
from collections import Counter
from pathlib import Path
from typing import Dict, Sequence, Set

from pykpatch.build.objindex import KernelObject
from pykpatch.errors import KpatchError
from pykpatch.kernel import kbuild
from pykpatch.process import run

# One section per function and per data object, so the differ can compare
# and take them one by one.
DIFF_CFLAGS = "-ffunction-sections -fdata-sections"


def compile_objects(tree: Path, make_args: Sequence[str], objects: Sequence[KernelObject],
                    dest: Path, *, jobs: int, extra_cflags: str = "",
                    logfile: Path, what: str, tools: Sequence[str] = ()) -> Dict[str, Path]:
    """Build *objects* in *tree* with kbuild and copy them to *dest*; obj -> copy.

    *tools*: what goes before ``make`` (a build root's entry; see
    :attr:`pykpatch.provider.debian.DebianKernel.tools`).
    """
    kcflags = f"{DIFF_CFLAGS} {extra_cflags}".strip()
    argv = [*tools, "make", *make_args, *kbuild.not_remade(kbuild.PREPARE_GOAL), f"KCFLAGS={kcflags}",
            *[o.obj for o in objects]]
    parallel = [*argv[:len(tools) + 1], f"-j{jobs}", *argv[len(tools) + 1:]]
    proc = run(parallel, cwd=tree, logfile=logfile, check=False)
    raced = _compiled_twice(proc.stdout) if jobs > 1 else set()
    if raced:
        # A directory listed at the top level and inside another one
        # (arch/x86/pci/ is both): kbuild descends twice for a single target
        # and two parallel compilers race on one .o and its .cmd file, which
        # may come out interleaved even when both succeed -- and a broken
        # .cmd file stops every later make in that directory.  Those objects
        # again, one job at a time.
        _forget_objects(tree, raced)
        proc = run(argv, cwd=tree, logfile=logfile, check=False)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
        raise KpatchError(f"compiling the {what} objects failed (exit {proc.returncode}):\n{tail}",
                          log=str(logfile))
    copies = {}
    for o in objects:
        built = tree / o.obj
        if not built.is_file():
            raise KpatchError(f"kbuild did not produce {o.obj}", log=str(logfile))
        copy = dest / o.obj
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built, copy)
        copies[o.obj] = copy
    return copies


def _compiled_twice(output: str) -> Set[str]:
    """Objects kbuild's output shows compiled more than once."""
    built = Counter(line.split()[-1] for line in output.splitlines()
                    if line.lstrip().startswith("CC "))
    return {obj for obj, count in built.items() if count > 1}


def _forget_objects(tree: Path, objects: Set[str]) -> None:
    """Remove objects and their kbuild command files, so make builds them again."""
    for obj in objects:
        built = tree / obj
        built.unlink(missing_ok=True)
        kbuild.command_file(built).unlink(missing_ok=True)
