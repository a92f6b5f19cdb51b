"""The patches of the klp-build bench: what each should give, and how the guest shows it works.

Three kinds, in the order the bench runs them (the first is klp-build's cold
run, so it is one both tools should build):

- five VM cases of ``tests/vm/test_kpatch_build.py`` (of those its 7.x line
  runs), with the same behaviour checks; their files come from
  :func:`kpatch_build_support.patch_path`, which takes
  ``tests/vm/patches/7.3/NAME`` where the 6.1 patch does not apply to 7.3;
- two changes both should refuse (an ``__init`` function, a struct layout);
- three real fixes (``fixes/``, made by ``make_fixes.py``): Debian 13's
  6.12.117-1 -> 6.12.118-1 changes that 7.3.4 does not have yet.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from common import FIXES_DIR
from kpatch_build_support import INOTIFY_MASK, patch_path

MODULE = "module"
REFUSED = "refused"

BINFMT = "/proc/sys/fs/binfmt_misc"

# An ioctl /proc/PID/pagemap does not know: EINVAL (22) before the fix,
# ENOTTY (25: the VFS's answer to -ENOIOCTLCMD) after it.
PAGEMAP_UNKNOWN_IOCTL = """python3 -c '
import fcntl, os
fd = os.open("/proc/self/pagemap", os.O_RDONLY)
try:
    fcntl.ioctl(fd, 0x7a00)
except OSError as err:
    print("errno", err.errno)
'"""

# SwapTotal shown again as PykpatchSwap (meminfo-klp.patch).
MEMINFO_SWAP = ("awk '/^SwapTotal:/ {t = $2} /^PykpatchSwap:/ {p = $2; s = 1} "
                "END {print (s && p == t) ? \"PykpatchSwap ok\" : \"no PykpatchSwap\"}' /proc/meminfo")


@dataclass(frozen=True)
class Behaviour:
    """A shell command run in the guest before loading the patch, while it
    is enabled and after it is unloaded: *expect* must be in its output while
    enabled, and only then."""

    command: str
    expect: str
    setup: str = ""      # before the first run of the command (as root, in the guest)
    teardown: str = ""   # after the last


@dataclass(frozen=True)
class BenchPatch:
    name: str
    file: str                       # the VM case's file name, or a file of fixes/
    expect: str                     # MODULE or REFUSED
    kind: str                       # "vm case", "refusal", "real fix"
    behaviour: Optional[Behaviour] = None
    targets: Tuple[str, ...] = ()   # modules it patches: loaded in the guest before it
    note: str = ""

    def path(self, release: str) -> Path:
        if self.kind == "real fix":
            return FIXES_DIR / self.file
        return patch_path(self.file, release)


PATCHES: List[BenchPatch] = [
    BenchPatch("cmdline-string", "cmdline-string.patch", MODULE, "vm case",
               Behaviour("cat /proc/cmdline", "pykpatch=live"),
               note="a string in cmdline_proc_show()"),
    BenchPatch("meminfo-klp", "meminfo-klp.patch", MODULE, "vm case",
               Behaviour(MEMINFO_SWAP, "PykpatchSwap ok"),
               note="meminfo_proc_show() calls static functions of vmlinux (klp relocations)"),
    BenchPatch("new-function", "new-function.patch", MODULE, "vm case",
               Behaviour("cat /proc/version", "pykpatch: new function"),
               note="a new noinline function called by version_proc_show()"),
    BenchPatch("module-binfmt-misc", "module-binfmt-misc.patch", MODULE, "vm case",
               Behaviour(f"cat {BINFMT}/status", "enabled (pykpatch)",
                         setup=f"mountpoint -q {BINFMT} || mount -t binfmt_misc none {BINFMT}",
                         teardown=f"umount {BINFMT}"),
               targets=("binfmt_misc",), note="a function of a module (binfmt_misc)"),
    BenchPatch("header-static-inline", "header-static-inline.patch", MODULE, "vm case",
               Behaviour(INOTIFY_MASK, "40000100"),
               note="a static inline of fs/notify/inotify/inotify.h: its callers change"),
    BenchPatch("init-function-FAIL", "init-function-FAIL.patch", REFUSED, "refusal",
               note="changes proc_cmdline_init(), an __init function (gone after boot)"),
    BenchPatch("struct-layout-FAIL", "struct-layout-FAIL.patch", REFUSED, "refusal",
               note="adds a member to struct inotify_event_info"),
    BenchPatch("fix-task_mmu", "fs-proc-task_mmu.patch", MODULE, "real fix",
               Behaviour(PAGEMAP_UNKNOWN_IOCTL, "errno 25"),
               note="do_pagemap_cmd(): -ENOTTY for unknown pagemap ioctls"),
    BenchPatch("fix-inet_hashtables", "net-ipv4-inet_hashtables.patch", MODULE, "real fix",
               note="__inet_lookup_established(): acquire ordering of the socket refcount"),
    BenchPatch("fix-fat-inode", "fs-fat-inode.patch", MODULE, "real fix", targets=("fat",),
               note="fat_write_failed() (module fat): hold truncate_lock"),
]


def select(names: List[str]) -> List[BenchPatch]:
    """The patches called *names* (all when empty), in table order."""
    if not names:
        return list(PATCHES)
    unknown = set(names) - {p.name for p in PATCHES}
    if unknown:
        raise ValueError(f"no bench patch {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(p.name for p in PATCHES)})")
    return [p for p in PATCHES if p.name in names]
