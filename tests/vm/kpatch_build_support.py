"""Helpers for the VM tests of kpatch-build: build with the real CLI, load by hand.

Modules are loaded with insmod and the sysfs files directly (not with the
`kpatch` command, which has tests of its own), so these tests see exactly
what the kernel does with what kpatch-build made.
"""

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from pykpatch.kernel.livepatch import SYSFS_LIVEPATCH

PATCHES = Path(__file__).parent / "patches"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# Taint bits a locally built, unsigned livepatch module brings by itself:
# O (out-of-tree, 12), E (unsigned, 13), K (livepatch, 15).
EXPECTED_TAINT = (1 << 12) | (1 << 13) | (1 << 15)
BAD_DMESG = ("Call Trace", "BUG:", "WARNING:", "Oops", "general protection", "livepatch: failed")

# The mask /proc shows for an inotify watch on /tmp (0x100 = IN_CREATE);
# header-static-inline.patch adds IN_ISDIR (0x40000000) to what it shows.
INOTIFY_MASK = """python3 -c '
import ctypes
libc = ctypes.CDLL(None)
fd = libc.inotify_init()
libc.inotify_add_watch(fd, b"/tmp", 0x100)
info = open("/proc/self/fdinfo/%d" % fd).read()
print(info.split("mask:")[1].split()[0])
'"""


@dataclass
class Build:
    rc: int
    stdout: str
    stderr: str
    module: Optional[Path]
    report: Optional[dict]

    @property
    def name(self) -> str:
        assert self.module is not None, self.stderr
        return self.module.stem.replace("-", "_")

    def functions(self, patched_only: bool = False) -> List[str]:
        assert self.report is not None, self.stderr
        return [f["name"] for o in self.report["objects"] for f in o["functions"]
                if f["patched"] or not patched_only]


def patch_path(name: str, release: str) -> Path:
    """Test patch *name* for *release*: the kernel line's own version
    (``patches/<major>.<minor>/``) where the 6.1 patch does not apply."""
    line = ".".join(release.split(".")[:2])
    for path in (PATCHES / line / name, EXAMPLES / name, PATCHES / name):
        if path.exists():
            return path
    raise FileNotFoundError(f"no test patch {name}")


def kpatch_build(release: str, out: Path, patches: List[Path], *extra: str) -> Build:
    argv = [sys.executable, "-m", "pykpatch", "build", "-k", release, "-o", str(out),
            *extra, *[str(p) for p in patches]]
    proc = subprocess.run(argv, capture_output=True, text=True)
    module = report = None
    if proc.returncode == 0:
        module = next(out.glob("*.ko"))
        report = json.loads(module.with_suffix(".json").read_text())
    return Build(proc.returncode, proc.stdout, proc.stderr, module, report)


def wait_for(guest, condition: str, timeout: float = 30) -> None:
    """Poll a shell condition in the guest until true."""
    tries = int(timeout / 0.2)
    guest.check(f"for i in $(seq {tries}); do if {condition}; then exit 0; fi; sleep 0.2; done; exit 1",
                timeout=timeout + 30)


def load(guest, build: Build) -> None:
    remote = guest.put(build.module, f"/tmp/{build.module.name}")
    guest.check(f"insmod {remote}")
    sysfs = f"{SYSFS_LIVEPATCH}/{build.name}"
    wait_for(guest, f"[ $(cat {sysfs}/transition) = 0 ]")
    assert guest.check(f"cat {sysfs}/enabled").strip() == "1"


def unload(guest, build: Build) -> None:
    sysfs = f"{SYSFS_LIVEPATCH}/{build.name}"
    if guest.run(f"[ $(cat {sysfs}/enabled) = 1 ]").ok:
        guest.check(f"echo 0 > {sysfs}/enabled")
    wait_for(guest, f"[ ! -d {sysfs} ]")
    guest.check(f"rmmod {build.name}")


def kernel_health(guest) -> Dict[str, object]:
    """dmesg lines that mean trouble, and taint bits beyond a livepatch module's own."""
    dmesg = guest.dmesg()
    bad = [line for line in dmesg.splitlines() if any(b in line for b in BAD_DMESG)]
    taint = int(guest.check("cat /proc/sys/kernel/tainted"))
    return {"bad_dmesg": bad, "unexpected_taint": taint & ~EXPECTED_TAINT}


def exercise_module_patch(guest, b: Build, module: str) -> None:
    """Target loaded before the patch, then loaded after it; patched both times."""
    patched = f"{SYSFS_LIVEPATCH}/{b.name}/{module}/patched"
    guest.check(f"modprobe {module}")
    load(guest, b)
    assert guest.check(f"cat {patched}").strip() == "1"
    unload(guest, b)
    guest.check(f"modprobe -r {module}")
    assert module not in guest.check("cut -d' ' -f1 /proc/modules").split()
    load(guest, b)
    guest.check(f"modprobe {module}")
    wait_for(guest, f"[ $(cat {SYSFS_LIVEPATCH}/{b.name}/transition) = 0 ]")
    assert guest.check(f"cat {patched}").strip() == "1"
    unload(guest, b)
    guest.check(f"modprobe -r {module}")
