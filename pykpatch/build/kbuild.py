"""Building out-of-tree modules against a kernel's headers with kbuild."""

import shutil
from pathlib import Path
from typing import List, Optional, Sequence

from pykpatch.errors import KpatchError
from pykpatch.process import run


def build_external_module(headers_dir: Path, src_dir: Path, build_dir: Path,
                          logfile: Optional[Path] = None, jobs: int = 2,
                          tools: Sequence[str] = ()) -> List[Path]:
    """Copy *src_dir* to *build_dir*, ``make -C headers M=build_dir``, return the .ko files.

    Building in a copy keeps the source directory clean whatever happens.
    """
    if build_dir.exists():
        shutil.rmtree(build_dir)
    shutil.copytree(src_dir, build_dir)
    run([*tools, "make", f"-j{jobs}", "-C", headers_dir, f"M={build_dir}", "modules"],
        logfile=logfile, what=f"building the module in {src_dir}")
    modules = sorted(build_dir.glob("*.ko"))
    if not modules:
        raise KpatchError(f"kbuild made no .ko in {build_dir}", log=str(logfile) if logfile else None)
    return modules
