#!/usr/bin/env python3
"""Benchmark ``kpatch-build --debian-update`` on a whole upstream stable update
(run by hand, not a test) and write docs/debian-update-bench.md.

Default: Debian's 6.1.192-1 for 6.1.0-54-cloud-amd64 (built from 6.1.190-1):
two upstream stable releases, 6.1.191 and 6.1.192.  The build is timed with
the target prepared and both source tarballs' hashes cached (a first run
also downloads and hashes them: that time is printed separately); then the
module is loaded in the guest running that kernel, and dmesg is checked.

Usage: python3 bench/bench_debian_update.py [-k RELEASE] [--version VERSION] [--reuse]

--reuse: take the module and the timing of the last run (``timing.json`` beside
it) and only load it and write the document.
"""

import argparse
import json
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from benchlib import BAD_DMESG  # noqa: E402  (bench/ is this script's own folder)
from pykpatch.cache import cache_dir  # noqa: E402
from pykpatch.kernel.livepatch import SYSFS_LIVEPATCH  # noqa: E402
from pykpatch.provider.debian import DebianKernel  # noqa: E402
from pykpatch.testbed.vm import Guest  # noqa: E402

DOC = REPO / "docs" / "debian-update-bench.md"


def run_build(release: str, version: str, out: Path) -> "tuple[float, subprocess.CompletedProcess]":
    argv = [sys.executable, "-m", "pykpatch", "build", "-k", release, "--debian-update", version,
            "-o", str(out)]
    start = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO)
    return time.monotonic() - start, proc


def build_timed(release: str, version: str, out: Path) -> "tuple[Optional[float], float]":
    """Build into a clean *out*; (seconds, seconds of a first run that also downloaded and
    hashed the sources, else 0), recorded in ``timing.json``."""
    if out.exists():
        for f in out.iterdir():
            f.unlink()
    first = 0.0
    seconds, proc = run_build(release, version, out)
    if "hashing the files" in proc.stderr:
        first, (seconds, proc) = seconds, run_build(release, version, out)
    print(proc.stdout[-3000:])
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        if not list(out.glob("*.json")):
            return None, first
    (out / "timing.json").write_text(json.dumps({"seconds": seconds, "first": first}) + "\n")
    return seconds, first


# Kinds of refusal, by a phrase of the reason (the report's wording).
KINDS = [
    ("does not compile with the patch", "does not compile without the rest of its commit"),
    ("changes layout", "a struct's layout changes"),
    ("__init", "changed __init code or data (already ran at boot)"),
    ("__exit", "changed __exit code"),
    ("initial value of data changed", "changed initial value of data"),
    ("no __fentry__", "a changed function ftrace cannot redirect"),
    ("key that lives in module", "a static branch or call key in a module"),
    (".static_call_sites", "a static branch or call key in a module"),
    ("entries changed", "changed entries of a table the kernel read at boot"),
    ("binding changed", "a symbol's binding changed"),
    ("the source does not match", "the source does not match the running kernel"),
    ("has no ", "not in this kernel's binary (lib.a member not linked)"),
    ("nothing to redirect", "only adds functions nothing calls"),
]


def refusal_kinds(why: str) -> List[str]:
    """The kinds of problem one refused file has (each once)."""
    found = [kind for needle, kind in KINDS if needle in why]
    return sorted(set(found)) or ["other: " + " ".join(why.split()[:10])]


def load_in_guest(kernel: DebianKernel, module: Path) -> Dict[str, object]:
    name = module.stem.replace("-", "_")
    sysfs = f"{SYSFS_LIVEPATCH}/{name}"
    with Guest(kernel) as guest:
        guest.check("dmesg -C")
        start = time.monotonic()
        loaded = guest.run(f"insmod {guest.put(module, '/tmp/' + module.name)}")
        if not loaded.ok:
            return {"loaded": False, "error": loaded.out.strip()[-500:]}
        guest.check(f"for i in $(seq 300); do [ $(cat {sysfs}/transition) = 0 ] && exit 0; "
                    "sleep 0.2; done; exit 1", timeout=120)
        seconds = time.monotonic() - start
        enabled = guest.check(f"cat {sysfs}/enabled").strip() == "1"
        objects = int(guest.check(f"find {sysfs} -mindepth 1 -maxdepth 1 -type d | wc -l"))
        bad = [line for line in guest.dmesg().splitlines() if any(b in line for b in BAD_DMESG)]
        guest.check(f"echo 0 > {sysfs}/enabled")
        guest.check(f"for i in $(seq 300); do [ -d {sysfs} ] || exit 0; sleep 0.2; done; exit 1",
                    timeout=120)
        guest.check(f"rmmod {name}")
        return {"loaded": True, "enabled": enabled, "seconds": seconds, "bad_dmesg": bad,
                "klp_objects": objects}


