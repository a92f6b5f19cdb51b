#!/usr/bin/env python3
"""Time the differ over the conformance corpus and the vmlinux symtab reader.

Not a test: prints numbers.  Goals: whole corpus < 8 s, one large pair
< 1 s, the Debian dbg vmlinux .symtab with names well under 1 s.

usage: bench/bench_differ.py [--corpus DIR] [--vmlinux PATH]
"""

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pykpatch.differ.driver import diff_objects  # noqa: E402
from pykpatch.differ.state import Options  # noqa: E402
from pykpatch.elf.symtab import read_symbol_table  # noqa: E402
from pykpatch.elf.writer import serialize_elf  # noqa: E402
from pykpatch.errors import KpatchError  # noqa: E402

DEFAULT_CORPUS = REPO.parent / "shared" / "conformance" / "kpatch-unit-x86_64"
DEFAULT_VMLINUX = Path("/usr/lib/debug/boot")


def bench_corpus(corpus: Path) -> None:
    cases = json.loads((corpus / "expectations.json").read_text())["cases"]
    timings = []
    start = time.perf_counter()
    for case in cases:
        t0 = time.perf_counter()
        try:
            result = diff_objects(str(corpus / case["orig"]), str(corpus / case["patched"]),
                                  Options(struct_sizes=case["struct_sizes"]))
            if result.output is not None:
                serialize_elf(result.output)
        except KpatchError:
            pass
        size = (corpus / case["orig"]).stat().st_size
        timings.append((time.perf_counter() - t0, case["case"], size))
    total = time.perf_counter() - start
    print(f"corpus: {len(cases)} pairs in {total:.2f} s (goal < 8 s)")
    for seconds, name, size in sorted(timings, reverse=True)[:5]:
        print(f"  {seconds:6.3f} s  {name} ({size / 1e6:.1f} MB per object; goal < 1 s)")


def bench_vmlinux(path: Path) -> None:
    for attempt in range(3):
        t0 = time.perf_counter()
        symbols = read_symbol_table(path)
        print(f"vmlinux symtab: {len(symbols)} symbols with names in "
              f"{time.perf_counter() - t0:.3f} s (run {attempt + 1}; goal well under 1 s)")


def find_vmlinux(explicit: "str | None") -> "Path | None":
    if explicit:
        return Path(explicit)
    for candidate in [Path("/tmp/dbg/usr/lib/debug/boot"), DEFAULT_VMLINUX]:
        found = sorted(candidate.glob("vmlinux-*")) if candidate.is_dir() else []
        if found:
            return found[-1]
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    parser.add_argument("--vmlinux", help="a vmlinux with .symtab (default: look for the dbg one; "
                        "unpack the linux-image-*-dbg .deb with dpkg-deb -x)")
    args = parser.parse_args()
    bench_corpus(Path(args.corpus))
    vmlinux = find_vmlinux(args.vmlinux)
    if vmlinux is None:
        print("vmlinux: not found, pass --vmlinux")
    else:
        bench_vmlinux(vmlinux)
    return 0


if __name__ == "__main__":
    sys.exit(main())
