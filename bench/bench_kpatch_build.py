#!/usr/bin/env python3
"""Benchmark kpatch-build on the Debian 6.1 cloud kernel (run by hand, not a test).

  cold       a fresh cache holding only the downloaded .debs: unpack the
             source and packages, prepare the tree, list the objects,
             then build the one-file example patch;
  warm       the same build again, everything prepared;
  five-file  a warm build of a patch touching five files.

Usage: python3 bench/bench_kpatch_build.py [--skip-cold] [-k RELEASE]
The downloads come from the normal cache (~/.cache/pykpatch/debs); the cold
run uses a temporary cache that links to them (and to the apt lists and the
build roots, made once per Debian release: their cost is not in the cold
figure), deleted at the end.  Leave a
few minutes between runs: right after a tree is deleted, ext4 creates files
several times more slowly (docs/kpatch-build.md, "the cold build").
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchlib import cold_cache  # noqa: E402  (bench/ is this script's own folder)
from pykpatch.provider.debian import default_release  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
ONE = REPO / "examples" / "cmdline-string.patch"
FIVE = REPO / "tests" / "vm" / "patches" / "five-files.patch"


def timed_build(release: str, cache: Path, patch: Path) -> float:
    out = Path(tempfile.mkdtemp(prefix="bench-kb-"))
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pykpatch", "build", "-k", release, "--cache-dir",
                           str(cache), "-o", str(out), str(patch)], capture_output=True, text=True)
    elapsed = time.monotonic() - start
    shutil.rmtree(out)
    if proc.returncode != 0:
        sys.exit(f"kpatch-build failed:\n{proc.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-cold", action="store_true")
    parser.add_argument("-k", "--kernel", help="release (default: the pinned 6.1 cloud release, "
                        "or the newest of its line once it is gone)")
    args = parser.parse_args()
    release = args.kernel or default_release()
    main_cache = Path(os.environ.get("PYKPATCH_CACHE", Path.home() / ".cache" / "pykpatch"))
    print(f"kpatch-build, {release}, {os.cpu_count()} cores")
    if not args.skip_cold:
        with cold_cache(main_cache) as cache:
            print(f"  cold (unpack + prepare + build): {timed_build(release, cache, ONE):6.1f} s")
            print(f"  warm, same cache:                {timed_build(release, cache, ONE):6.1f} s")
    print(f"  warm one-file patch:             {timed_build(release, main_cache, ONE):6.1f} s")
    if release.startswith("6.1.0-"):  # (the five-file patch is written for 6.1's source)
        print(f"  warm five-file patch:            {timed_build(release, main_cache, FIVE):6.1f} s")


if __name__ == "__main__":
    main()
