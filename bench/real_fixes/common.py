"""What the real-fixes corpus is made of, and where it is kept (shared by its scripts)."""

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
for _path in (REPO, REPO / "bench"):  # pykpatch, and benchlib
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from benchlib import read_json, write_json  # noqa: E402,F401  (for the scripts)
from pykpatch.cache import cache_dir  # noqa: E402

# The corpora: the kernel the patches are built for, and the two Debian
# source versions whose difference is the corpus (the older is what the
# kernel was built from).  REAL_FIXES_LINE picks one (default 6.1).
CORPORA = {
    "6.1": dict(release="6.1.0-54-cloud-amd64", old="6.1.190-1", new="6.1.192-1",
                report="real-fixes.md", cache="real-fixes"),
    "6.12": dict(release="6.12.117+deb13-cloud-amd64", old="6.12.117-1", new="6.12.118-1",
                 report="real-fixes-6.12.md", cache="real-fixes-6.12"),
}
LINE = os.environ.get("REAL_FIXES_LINE", "6.1")
if LINE not in CORPORA:
    sys.exit(f"REAL_FIXES_LINE={LINE}: no such corpus (known: {', '.join(CORPORA)})")
RELEASE = CORPORA[LINE]["release"]
OLD_VERSION = CORPORA[LINE]["old"]
NEW_VERSION = CORPORA[LINE]["new"]
SOURCE_PACKAGE = f"linux-source-{LINE}"

REPORT = REPO / "docs" / CORPORA[LINE]["report"]


def corpus_dir() -> Path:
    """``<cache>/real-fixes[-LINE]``: tarballs, changed files, patches, results."""
    d = cache_dir() / CORPORA[LINE]["cache"]
    d.mkdir(parents=True, exist_ok=True)
    return d


def manifest_path() -> Path:
    return corpus_dir() / "corpus.json"


def results_path() -> Path:
    return corpus_dir() / "results.json"
