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


# The harm a layout change does to what the kernel already holds: a daemon
# in the guest keeps one inotify instance watching a directory and, each time
# it is asked, reads the events queued since the last time and queues the next
# one (creates f<N>).  The event the check run while the patch is enabled reads
# was queued, with the old struct inotify_event_info, before the patch loaded.
INOTIFY_PROBE_DIR = "/tmp/inotify-probe"
INOTIFY_PROBE = r"""
import ctypes, os, re, struct, time
DIR = "/tmp/inotify-probe"
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(os.O_NONBLOCK)
wd = libc.inotify_add_watch(fd, DIR.encode(), 0x100)  # IN_CREATE
made = 0
open(f"{DIR}/f{made}", "w").close()


def read_events():
    try:
        data = os.read(fd, 65536)
    except BlockingIOError:
        return "probe BROKEN: no event queued"
    except OSError as err:
        return f"probe BROKEN: read failed with errno {err.errno}"
    seen, at = [], 0
    while at + 16 <= len(data):
        ev_wd, mask, cookie, size = struct.unpack_from("iIII", data, at)
        name = data[at + 16:at + 16 + size].split(b"\0")[0].decode(errors="replace")
        at += 16 + size
        if ev_wd != wd or not re.fullmatch(r"f\d+", name):
            return f"probe BROKEN: event wd={ev_wd} mask={mask:#x} cookie={cookie} len={size} name={name!r}"
        seen.append(name)
    return "probe ok: " + " ".join(seen)


while True:
    if os.path.exists(DIR + ".req"):
        os.unlink(DIR + ".req")
        answer = read_events()
        made += 1
        open(f"{DIR}/f{made}", "w").close()
        with open(DIR + ".tmp", "w") as out:
            out.write(answer + "\n")
        os.rename(DIR + ".tmp", DIR + ".out")
    time.sleep(0.05)
"""
@dataclass(frozen=True)
class Behaviour:
    """A shell command run in the guest before loading the patch, while it
    is enabled and after it is unloaded.  A fix (*keeps* false): *expect*
    must be in its output while enabled, and only then.  A check that the
    patch breaks nothing the kernel already holds (*keeps* true): *expect*
    must be in all three outputs."""

    command: str
    expect: str
    setup: str = ""      # before the first run of the command (as root, in the guest)
    teardown: str = ""   # after the last
    keeps: bool = False

    def behaves(self, outputs: dict) -> Optional[bool]:
        """Whether the three outputs are right; None unless all three ran."""
        if not {"before", "enabled", "after"} <= set(outputs):
            return None
        if self.keeps:
            return all(self.expect in outputs[k] for k in ("before", "enabled", "after"))
        return (self.expect not in outputs["before"] and self.expect in outputs["enabled"]
                and self.expect not in outputs["after"])


INOTIFY_QUEUED_EVENT = Behaviour(
    command=(f"rm -f {INOTIFY_PROBE_DIR}.out; touch {INOTIFY_PROBE_DIR}.req; "
             f"for i in $(seq 100); do [ -f {INOTIFY_PROBE_DIR}.out ] && break; sleep 0.1; done; "
             f"cat {INOTIFY_PROBE_DIR}.out"),
    expect="probe ok",
    setup=(f"rm -rf {INOTIFY_PROBE_DIR}*; mkdir -p {INOTIFY_PROBE_DIR} && "
           f"cat > {INOTIFY_PROBE_DIR}.py <<'PROBE'{INOTIFY_PROBE}PROBE\n"
           f"setsid python3 {INOTIFY_PROBE_DIR}.py </dev/null >/dev/null 2>&1 & sleep 1"),
    # (the pattern must not match this shell's own command line)
    teardown=f"pkill -f '{INOTIFY_PROBE_DIR}[.]py'; rm -rf {INOTIFY_PROBE_DIR}*",
    keeps=True)


