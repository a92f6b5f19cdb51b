"""Compiling chosen objects through kbuild, with the flags the differ needs."""

import shutil
from pathlib import Path
from typing import Dict, Sequence

from pykpatch.build.objindex import KernelObject
from pykpatch.errors import KpatchError
from pykpatch.process import run

# One section per function and per data object, so the differ can compare
# and take them one by one.
DIFF_CFLAGS = "-ffunction-sections -fdata-sections"


def compile_objects(tree: Path, make_args: Sequence[str], objects: Sequence[KernelObject],
                    dest: Path, *, jobs: int, extra_cflags: str = "",
                    logfile: Path, what: str) -> Dict[str, Path]:
    """Build *objects* in *tree* with kbuild and copy them to *dest*; obj -> copy."""
    kcflags = f"{DIFF_CFLAGS} {extra_cflags}".strip()
    run(["make", f"-j{jobs}", *make_args, f"KCFLAGS={kcflags}", *[o.obj for o in objects]],
        cwd=tree, logfile=logfile, what=f"compiling the {what} objects")
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
