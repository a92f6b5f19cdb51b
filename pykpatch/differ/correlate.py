"""Stage: find twins -- which patched section/symbol is which original one.

Names are compared *mangled-equal*: compiler counters (``foo.isra.3`` vs
``foo.isra.5``, ``__UNIQUE_ID_x12`` vs ``__UNIQUE_ID_x15``, the counter and
line at the end of ``__BTF_ID__`` names) are ignored, but
``.str1.N`` merge-string sections must match exactly (N is an alignment).
Exact names win over mangled matches.  Per-call-site statics are never
paired: each patched copy is a new variable.  Static locals are finally
re-paired through the functions that reference them, because two functions
may each own a ``count.N``.
"""

import re
from typing import Dict, Iterable, List

from pykpatch.differ.state import DiffObject, DiffState
from pykpatch.elf.constants import SHT_RELA, STB_LOCAL
from pykpatch.elf.model import Section, Symbol
from pykpatch.kernel.sections import (
    SPECIAL_STATIC_NAMES, SPECIAL_STATIC_PREFIXES, SPECIAL_STATIC_SECTIONS,
)

_DIGITS = re.compile(r"\.\d+")
_UNIQUE_ID = re.compile(r"(__UNIQUE_ID_\w*?)\d+(?=$|\.)")
# BTF_ID() entries end in __COUNTER__ and __LINE__ run together, so any
# line shift renames them (__BTF_ID__struct__nf_conn__768208).
_BTF_ID = re.compile(r"^(__BTF_ID__\w+__)\d+$")
# Compiler-generated anonymous data: never the same thing twice.
_ANONYMOUS_DATA = re.compile(r"\.L__unnamed|Lubsan|\.L\.str|\.LC\d")


def mangled_key(name: str) -> str:
    """The name with compiler counters blanked out (see module doc)."""
    if ".str1." in name or ".str." in name:
        return name
    return _DIGITS.sub(".#", _UNIQUE_ID.sub(r"\1#", _BTF_ID.sub(r"\1#", name)))


def is_special_static(sym: Symbol) -> bool:
    """True for per-call-site statics (``__key``, ``__warned``, ``_rs``...)."""
    if sym.bind != STB_LOCAL or sym.is_section or sym.is_file:
        return sym.is_section and sym.section is not None and is_uncorrelated_section(sym.section)
    if sym.section is not None and sym.section.name in SPECIAL_STATIC_SECTIONS:
        return True
    name = sym.name
    # gcc's anonymous constants (.LC5: a string or a literal), kept as symbols
    # when referenced in mergeable sections.  Numbered per object, so the
    # kernel's .LC5 is not the patched object's .LC5: always a fresh copy.
    if name.startswith(".L"):
        return True
    if name.startswith(SPECIAL_STATIC_PREFIXES) or name in SPECIAL_STATIC_NAMES:
        return True
    # Clang spells them "<function>.<name>" (optionally with a counter).
    parts = [p for p in name.split(".") if not p.isdigit()]
    return len(parts) > 1 and parts[-1] in SPECIAL_STATIC_NAMES


def is_uncorrelated_section(sec: Section) -> bool:
    """Sections never paired: per-site static data and anonymous data."""
    return (sec.name in SPECIAL_STATIC_SECTIONS or sec.name.startswith(".data..once")
            or bool(_ANONYMOUS_DATA.search(sec.name)))


def correlate(state: DiffState) -> None:
    """Pair sections and symbols of the two objects (see module doc)."""
    _correlate_symbols(state)
    _correlate_sections(state)
    _correlate_static_locals(state)


def _pairable_symbols(obj: DiffObject) -> List[Symbol]:
    return [s for s in obj.elf.symbols[1:] if not s.is_section and not is_special_static(s)
            and not (s.section is not None and is_uncorrelated_section(s.section))]


def _match_in_passes(state: DiffState, origs: List, patched: List,
                     key_exact, key_mangled) -> None:
    for keyfunc in (key_exact, key_mangled):
        pool: Dict[object, List] = {}
        for rec in origs:
            if rec not in state.twin:
                pool.setdefault(keyfunc(rec), []).append(rec)
        for rec in patched:
            if rec in state.twin:
                continue
            candidates = pool.get(keyfunc(rec))
            while candidates:
                cand = candidates.pop(0)
                if cand not in state.twin:
                    state.pair(cand, rec)
                    break


