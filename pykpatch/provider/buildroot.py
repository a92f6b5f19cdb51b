"""A build root: a minimal Debian of a kernel's own suite, to compile in.

A kernel is compiled by the compiler of the Debian release it was built for
(trixie's 6.12 by gcc-14), and its packaged host tools (modpost, fixdep,
objtool) need that release's C library.  When the host is another release,
every command of a build runs in a root of the kernel's suite instead:
``debootstrap --variant=minbase`` with the compiler and the kbuild tools,
made once and cached::

    buildroot/<suite>-<compiler>/    the root; ``.pykpatch-complete`` (its
                                     package list) written last

A command enters it in a mount namespace of its own (``unshare --mount``):
the pykpatch cache, where trees, headers and objects live, is bind-mounted
at the same path inside, so paths mean the same on both sides, and the
mounts go away with the command, whatever happens to it.
"""

import logging
import shlex
import shutil
from pathlib import Path
from typing import List, Sequence

from pykpatch.process import require_tool, run
from pykpatch.provider.archive import host_mirrors

log = logging.getLogger("pykpatch")

# What compiling kernel objects and linking modules needs besides the
# kernel's compiler: kbuild's host programs are built with plain gcc.
TOOLS = ("gcc", "make", "bc", "flex", "bison", "libelf-dev", "libssl-dev", "dwarves", "kmod",
         "xz-utils", "perl-base", "python3", "binutils")

_COMPLETE = ".pykpatch-complete"


class BuildRoot:
    """The cached root of *suite* with *compiler* (a Debian package name, gcc-14)."""

    def __init__(self, cache: Path, suite: str, compiler: str) -> None:
        self.cache = cache
        self.suite = suite
        self.compiler = compiler
        self.dir = cache / "buildroot" / f"{suite}-{compiler}"

    def ensure(self) -> "BuildRoot":
        """Make the root unless it is complete; a half-made one is made again."""
        stamp = self.dir / _COMPLETE
        if stamp.is_file() and stamp.read_text() == self._contents():
            return self
        require_tool("debootstrap", "debootstrap")
        require_tool("unshare", "util-linux")
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        log.info("making a %s build root with %s (debootstrap, once: a few minutes)",
                 self.suite, self.compiler)
        try:
            run(["debootstrap", "--variant=minbase", f"--include={','.join(self.packages())}",
                 self.suite, self.dir, host_mirrors().main], what="debootstrap of the build root",
                logfile=self.dir.parent / f"{self.dir.name}.log")
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        stamp.write_text(self._contents())
        return self

    def packages(self) -> List[str]:
        return [self.compiler, *TOOLS]

    def _contents(self) -> str:
        # (a root made with other packages is made again)
        return " ".join(self.packages()) + "\n"

    def prefix(self, binds: Sequence[Path]) -> List[str]:
        """What to put before a command to run it inside the root, in the
        directory it was started in, with *binds* (directories of the host)
        at the same paths inside."""
        root = shlex.quote(str(self.dir))
        mounts = [f"mkdir -p {root}{shlex.quote(str(d))} && "
                  f"mount --rbind {shlex.quote(str(d))} {root}{shlex.quote(str(d))}"
                  for d in binds]
        script = " && ".join([
            *mounts,
            f"mount -t proc proc {root}/proc",
            f"mount --rbind /dev {root}/dev",
            f'exec chroot {root} /bin/sh -c \'cd "$0" && exec "$@"\' "$PWD" "$@"',
        ])
        return ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script, "sh"]

