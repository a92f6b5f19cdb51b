"""Stage: keep the special-section entries of the included functions.

Each special section (see :mod:`pykpatch.kernel.sections`) is an array of
fixed-size entries.  An entry is kept when one of its relocations lands in
a function the output carries; what the kept entries point at (strings,
static keys, replacement code) is then included too.  Jump labels and
static calls whose key lives in a module cannot be patched from vmlinux
context: tracepoint and dynamic-debug sites are dropped (they only lose
their static branch), any other is refused.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from pykpatch.differ.changes import is_compared_section
from pykpatch.differ.include import _include_symbol, included_code_site
from pykpatch.differ.klp import exporting_module
from pykpatch.differ.state import DiffState
from pykpatch.differ.write import Output, add_relocation
from pykpatch.elf.model import Rela, Section, Symbol
from pykpatch.errors import InputError
from pykpatch.kernel.livepatch import VMLINUX
from pykpatch.kernel.sections import (
    ALTINSTR_REPLACEMENT, IGNORED_SECTION_PREFIXES, INIT_SECTION_PREFIXES,
    JUMP_ENTRY_CODE_OFFSET, JUMP_LABEL_NOP_AT_BUILD, OBJTOOL_SECTIONS, ORC_ENTRY_STRUCT,
    ORC_UNWIND, RUNTIME_PTR_PREFIX, RUNTIME_SHIFT_PREFIX, SPECIAL_SECTIONS, X86_JMPS, X86_NOPS,
    SpecialSection,
)

# Sections rebuilt elsewhere (from the included functions' fentry calls).
_REGENERATED = ("__mcount_loc", "__patchable_function_entries")


@dataclass
class KeptEntries:
    """Which entries of one special section survive, and their size."""

    section: Section
    size: int
    indices: List[int] = field(default_factory=list)
    dropped: List[int] = field(default_factory=list)  # in included code, but left out
    companion: Optional[Section] = None
    companion_size: int = 0


def entry_size(state: DiffState, spec: SpecialSection, struct: Optional[str] = None) -> int:
    """Bytes per entry of *spec* (or of *struct*), from --struct-size.

    :raises InputError: the size of a needed struct was not given.
    """
    name = struct or spec.struct
    if name is None:
        assert spec.fixed_size is not None
        return spec.fixed_size
    size = state.options.struct_sizes.get(name)
    if not size:
        raise InputError(
            f"{state.patched.path}: section {spec.name} needs the size of struct {name}; pass "
            f"--struct-size {name}=BYTES (from the target kernel's DWARF)")
    return size


def select_special_entries(state: DiffState) -> List[KeptEntries]:
    """Decide the kept entries of every special section; include what they use."""
    kept_all = []
    for sec in state.patched.elf.sections:
        spec = SPECIAL_SECTIONS.get(sec.name)
        if spec is None or sec.name in _REGENERATED or sec not in state.patched.rela_of:
            continue
        if state.options.objtool_at_link and sec.name in OBJTOOL_SECTIONS:
            continue  # (objtool writes them for the linked patch module)
        kept = _select(state, sec, spec)
        if kept.indices or kept.dropped:
            kept_all.append(kept)
    for kept in kept_all:
        for index in kept.indices:
            for rela in _entry_relas(state, kept, index):
                _include_symbol(state, rela.symbol, None)
    refuse_unknown_tables(state)
    return kept_all


def _fits(sec: Section, relas: List[Rela], size: int) -> bool:
    """Do entries of *size* bytes give every entry a relocation, all at the
    positions of one common layout?"""
    if size <= 0:
        return False
    layouts: Dict[int, List[int]] = {}
    for rela in relas:
        layouts.setdefault(rela.offset // size, []).append(rela.offset % size)
    # The last entry may lack its tail padding (gas does not pad the end).
    if len(layouts) != -(-sec.size // size):
        return False
    # Some entries lack a relocation (an empty replacement), but all must
    # use the positions of the fullest one.
    shapes = [frozenset(v) for v in layouts.values()]
    union = frozenset().union(*shapes)
    return union in shapes


def checked_entry_size(state: DiffState, sec: Section, spec: SpecialSection) -> int:
    """The entry size to split *sec* with.

    The given struct size is checked against the section: it must divide
    the section and give every entry the same relocation layout.  When it
    does not (sizes measured on another kernel), the assembler's sh_entsize
    or the period of the relocations decides, with a warning.

    :raises InputError: no size was given, or nothing consistent is found.
    """
    given = entry_size(state, spec)
    relas = state.patched.relas(sec)
    if _fits(sec, relas, given):
        return given
    candidates = ([sec.entsize] if sec.entsize else []) + list(range(4, 65, 2))
    for size in candidates:
        if _fits(sec, relas, size):
            state.warnings.append(
                f"{sec.name}: entries are {size} bytes, not the {given} given for "
                f"{spec.struct or 'this table'}; using {size}")
            return size
    raise InputError(
        f"{state.patched.path}: {sec.name} ({sec.size} bytes) does not split into "
        f"{given}-byte entries; pass the target kernel's --struct-size "
        f"{spec.struct or sec.name}=BYTES")


def _select(state: DiffState, sec: Section, spec: SpecialSection) -> KeptEntries:
    size = checked_entry_size(state, sec, spec)
    kept = KeptEntries(sec, size)
    by_entry: Dict[int, List[Rela]] = {}
    for rela in state.patched.relas(sec):
        by_entry.setdefault(rela.offset // size, []).append(rela)
    for index in sorted(by_entry):
        relas = by_entry[index]
        if not any(_lands_in_included_code(state, r.symbol) for r in relas):
            continue
        if _key_allowed(state, spec, index * size, relas):
            kept.indices.append(index)
        else:
            kept.dropped.append(index)
    if spec.companion == ORC_UNWIND:
        kept.companion = state.patched.elf.section_by_name(ORC_UNWIND)
        if kept.companion is not None:
            kept.companion_size = entry_size(state, spec, ORC_ENTRY_STRUCT)
    return kept


def _lands_in_included_code(state: DiffState, sym: Symbol) -> bool:
    sec = sym.section
    return (sec is not None and sec.is_text and sec in state.included_sections
            and is_compared_section(sec) and (sym.is_func or sym.is_section))


def _key_allowed(state: DiffState, spec: SpecialSection, base: int, relas: List[Rela]) -> bool:
    """False to drop the entry; records a refusal for forbidden keys."""
    if spec.key_offset is None or state.options.objname == VMLINUX:
        return True
    key = next((r.symbol for r in relas if r.offset == base + spec.key_offset), None)
    if key is None or not _key_in_module(state, key):
        return True
    if key.name.startswith(("__tracepoint_", "__SCK__tp_func_")) or _is_dyndbg_key(key):
        state.warnings.append(f"{spec.name}: dropped site keyed by {key.name} (module key)")
        return False
    what = "static_key_enabled()" if spec.name == "__jump_table" else "a normal function call"
    state.refusals.append(
        f"{key.name}: a {spec.name} site uses a key that lives in module "
        f"{state.options.objname}, which may not be loaded when the patch is -- use {what} "
        "in the patched function instead")
    return False


def _key_in_module(state: DiffState, key: Symbol) -> bool:
    """Does the key of a module's site live in a module (this one or another)?

    Such a key is resolved only when that module loads, after the patch
    registered its sites; vmlinux's keys are resolved while the patch loads.
    """
    if key.section is not None:
        return key.section not in state.included_sections
    target = state.target
    if target is None or not target.exported:
        return False
    # Exported by no one (then the module defines it) or by another module.
    return not target.is_exported(key.name) or exporting_module(state, key.name) is not None


def _is_dyndbg_key(key: Symbol) -> bool:
    sec = key.section
    return "ddebug" in key.name or (sec is not None and sec.name in ("__dyndbg", "__verbose"))


def _entry_relas(state: DiffState, kept: KeptEntries, index: int) -> List[Rela]:
    lo, hi = index * kept.size, (index + 1) * kept.size
    return [r for r in state.patched.relas(kept.section) if lo <= r.offset < hi]


def copy_special_sections(state: DiffState, out: Output, kept_all: List[KeptEntries]) -> None:
    """Write the kept entries (and ORC companions) into the output."""
    for kept in kept_all:
        if kept.section.name == "__jump_table":
            _nop_dropped_jump_sites(state, out, kept)
        if not kept.indices:
            continue
        clone = _copy_entries(out, kept.section, kept.size, kept.indices)
        for new_index, index in enumerate(kept.indices):
            for rela in _entry_relas(state, kept, index):
                offset = new_index * kept.size + rela.offset - index * kept.size
                add_relocation(out, clone, offset, rela.type, out.symbols[rela.symbol], rela.addend)
        if kept.companion is not None:
            _copy_entries(out, kept.companion, kept.companion_size, kept.indices)


def _nop_dropped_jump_sites(state: DiffState, out: Output, kept: KeptEntries) -> None:
    """Write the NOP that objtool would have written over a dropped static
    branch still in its build form (a jmp), so the branch stays in its
    initial state instead of being always taken."""
    spec = SPECIAL_SECTIONS[kept.section.name]
    assert spec.key_offset is not None
    for index in kept.dropped:
        relas = {r.offset - index * kept.size: r for r in _entry_relas(state, kept, index)}
        code, key = relas.get(JUMP_ENTRY_CODE_OFFSET), relas.get(spec.key_offset)
        if code is None or key is None or not key.addend & JUMP_LABEL_NOP_AT_BUILD:
            continue
        clone = out.sections.get(code.symbol.section)
        site = code.section_offset
        length = X86_JMPS.get(clone.data[site]) if clone is not None else None
        if length is None:
            continue  # already a NOP (objtool ran on this object)
        clone.data = clone.data[:site] + X86_NOPS[length] + clone.data[site + length:]
        inside = range(site, site + length)
        out.relas[clone] = [r for r in out.relas.get(clone, []) if r.offset not in inside]


def _copy_entries(out: Output, sec: Section, size: int, indices: List[int]) -> Section:
    data = b"".join(sec.data[i * size:(i + 1) * size].ljust(size, b"\0") for i in indices)
    clone = Section(name=sec.name, type=sec.type, flags=sec.flags, data=data, align=sec.align,
                    entsize=sec.entsize)
    return out.add_section(clone)


# Handled by differ.runtime_const.
RUNTIME_CONST_PREFIXES = (RUNTIME_PTR_PREFIX, RUNTIME_SHIFT_PREFIX)


def refuse_unknown_tables(state: DiffState) -> None:
    """Refuse tables the differ does not know that point inside patched code.

    The known special sections point at instructions inside functions and
    are rebuilt entry by entry; a data section that points at a function's
    *start* is an ordinary pointer (an ops struct), which keeps reaching the
    kernel's copy, and ftrace redirects that.  An entry pointing *inside* an
    included function belongs to some table the kernel or a tool walks (like
    those of objtool or the exception tables), and the new copy would be
    missing from it.
    """
    for sec in state.patched.elf.sections:
        if (sec.is_text or sec in state.included_sections or sec.name in SPECIAL_SECTIONS
                or sec.name in OBJTOOL_SECTIONS
                or sec.name in (ALTINSTR_REPLACEMENT, ORC_UNWIND)
                or sec.name.startswith(IGNORED_SECTION_PREFIXES + INIT_SECTION_PREFIXES
                                       + RUNTIME_CONST_PREFIXES)):
            continue
        inside = sorted({name for name in (_included_function_inside(state, r)
                                           for r in state.patched.relas(sec)) if name})
        if inside:
            state.refusals.append(
                f"{sec.name}: a table pykpatch does not know points inside "
                f"{', '.join(inside)}; the patched copy would be missing from it -- "
                "report the section, or keep those functions out of the patch")


def _included_function_inside(state: DiffState, rela: Rela) -> Optional[str]:
    """The included function *rela* points into (not at its start), if any."""
    site = included_code_site(state, rela)
    if site is None:
        return None
    sec, offset = site
    func = rela.symbol if rela.symbol.is_func else state.patched.owner.get(sec)
    if func is None or not func.is_func:
        return None
    return func.name if func.value < offset < func.value + func.size else None
