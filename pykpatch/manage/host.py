"""Where the machine being managed keeps things.

Every path the ``kpatch`` command touches, and the way it runs programs,
come from one :class:`Host`.  The default is this machine; tests build one
under a temporary directory (:meth:`Host.under`) with a command runner that
never reaches the real kernel.
"""

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pykpatch import process
from pykpatch.kernel.livepatch import SYSFS_LIVEPATCH
from pykpatch.kernel.module import PROC, SYSFS_MODULE

# Same place as upstream kpatch, so existing installations keep working.
STORE = Path("/var/lib/kpatch")
# Copies of the modules we loaded, so `list`/`info` can show their origin
# after the original file is gone.  tmpfs: it empties at boot, like the kernel.
RUNTIME = Path("/run/kpatch")
UNIT_DIR = Path("/etc/systemd/system")
# One directory per installed kernel release (Debian's linux-image packages).
MODULES_ROOT = Path("/lib/modules")

Runner = Callable[..., "subprocess.CompletedProcess[str]"]


def _running_release() -> str:
    return os.uname().release


@dataclass(frozen=True)
class Host:
    """Paths and the program runner of the machine being patched."""

    livepatch: Path = SYSFS_LIVEPATCH
    sys_module: Path = SYSFS_MODULE
    proc: Path = PROC
    store: Path = STORE
    runtime: Path = RUNTIME
    unit_dir: Path = UNIT_DIR
    modules_root: Path = MODULES_ROOT
    release: str = field(default_factory=_running_release)
    # Same signature as pykpatch.process.run; every insmod, rmmod, dmesg and
    # systemctl goes through it.
    run: Runner = process.run

    @classmethod
    def under(cls, root: Path, release: str, run: Runner) -> "Host":
        """A host whose every path lies below *root* (tests, chroots)."""
        def below(path: Path) -> Path:
            return root / path.relative_to("/")
        return cls(
            livepatch=below(SYSFS_LIVEPATCH), sys_module=below(SYSFS_MODULE),
            proc=below(PROC), store=below(STORE), runtime=below(RUNTIME),
            unit_dir=below(UNIT_DIR), modules_root=below(MODULES_ROOT), release=release,
            run=run,
        )
