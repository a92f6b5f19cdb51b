"""Stage: point relocations at symbols, not at sections.

Compilers often write ``call .text.foo+0x10-4`` or ``.quad .data.bar+8``.
The running kernel has no section symbols, and comparing such references
across two objects only works once they name the function or variable
they land in; so every section-symbol relocation whose target lies inside
a symbol is rewritten to ``symbol + (addend - symbol.value)``.  References
into places without symbols (strings, ``.L`` data, alternatives
replacement code) keep their section symbol.
"""

import bisect
from typing import Dict, List, Optional, Tuple

from pykpatch.differ.state import DiffObject
from pykpatch.differ.x86 import InsnIndex, pc_relative_adjust
from pykpatch.elf.constants import PC_RELATIVE_RELOCS
from pykpatch.elf.model import Rela, Section, Symbol


def normalize_section_references(obj: DiffObject) -> None:
    """Rewrite *obj*'s section-symbol relocations in place (see module doc)."""
    finder = _SymbolFinder(obj)
    for target, rela_sec in obj.rela_of.items():
        insns: Optional[InsnIndex] = None
        for rela in rela_sec.relas:
            if not rela.symbol.is_section or rela.symbol.section is None:
                continue
            if target.is_text and rela.type in PC_RELATIVE_RELOCS and insns is None:
                insns = InsnIndex(target.data)
            _retarget(rela, target, insns, finder)


def _retarget(rela: Rela, where: Section, insns: Optional[InsnIndex], finder: "_SymbolFinder") -> None:
    sec = rela.symbol.section
    assert sec is not None
    if sec.is_strings:
        return
    owner = finder.owner_of(sec)
    if owner is not None:
        rela.symbol = owner
        rela.addend -= owner.value
        return
    adjust = 0
    if rela.type in PC_RELATIVE_RELOCS and where.is_text:
        adjust = pc_relative_adjust(where.data, rela.offset, insns)
    sym = finder.containing(sec, rela.addend + adjust)
    if sym is not None:
        rela.symbol = sym
        rela.addend -= sym.value


class _SymbolFinder:
    """Which function/object covers an offset of a section."""

    def __init__(self, obj: DiffObject) -> None:
        self._obj = obj
        self._by_section: Dict[Section, Tuple[List[int], List[Symbol]]] = {}
        grouped: Dict[Section, List[Symbol]] = {}
        for sym in obj.elf.symbols:
            if sym.section is not None and (sym.is_func or sym.is_object):
                grouped.setdefault(sym.section, []).append(sym)
        for sec, syms in grouped.items():
            syms.sort(key=lambda s: (s.value, -s.size))
            self._by_section[sec] = ([s.value for s in syms], syms)

    def owner_of(self, sec: Section) -> Optional[Symbol]:
        return self._obj.owner.get(sec)

    def containing(self, sec: Section, offset: int) -> Optional[Symbol]:
        starts, syms = self._by_section.get(sec, ([], []))
        i = bisect.bisect_right(starts, offset) - 1
        while i >= 0:
            sym = syms[i]
            if sym.value <= offset < sym.value + sym.size:
                return sym
            if sym.value + sym.size <= offset and sym.size:
                i -= 1
                continue
            i -= 1
        return None
