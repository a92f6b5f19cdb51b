"""Refusing patches that change the layout of a struct.

Data already in the running kernel keeps its old layout: a patched function
that reads a new or moved member reads garbage.  Neither kpatch nor
klp-build notice this when only code changes; we compare every struct's
layout in the DWARF of the original and the patched object, as ``pahole``
prints it (member offsets and sizes, total size).
"""

import re
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from pykpatch.errors import KpatchError
from pykpatch.process import run

Member = Tuple[str, int, int]  # name, offset, size

_STRUCT_START = re.compile(r"^(struct|union) (\S+) \{")
_MEMBER = re.compile(r"^\s+(.*?)\s*;\s*/\*\s*(\d+)(?::\d+)?\s+(\d+)\s*\*/")
_SIZE = re.compile(r"/\* size: (\d+)")


class Layout:
    """Members and total size of one struct as pahole shows it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.members: List[Member] = []
        self.size = -1

    def key(self) -> Tuple[int, List[Member]]:
        return self.size, self.members


_ATTRIBUTE = re.compile(r"\s*__attribute__\(\(.*?\)\)\)*")


def _member_name(decl: str) -> Optional[str]:
    """The member's name; None for an unnamed nested struct or union."""
    decl = _ATTRIBUTE.sub("", decl).strip()
    if decl == "}":
        return None
    m = re.search(r"(\w+)\s*(?:\[[^\]]*\])*\s*(?::\s*\d+)?$", decl)
    if "(*" in decl:
        m = re.search(r"\(\*\s*(\w+)\)", decl)
    return m.group(1) if m else decl


def parse_pahole(text: str) -> Dict[str, Layout]:
    """Top-level structs and unions of pahole's output, by name."""
    layouts: Dict[str, Layout] = {}
    current = None
    depth = 0
    for line in text.splitlines():
        if current is None:
            m = _STRUCT_START.match(line)
            if m:
                current, depth, anonymous = Layout(f"{m.group(1)} {m.group(2)}"), 1, 0
            continue
        depth += line.count("{") - line.count("}")
        member = _MEMBER.match(line)
        if member and depth == 1:
            name = _member_name(member.group(1))
            if name is None:
                anonymous += 1
                name = f"<anonymous #{anonymous}>"
            current.members.append((name, int(member.group(2)), int(member.group(3))))
        size = _SIZE.search(line)
        if size and depth == 1:
            current.size = int(size.group(1))
        if depth <= 0:
            layouts.setdefault(current.name, current)
            current = None
    return layouts


def struct_layouts(obj: Path) -> Dict[str, Layout]:
    if not shutil.which("pahole"):
        raise KpatchError("'pahole' is not installed; install the Debian package 'dwarves'")
    return parse_pahole(run(["pahole", obj], what=f"pahole {obj.name}").stdout)


def describe_change(old: Layout, new: Layout) -> str:
    parts = []
    if old.size != new.size:
        parts.append(f"size {old.size} -> {new.size}")
    old_members = {m[0]: m for m in old.members}
    new_members = {m[0]: m for m in new.members}
    for name in sorted(new_members.keys() - old_members.keys()):
        parts.append(f"member '{name}' added at offset {new_members[name][1]}")
    for name in sorted(old_members.keys() - new_members.keys()):
        parts.append(f"member '{name}' removed")
    for name in sorted(old_members.keys() & new_members.keys(), key=lambda n: new_members[n][1]):
        if old_members[name] != new_members[name]:
            parts.append(f"member '{name}' moved from offset {old_members[name][1]} "
                         f"to {new_members[name][1]}")
    return "; ".join(parts) or "members reordered"


def layout_changes(orig: Path, patched: Path) -> List[str]:
    """One line per struct whose layout differs between the two objects."""
    before, after = struct_layouts(orig), struct_layouts(patched)
    changes = []
    for name in sorted(before.keys() & after.keys()):
        if before[name].key() != after[name].key():
            changes.append(f"{name} changes layout ({describe_change(before[name], after[name])}): "
                           "instances in the running kernel keep the old layout; keep the "
                           "struct as it is and put new state in a shadow variable (klp_shadow_*)")
    return changes
