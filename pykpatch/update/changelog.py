"""Debian changelog items of a kernel update, and the changed files they name.

A kernel security update's ``changelog.Debian.gz`` lists one item per fix,
usually ``subsystem: what was fixed (CVE-YYYY-NNNNN)``; a stable update
nests the upstream commit subjects below ``New upstream stable update:``.
Nothing in an item names a file, so an item is matched to a file by the
functions it names (``coalesce_t2()``) or, failing that, by its most
specific subsystem prefix (``smb: client:`` -> a ``client`` directory;
``io_uring/io-wq:`` -> ``io-wq.c``).  An item that matches nothing is still
reported, with the update.
"""

import re
from dataclasses import dataclass
from typing import Iterable, List, Sequence, Set

from pykpatch.provider.archive import version_key

_ENTRY_RE = re.compile(r"^(?P<source>[a-z0-9][a-z0-9.+-]*) \((?P<version>[^)\s]+)\)")
_ITEM_RE = re.compile(r"^(?P<indent>\s+)[*-] (?P<text>.*)$")
_CVE_RE = re.compile(r"CVE-\d{4}-\d{4,}")
_FUNCTION_RE = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)\(\)")
# "subsystem: subsystem: summary": prefixes are short words before a colon.
_PREFIX_RE = re.compile(r"^((?:\[[^\]]+\]\s*)?(?:[A-Za-z0-9_./ -]{1,40}?:\s+)+)")


@dataclass(frozen=True)
class Item:
    """One changelog line (continuations joined) of one Debian version."""

    version: str
    text: str

    @property
    def cves(self) -> List[str]:
        return sorted(set(_CVE_RE.findall(self.text)))

    @property
    def functions(self) -> Set[str]:
        return set(_FUNCTION_RE.findall(self.text))

    @property
    def prefixes(self) -> List[str]:
        """Subsystem words before the summary, most general first (``smb``, ``client``)."""
        m = _PREFIX_RE.match(re.sub(r"^\[[^\]]+\]\s*", "", self.text))
        if not m:
            return []
        words = re.split(r"[:/\s]+", m.group(1))
        return [w.lower() for w in words if w]

    def names_file(self, path: str, changed_functions: Iterable[str] = ()) -> bool:
        """Does this item plausibly describe the change of *path*?"""
        named = self.functions
        if named:
            return bool(named & set(changed_functions))
        prefixes = self.prefixes
        if not prefixes:
            return False
        parts = path.split("/")
        stem = parts[-1].rsplit(".", 1)[0]
        components = {_norm(p) for p in parts[:-1]} | {_norm(stem)}
        return _norm(prefixes[-1]) in components


def _norm(word: str) -> str:
    return word.lower().replace("-", "_")


def items_between(text: str, after: str, upto: str) -> List[Item]:
    """Items of the entries newer than *after* and no newer than *upto*, newest first."""
    low, high = version_key(after), version_key(upto)
    items: List[Item] = []
    version = None
    current: List[str] = []
    indent = 0

    def flush() -> None:
        if version is not None and current:
            items.append(Item(version, " ".join(current)))
        current.clear()

    for line in text.splitlines():
        entry = _ENTRY_RE.match(line)
        if entry:
            flush()
            key = version_key(entry["version"])
            version = entry["version"] if low < key <= high else None
            continue
        if version is None:
            continue
        item = _ITEM_RE.match(line)
        if item and not line.startswith(" -- "):
            flush()
            current.append(item["text"].strip())
            indent = len(item["indent"])
        elif current and line.strip() and len(line) - len(line.lstrip()) > indent:
            current.append(line.strip())
        else:
            flush()
    flush()
    return [i for i in items if not _is_heading(i.text)]


def _is_heading(text: str) -> bool:
    # "New upstream stable update:" and the URL line below it say nothing of a file.
    return text.endswith(":") or "://" in text


def cves_of(items: Sequence[Item]) -> List[str]:
    return sorted({cve for item in items for cve in item.cves}, key=_cve_key)


def _cve_key(cve: str) -> tuple:
    _, year, number = cve.split("-")
    return (int(year), int(number))
