"""What the benches share: their results files and small readers."""

import json
import os
import re
import time
from pathlib import Path
from typing import Any, Dict


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
