"""Stage: index each object -- owners, children, prefixes, fentry calls.

Under ``-ffunction-sections -fdata-sections`` every function and object
gets its own section, named after it; that symbol is the section's *owner*
and everything the differ decides about the symbol applies to the section.
"""

import re
from typing import Dict, Iterable, List, Optional

from pykpatch.differ.state import DiffObject
from pykpatch.elf.constants import R_X86_64_NONE, R_X86_64_PC32, R_X86_64_PLT32, SHT_RELA
from pykpatch.elf.model import ElfFile, Section, Symbol
from pykpatch.kernel.sections import FENTRY

_FUNC_PREFIXES = (".text.", ".text.unlikely.", ".text.hot.", ".text.startup.")
_DATA_PREFIXES = (".data.", ".data.rel.", ".data.rel.ro.", ".data.rel.local.",
                  ".data.rel.ro.local.", ".rodata.", ".bss.", ".tbss.", ".tdata.")
_CHILD = re.compile(r"^(?P<parent>.+?)\.(?P<kind>cold|part)(\.\d+)?$")
PFX = "__pfx_"


def index_object(elf: ElfFile) -> DiffObject:
    """Build the :class:`DiffObject` indices for one object."""
    obj = DiffObject(elf=elf, path=elf.path)
    for sec in elf.sections:
        if sec.type == SHT_RELA and sec.info is not None:
            obj.rela_of[sec.info] = sec
    by_section: Dict[Section, List[Symbol]] = {}
    for sym in elf.symbols[1:]:
        if sym.section is None:
            continue
        if sym.is_section:
            obj.section_symbol.setdefault(sym.section, sym)
        elif sym.is_func or sym.is_object:
            by_section.setdefault(sym.section, []).append(sym)
    for sec, syms in by_section.items():
        owner = _find_owner(sec, syms)
        if owner is not None:
            obj.owner[sec] = owner
    _link_prefixes(obj, by_section)
    _link_children(obj)
    _find_fentry_calls(obj)
    return obj


def _expected_section_names(sym: Symbol) -> Iterable[str]:
    prefixes = _FUNC_PREFIXES if sym.is_func else _DATA_PREFIXES
    names = [sym.name]
    child = _CHILD.match(sym.name)
    if child and child.group("kind") == "cold":
        # GCC puts foo.cold into .text.unlikely.foo
        names.append(child.group("parent"))
    return (p + n for p in prefixes for n in names)


def _find_owner(sec: Section, syms: List[Symbol]) -> Optional[Symbol]:
    real = [s for s in syms if not s.name.startswith(PFX)]
    prefix_len = max((s.size for s in syms if s.name.startswith(PFX) and s.value == 0), default=0)
    for sym in real:
        if sym.value in (0, prefix_len) and sec.name in _expected_section_names(sym):
            return sym
    # A lone symbol at the start of a section owns it whatever its name.
    if len(real) == 1 and real[0].value in (0, prefix_len) and not sec.name.startswith(
            (".init.", ".exit.")):
        return real[0]
    return None


def _link_prefixes(obj: DiffObject, by_section: dict) -> None:
    for syms in by_section.values():
        for pfx in (s for s in syms if s.name.startswith(PFX) and s.is_func):
            target = next((s for s in syms if s.name == pfx.name[len(PFX):]), None)
            if target is not None:
                obj.prefix_of[target] = pfx


def _link_children(obj: DiffObject) -> None:
    funcs = {s.name: s for s in obj.elf.symbols if s.is_func and s.section is not None}
    for sym in funcs.values():
        match = _CHILD.match(sym.name)
        if not match:
            continue
        parent = funcs.get(match.group("parent"))
        if parent is not None and parent is not sym:
            obj.parent[sym] = parent
            obj.children.setdefault(parent, []).append(sym)


def is_cold_part(obj: DiffObject, sym: Symbol) -> bool:
    """``foo.cold``: code split out of foo that jumps back into it."""
    match = _CHILD.match(sym.name)
    return bool(match) and match.group("kind") == "cold" and sym in obj.parent


def _find_fentry_calls(obj: DiffObject) -> None:
    """A function is traceable (so patchable) when it starts by calling
    ``__fentry__``: its first relocation targets it."""
    for sym in obj.elf.symbols:
        if not sym.is_func or sym.section is None:
            continue
        relas = obj.function_relas(sym)
        first = min(relas, key=lambda r: r.offset, default=None)
        if (first is not None and first.symbol.name == FENTRY
                and first.type in (R_X86_64_NONE, R_X86_64_PC32, R_X86_64_PLT32)):
            obj.has_fentry.add(sym)
