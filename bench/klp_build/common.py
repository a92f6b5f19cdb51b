"""What the klp-build bench's scripts share: where things are kept, the target kernel."""

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
for _path in (REPO, REPO / "bench", REPO / "tests" / "vm"):  # pykpatch, benchlib, patch_path
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from benchlib import read_config, read_json, write_json  # noqa: E402,F401  (for the scripts)
from pykpatch.cache import cache_dir  # noqa: E402
from pykpatch.provider.debian import BACKPORTS_7_RELEASE  # noqa: E402

# The kernel both tools build for (the patches of the table are written for
# its source: linux-source-7.3 7.3.4-1~bpo13+1, gcc-14).
RELEASE = BACKPORTS_7_RELEASE
FIXES_DIR = HERE / "fixes"
REPORT = REPO / "docs" / "klp-build-comparison.md"


def bench_dir() -> Path:
    """``<cache>/klp-build-bench``: klp-build's tree, outputs, logs, results."""
    d = cache_dir() / "klp-build-bench"
    d.mkdir(parents=True, exist_ok=True)
    return d


def machine() -> dict:
    """nproc, CPU model, memory and load: what the times were measured on."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        cpuinfo = meminfo = ""
    model = next((l.split(":", 1)[1].strip() for l in cpuinfo.splitlines()
                  if l.startswith("model name")), "")
    mem_kb = next((int(l.split()[1]) for l in meminfo.splitlines() if l.startswith("MemTotal:")), 0)
    return {"nproc": os.cpu_count(), "cpu": model, "mem_gb": round(mem_kb / 2**20, 1),
            "loadavg": [round(x, 2) for x in os.getloadavg()]}
