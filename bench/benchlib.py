"""What the benches share: their results files and small readers."""

import json
import logging
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator

log = logging.getLogger("pykpatch")

# Guest dmesg lines that mean trouble after a module loads (the VM tests' list,
# tests/vm/kpatch_build_support.BAD_DMESG, and what a bench also wants to see).
BAD_DMESG = ("Call Trace", "BUG:", "WARNING:", "Oops", "general protection", "livepatch: failed",
             "kernel BUG", "RIP:", "Unable to handle", "unknown symbol", "Unknown symbol",
             "disagrees about version", "invalid module format")

# What a cold build may share with the main cache: downloads, the apt state and the
# debootstrapped build roots -- never an unpacked or prepared tree.
COLD_CACHE_SHARES = ("debs", "apt", "buildroot")


def read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def write_json(path: Path, data: Any) -> None:
    """Write atomically, so an interrupted run never leaves half a file."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def read_config(path: Path) -> Dict[str, str]:
    """A kernel .config's set options, without the CONFIG_ prefix."""
    values = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^CONFIG_([A-Za-z0-9_]+)=(.*)$", line)
        if m:
            values[m.group(1)] = m.group(2).strip('"')
    return values


class ResultsFile:
    """A bench's results.json: per patch a record, and the runs' wall times.
    Saved after each step, so that a rerun does only what is missing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = read_json(path, {})
        self.data.setdefault("patches", {})
        self.data.setdefault("runs", [])

    def get(self, name: str) -> dict:
        return self.data["patches"].setdefault(name, {})

    def save(self) -> None:
        write_json(self.path, self.data)

    def record_run(self, phase: str, seconds: float, count: int, **extra: Any) -> None:
        self.data["runs"].append({"phase": phase, "seconds": round(seconds, 1), "count": count,
                                  "at": time.strftime("%Y-%m-%d %H:%M:%S"), **extra})
        self.save()


@contextmanager
def cold_cache(main: Path) -> Iterator[Path]:
    """A fresh pykpatch cache for a cold build (unpack, prepare, build), deleted after."""
    fresh = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    try:
        for shared in COLD_CACHE_SHARES:
            if (main / shared).exists():
                (fresh / shared).symlink_to(main / shared)
        yield fresh
    finally:
        shutil.rmtree(fresh, ignore_errors=True)


def kpatch_build_error(output: str) -> str:
    """What kpatch-build said after 'kpatch-build: error: ', up to its 'full log' line."""
    m = re.search(r"kpatch-build: error: (.*?)(?:\nkpatch-build: full log:|\Z)", output, re.S)
    return (m.group(1) if m else output).strip()


class GuestSession:
    """One guest of *kernel*, booted when first needed and kept for the next module;
    close() it after trouble, and the next ensure() boots a fresh one."""

    def __init__(self, kernel: Any, workdir: Path) -> None:
        self.kernel = kernel
        self.workdir = workdir
        self.guest: Any = None
        self.boots = 0

    def ensure(self) -> Any:
        from pykpatch.testbed.vm import Guest
        if self.guest is None:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.guest = Guest(self.kernel, workdir=self.workdir)
            self.guest.start()
            self.boots += 1
        return self.guest

    def close(self) -> None:
        if self.guest is not None:
            try:
                self.guest.close()
            except Exception as err:  # noqa: BLE001 - a dying guest fails in many ways
                log.warning("closing the guest: %s", err)
            self.guest = None
