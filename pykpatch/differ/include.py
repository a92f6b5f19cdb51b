"""Stage: choose what goes into the output object.

The patch starts from the changed functions and the new global symbols;
including a section pulls in what its relocations point at.  A symbol
that is SAME is included *without* its section: the output refers to the
kernel's copy instead of carrying a duplicate.
"""

from typing import List, Optional, Tuple

from pykpatch.differ.bundle import is_cold_part
from pykpatch.differ.state import DiffState, Status
from pykpatch.elf.constants import STB_LOCAL
from pykpatch.elf.model import Rela, Section, Symbol
from pykpatch.kernel.sections import CALLBACK_SECTION_PREFIXES


def include_changes(state: DiffState) -> None:
    """Fill ``state.included_sections``/``included_symbols``."""
    for sym in _starting_points(state):
        _include_symbol(state, sym, None)


def has_callbacks(state: DiffState) -> bool:
    """Does the patched object declare patch callbacks?"""
    return any(s.name.startswith(CALLBACK_SECTION_PREFIXES) for s in state.patched.elf.sections)


def _starting_points(state: DiffState) -> List[Symbol]:
    start = []
    # Callback tables go out whole; their section symbols pull them in.
    for sec in state.patched.elf.sections:
        secsym = state.patched.section_symbol.get(sec)
        if sec.name.startswith(CALLBACK_SECTION_PREFIXES) and secsym is not None:
            start.append(secsym)
    for sym in state.patched.elf.symbols:
        status = state.status_of(sym)
        if sym.is_func and status is Status.CHANGED:
            start.append(sym)
        elif status is Status.NEW and sym.bind != STB_LOCAL and sym.section is not None:
            start.append(sym)
    return start


def _include_symbol(state: DiffState, sym: Symbol, referrer: "Symbol | None") -> None:
    # An explicit stack: call graphs in big objects are deep.
    stack = [(sym, referrer)]
    while stack:
        sym, referrer = stack.pop()
        if sym in state.included_symbols:
            continue
        state.included_symbols.add(sym)
        if referrer is not None and sym.is_func and state.status_of(sym) is Status.NEW:
            state.reasons.setdefault(sym, f"new, referenced by {referrer.name}")
        prefix = state.patched.prefix_of.get(sym)
        if prefix is not None:
            stack.append((prefix, None))
        sec = sym.section
        # An unchanged cold part still comes with its parent: the kernel's
        # copy would jump back into the old parent.
        carried = (sym.is_section or state.status_of(sym) is not Status.SAME
                   or is_cold_part(state.patched, sym))
        if sec is None or not carried:
            continue
        if sec in state.included_sections:
            continue
        state.included_sections.add(sec)
        secsym = state.patched.section_symbol.get(sec)
        if secsym is not None:
            state.included_symbols.add(secsym)
        owner = state.patched.owner.get(sec) or sym
        for rela in state.patched.relas(sec):
            stack.append((rela.symbol, owner))


def included_code_site(state: DiffState, rela: Rela) -> Optional[Tuple[Section, int]]:
    """(text section, offset) a table entry points at, when that code is in the patch."""
    sec = rela.symbol.section
    if sec is None or not sec.is_text or sec not in state.included_sections:
        return None
    return sec, rela.section_offset


def included_functions(state: DiffState) -> List[Symbol]:
    """Functions whose code the output carries, in symbol-table order."""
    return [s for s in state.patched.elf.symbols
            if s.is_func and s in state.included_symbols and s.section in state.included_sections]


def section_is_included(state: DiffState, sec: Section) -> bool:
    """True when *sec*'s contents go into the output."""
    return sec in state.included_sections