def _correlate_symbols(state: DiffState) -> None:
    _match_in_passes(state, _pairable_symbols(state.orig), _pairable_symbols(state.patched),
                     lambda s: (s.type, s.section is None, s.name),
                     lambda s: (s.type, s.section is None, mangled_key(s.name)))


def _correlate_sections(state: DiffState) -> None:
    orig, patched = state.orig, state.patched
    # Owned sections follow their owners.
    for sec, owner in patched.owner.items():
        twin = state.twin_of(owner)
        if isinstance(twin, Symbol) and twin.section is not None and orig.owner.get(twin.section) is twin:
            state.pair(twin.section, sec)
    free_orig = [s for s in orig.elf.sections if _freely_named(orig, s)]
    free_patched = [s for s in patched.elf.sections if _freely_named(patched, s)]
    _match_in_passes(state, free_orig, free_patched, lambda s: s.name,
                     lambda s: mangled_key(s.name))
    # Relocation sections and section symbols follow their sections.
    for target, rela_sec in patched.rela_of.items():
        twin = state.twin_of(target)
        if isinstance(twin, Section) and twin in orig.rela_of:
            state.pair(orig.rela_of[twin], rela_sec)
    for sec, sym in patched.section_symbol.items():
        twin = state.twin_of(sec)
        if isinstance(twin, Section) and twin in orig.section_symbol:
            state.pair(orig.section_symbol[twin], sym)


def _freely_named(obj: DiffObject, sec: Section) -> bool:
    return (sec not in obj.owner and sec.type != SHT_RELA and not is_uncorrelated_section(sec))


def _static_locals_referenced(obj: DiffObject, func: Symbol) -> Iterable[Symbol]:
    for part in [func] + obj.children.get(func, []):
        for rela in obj.function_relas(part):
            if is_static_local(rela.symbol):
                yield rela.symbol


def is_static_local(sym: Symbol) -> bool:
    """A function-scope static: a LOCAL object with a compiler suffix."""
    return (sym.bind == STB_LOCAL and sym.is_object and "." in sym.name
            and not is_special_static(sym))


def _correlate_static_locals(state: DiffState) -> None:
    """Re-pair static locals through their referencing functions.

    Within one function the k-th distinct static called ``name.N`` in the
    original pairs with the k-th one in the patched code (a function may
    have several ``symbols.N``: one per print_symbolic()).
    """
    for func in state.orig.elf.symbols:
        if not func.is_func or func.section is None or func in state.orig.parent:
            continue
        twin = state.twin_of(func)
        if not isinstance(twin, Symbol):
            continue
        orig_by_name = _by_base_name(_static_locals_referenced(state.orig, func))
        patched_by_name = _by_base_name(_static_locals_referenced(state.patched, twin))
        for base, orig_vars in orig_by_name.items():
            candidates = patched_by_name.get(base, [])
            for index, var in enumerate(orig_vars):
                if index >= len(candidates):
                    state.refusals.append(
                        f"{func.name}: the reference to static local variable {var.name} was "
                        "removed; keep using the variable in the patched function (or move the "
                        "logic into a callback) so the patch and the kernel share one copy")
                    continue
                match = candidates[index]
                if state.twin_of(match) is not var:
                    state.pair(var, match)
                    _pair_owned_sections(state, var, match)


def _by_base_name(statics: Iterable[Symbol]) -> Dict[str, List[Symbol]]:
    """Distinct statics in first-reference order, grouped by mangled name."""
    grouped: Dict[str, List[Symbol]] = {}
    for sym in dict.fromkeys(statics):
        grouped.setdefault(mangled_key(sym.name), []).append(sym)
    return grouped


def _pair_owned_sections(state: DiffState, orig_var: Symbol, patched_var: Symbol) -> None:
    osec, psec = orig_var.section, patched_var.section
    if osec is None or psec is None:
        return
    if state.orig.owner.get(osec) is orig_var and state.patched.owner.get(psec) is patched_var:
        state.pair(osec, psec)
        orela, prela = state.orig.rela_of.get(osec), state.patched.rela_of.get(psec)
        if orela is not None and prela is not None:
            state.pair(orela, prela)
        osym, psym = state.orig.section_symbol.get(osec), state.patched.section_symbol.get(psec)
        if osym is not None and psym is not None:
            state.pair(osym, psym)
