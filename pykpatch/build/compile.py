"""Compiling chosen objects through kbuild, with the flags the differ needs."""

import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence, Set

from pykpatch.build.objindex import KernelObject
from pykpatch.errors import KpatchError
from pykpatch.kernel import kbuild
from pykpatch.process import run

# One section per function and per data object, so the differ can compare
# and take them one by one.
DIFF_CFLAGS = "-ffunction-sections -fdata-sections"


@dataclass
class Compiled:
    """What a compile made: obj -> copy; and, when it kept going, obj -> compiler errors."""

    copies: Dict[str, Path] = field(default_factory=dict)
    failed: Dict[str, str] = field(default_factory=dict)


def compile_objects(tree: Path, make_args: Sequence[str], objects: Sequence[KernelObject],
                    dest: Path, *, jobs: int, extra_cflags: str = "",
                    logfile: Path, what: str, tools: Sequence[str] = ()) -> Dict[str, Path]:
    """Build *objects* in *tree* with kbuild and copy them to *dest*; obj -> copy.

    *tools*: what goes before ``make`` (a build root's entry; see
    :attr:`pykpatch.provider.debian.DebianKernel.tools`).
    """
    return _compile(tree, make_args, objects, dest, jobs=jobs, extra_cflags=extra_cflags,
                    logfile=logfile, what=what, tools=tools, keep_going=False).copies


def compile_each(tree: Path, make_args: Sequence[str], objects: Sequence[KernelObject],
                 dest: Path, *, jobs: int, extra_cflags: str = "",
                 logfile: Path, what: str, tools: Sequence[str] = ()) -> Compiled:
    """Like :func:`compile_objects`, but an object that does not compile is
    recorded with its errors instead of failing the others."""
    for o in objects:
        # (so that a failed compile cannot leave the previous build's object in its place)
        (tree / o.obj).unlink(missing_ok=True)
    return _compile(tree, make_args, objects, dest, jobs=jobs, extra_cflags=extra_cflags,
                    logfile=logfile, what=what, tools=tools, keep_going=True)


def _compile(tree: Path, make_args: Sequence[str], objects: Sequence[KernelObject],
             dest: Path, *, jobs: int, extra_cflags: str, logfile: Path, what: str,
             tools: Sequence[str], keep_going: bool) -> Compiled:
    kcflags = f"{DIFF_CFLAGS} {extra_cflags}".strip()
    argv = [*tools, "make", *(["-k"] if keep_going else []), *make_args,
            *kbuild.not_remade(kbuild.PREPARE_GOAL), f"KCFLAGS={kcflags}",
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
    if proc.returncode != 0 and not keep_going:
        tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
        raise KpatchError(f"compiling the {what} objects failed (exit {proc.returncode}):\n{tail}",
                          log=str(logfile))
    result = Compiled()
    missing = [o for o in objects if not (tree / o.obj).is_file()]
    if missing and not keep_going:
        raise KpatchError(f"kbuild did not produce {missing[0].obj}", log=str(logfile))
    errors = compiler_errors(proc.stdout)
    for o in missing:
        result.failed[o.obj] = _errors_of(o, errors, missing) or \
            "\n".join(proc.stdout.strip().splitlines()[-5:])
    for o in objects:
        if o in missing:
            continue
        copy = dest / o.obj
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tree / o.obj, copy)
        result.copies[o.obj] = copy
    return result


_ERROR_RE = re.compile(r"^(?P<file>[^\s:]+):\d+(?::\d+)?: (?:fatal )?error: ")


def compiler_errors(output: str) -> Dict[str, List[str]]:
    """The compiler's error lines, by the file they are in."""
    found: Dict[str, List[str]] = {}
    for line in output.splitlines():
        m = _ERROR_RE.match(line)
        if m:
            found.setdefault(m["file"], []).append(line)
    return found


def _errors_of(obj: KernelObject, errors: Dict[str, List[str]],
               failed: Sequence[KernelObject]) -> str:
    """Error lines of *obj*: those in its source, else those in no other failed source."""
    own = errors.get(obj.src)
    if own is None:
        others = {o.src for o in failed if o is not obj}
        own = [line for f, lines in errors.items() if f not in others for line in lines]
    return "\n".join(own[:3])


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
