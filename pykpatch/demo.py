"""The README's demo: build a live patch for a Debian kernel and apply it in a VM.

1. ``kpatch-build`` the example patch for the Debian 6.1 cloud kernel
   (packages fetched and cached on the first run);
2. boot that very kernel in QEMU with a small Debian root;
3. show ``/proc/cmdline``, ``kpatch load`` the module, show it again,
   ``kpatch unload`` it, and show that the kernel is back as it was.
"""

import argparse
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

from pykpatch.build.pipeline import BuildOptions, Progress, build, default_logfile
from pykpatch.errors import KpatchError
from pykpatch.provider.debian import DebianKernel, default_release
from pykpatch.testbed.vm import Guest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cmdline-string.patch"


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _show(guest: Guest, cmd: str) -> None:
    print(f"guest# {cmd}")
    print(guest.run(cmd).out.rstrip(), flush=True)


def _wheel(dest: Path) -> Path:
    repo = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(dest), str(repo)], check=True)
    return next(dest.glob("pykpatch-*.whl"))


def run_demo(patch: Path, release: str) -> None:
    work = Path(tempfile.mkdtemp(prefix="pykpatch-demo-"))
    _say(f"kpatch-build {patch.name} for Debian kernel {release}")
    result = build(BuildOptions(patches=[patch], release=release, output=work),
                   Progress(), default_logfile(None))
    print(f"built {result.module.name} in {result.seconds:.1f} s")
    _say(f"booting {release} in QEMU (software emulation)")
    with Guest(DebianKernel(release)) as guest:
        print(f"guest ready in {guest.boot_seconds:.1f} s")
        wheel = _wheel(work)
        guest.put(wheel, f"/root/{wheel.name}")
        guest.check(f"python3 -m pip install -q --no-deps --break-system-packages /root/{wheel.name}",
                    timeout=300)
        remote = guest.put(result.module, f"/root/{result.module.name}")
        _say("before the patch")
        _show(guest, "uname -r; cat /proc/cmdline")
        _say("kpatch load")
        _show(guest, f"kpatch load {remote}")
        _show(guest, "cat /proc/cmdline")
        _show(guest, "kpatch list")
        _say("kpatch unload")
        name = result.module.stem.replace("-", "_")
        _show(guest, f"kpatch unload {name}")
        _show(guest, "cat /proc/cmdline")
        _show(guest, "dmesg | grep -E 'livepatch|pykpatch' | tail -n 8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch", type=Path, default=EXAMPLE)
    parser.add_argument("-k", "--kernel", help="Debian kernel release (default: the pinned "
                        "6.1 cloud release while the archive has it, else the newest of its line)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        run_demo(args.patch, args.kernel or default_release())
    except KpatchError as err:
        print(f"demo: error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