def write_doc(release: str, version: str, current: str, seconds: float, first_seconds: float,
              update: dict, reports: List[dict], guest: Dict[str, object], host: str) -> None:
    counts = update["counts"]
    files = update["files"]
    patched = [f for f in files if f["status"] == "patched"]
    functions = [fn for f in patched for fn in f.get("functions", [])]
    replaced = [fn for fn in functions if fn.get("patched")]
    refused = [f for f in files if f["status"] in ("refused", "needs-commit")]
    kinds = Counter(kind for f in refused for kind in (
        refusal_kinds(f["why"]) if f["status"] == "refused"
        else ["needs the rest of its commit (a header)"]))
    lines = [
        "# `--debian-update` on a whole upstream stable update",
        "",
        f"Generated by `bench/bench_debian_update.py` on {time.strftime('%Y-%m-%d')}; {host}.",
        "",
        f"`kpatch-build -k {release} --debian-update {version}`: Debian's {version} for a kernel "
        f"built from {current}.",
        "",
        "| | |",
        "| --- | --- |",
        f"| build time (target prepared, source hashes cached) | {seconds / 60:.1f} min |",
        f"| first run (also downloads and hashes both sources) | {first_seconds / 60:.1f} min |"
        if first_seconds else "| first run | (not measured: the sources were cached) |",
        f"| changed files | {len(files)} |",
        f"| changelog items / CVEs | {len(update['changelog'])} / {len(update['cves'])} |",
        f"| files in the module | {len(patched)} |",
        f"| functions in the module | {len(functions)} ({len(replaced)} redirected, "
        f"{len(functions) - len(replaced)} new or included) |",
        f"| CVEs whose changelog item matched a file in the module | {len(update['cves_in_module'])} |",
        f"| partial | {'yes' if update['partial'] else 'no'} |",
        "",
        "Files by status:",
        "",
        "| status | files |",
        "| --- | --- |",
    ] + [f"| {status} | {n} |" for status, n in counts.items()] + [
        "",
        "Refused and needs-commit files by kind of problem (a file may have several):",
        "",
        "| problem | files |",
        "| --- | --- |",
    ] + [f"| {kind} | {n} |" for kind, n in kinds.most_common()] + [
        "",
        "Loaded in the guest running that kernel (QEMU, TCG):",
        "",
    ]
    if guest.get("loaded"):
        lines += [f"- enabled: {guest['enabled']}, transition finished in {guest['seconds']:.1f} s",
                  f"- klp objects (vmlinux and modules): {guest['klp_objects']}",
                  f"- dmesg lines that mean trouble: {len(guest['bad_dmesg'])}"]
        lines += [f"  - `{line}`" for line in guest["bad_dmesg"][:10]]
    else:
        lines.append(f"- did not load: `{guest.get('error')}`")
    lines += ["", "Refused and needs-commit files (the report's reason, shortened):", ""]
    # (runs before pykpatch 0.1's refusals dropped the work directory's path)
    lines += [f"- `{f['path']}`: " + re.sub(r"/tmp/kpatch-build-[^/]+/patched/\S+: ", "",
                                          f["why"])[:300].replace("\n", " ")
              for f in refused]
    DOC.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", "--kernel", default="6.1.0-54-cloud-amd64")
    parser.add_argument("--version", default="6.1.192-1")
    parser.add_argument("--reuse", action="store_true",
                        help="load the last run's module instead of building again")
    args = parser.parse_args()
    kernel = DebianKernel(args.kernel)
    out = cache_dir() / "bench-debian-update" / f"{args.kernel}_{args.version}"
    timing = out / "timing.json"
    if args.reuse and timing.is_file():
        seconds, first = (json.loads(timing.read_text())[k] for k in ("seconds", "first"))
        print(f"reusing the build of {out} ({seconds / 60:.1f} min)")
    else:
        seconds, first = build_timed(args.kernel, args.version, out)
        if seconds is None:
            return 1
    data = json.loads(next(out.glob("livepatch-*.json")).read_text())
    modules = list(out.glob("*.ko"))
    loaded = out / "guest.json"
    if args.reuse and loaded.is_file():
        guest = json.loads(loaded.read_text())
    else:
        guest = load_in_guest(kernel, modules[0]) if modules else {"loaded": False,
                                                                   "error": "no module was built"}
        loaded.write_text(json.dumps(guest) + "\n")
    cpu = subprocess.run(["sh", "-c", "nproc; grep -m1 'model name' /proc/cpuinfo"],
                         capture_output=True, text=True).stdout.split("\n")
    host = f"{cpu[0]} cores ({cpu[1].split(':')[-1].strip()})"
    write_doc(args.kernel, args.version, data["update"]["from"], seconds, first, data["update"],
              data["objects"], guest, host)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
