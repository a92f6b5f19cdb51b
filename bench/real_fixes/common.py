"""What the real-fixes corpus is made of, and where it is kept (shared by its scripts)."""

import json
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pykpatch.cache import cache_dir  # noqa: E402

# The kernel the patches are built for, and the two Debian source versions
# whose difference is the corpus: 6.1.190-1 is what 6.1.0-54 was built from.
RELEASE = "6.1.0-54-cloud-amd64"
OLD_VERSION = "6.1.190-1"
NEW_VERSION = "6.1.192-1"
SOURCE_PACKAGE = "linux-source-6.1"

REPORT = REPO / "docs" / "real-fixes.md"


def corpus_dir() -> Path:
    """``<cache>/real-fixes``: tarballs, changed files, patches, results."""
    d = cache_dir() / "real-fixes"
    d.mkdir(parents=True, exist_ok=True)
    return d


def manifest_path() -> Path:
    return corpus_dir() / "corpus.json"


def results_path() -> Path:
    return corpus_dir() / "results.json"


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