# Checks that a patched function still does its work (the fix itself cannot be
# seen from user space): traffic on an established TCP connection goes through
# __inet_lookup_established(); buffered and O_DIRECT writes to a FAT file system
# go through fat_write_begin/end() and fat_direct_IO().
TCP_ECHO = """python3 -c '
import socket
srv = socket.create_server(("127.0.0.1", 0))
cli = socket.create_connection(srv.getsockname())
conn, _ = srv.accept()
for i in range(200):
    cli.sendall(b"x" * 100)
    got = b""
    while len(got) < 100:
        got += conn.recv(100 - len(got))
print("tcp ok" if got == b"x" * 100 else "tcp BROKEN")
'"""

# The guest boots without networking: bring up lo (it has no ip(8)).
LOOPBACK_UP = """python3 -c '
import fcntl, socket, struct
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 1
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flags = struct.unpack_from("16sH", fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sH14x", b"lo", 0)))[1]
fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))
'"""

# A blank 1.44 MB FAT12 floppy (the guest has no mkfs.vfat): boot sector with its
# BIOS parameter block, two FATs of 9 sectors, 224 root entries.
FAT_IMAGE = "/tmp/fat.img"
FAT_MAKE = f"""python3 -c '
import struct
boot = bytearray(512)
boot[0:3] = b"\\xeb\\x3c\\x90"
boot[3:11] = b"PYKPATCH"
struct.pack_into("<HBHBHHBHHHII", boot, 11, 512, 1, 1, 2, 224, 2880, 0xF0, 9, 18, 2, 0, 0)
boot[38] = 0x29
boot[43:54] = b"NO NAME    "
boot[54:62] = b"FAT12   "
boot[510:512] = b"\\x55\\xaa"
img = bytearray(2880 * 512)
img[0:512] = boot
for fat in (1, 10):
    img[fat * 512:fat * 512 + 3] = b"\\xf0\\xff\\xff"
open("{FAT_IMAGE}", "wb").write(img)
'"""
FAT_WRITE = """python3 -c '
import mmap, os
data = os.urandom(64 * 1024)
with open("/mnt/fat/buffered", "wb") as f:
    f.write(data)
buf = mmap.mmap(-1, 8192)
buf.write(data[:8192])
fd = os.open("/mnt/fat/direct", os.O_WRONLY | os.O_CREAT | os.O_DIRECT)
os.write(fd, buf)
os.close(fd)
os.system("sync; echo 3 > /proc/sys/vm/drop_caches")
same = open("/mnt/fat/buffered", "rb").read() == data and open("/mnt/fat/direct", "rb").read() == data[:8192]
print("fat ok" if same else "fat BROKEN")
'"""


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
               INOTIFY_QUEUED_EVENT,
               note="adds a member to struct inotify_event_info; the guest check reads, while "
                    "the patch is enabled, an inotify event queued before it loaded"),
    BenchPatch("fix-task_mmu", "fs-proc-task_mmu.patch", MODULE, "real fix",
               Behaviour(PAGEMAP_UNKNOWN_IOCTL, "errno 25"),
               note="do_pagemap_cmd(): -ENOTTY for unknown pagemap ioctls"),
    BenchPatch("fix-inet_hashtables", "net-ipv4-inet_hashtables.patch", MODULE, "real fix",
               Behaviour(TCP_ECHO, "tcp ok", setup=LOOPBACK_UP, keeps=True),
               note="__inet_lookup_established(): acquire ordering of the socket refcount"),
    BenchPatch("fix-fat-inode", "fs-fat-inode.patch", MODULE, "real fix",
               Behaviour(f"rm -f /mnt/fat/*; {FAT_WRITE}", "fat ok",
                         setup=f"{FAT_MAKE} && modprobe loop && mkdir -p /mnt/fat && "
                               f"mount -o loop -t vfat {FAT_IMAGE} /mnt/fat",
                         teardown=f"umount /mnt/fat; rm -f {FAT_IMAGE}; modprobe -r vfat", keeps=True),
               targets=("fat",),
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
