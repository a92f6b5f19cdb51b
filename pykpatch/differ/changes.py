"""Stage: decide what changed.

Sections are compared by header, size, bytes and relocations; a
relocation is compared by its target (twin symbol, or string contents for
string literals) and addend, never by symbol index, so a reshuffled symbol
table is not a change.  Functions and objects take the status of their
section, or of their own byte range when they share one.

The ``__LINE__`` heuristic: a function whose only differences are
same-length ``mov $imm, %reg`` instructions whose value feeds the next call
to a warning/might_sleep-style helper only moved in the source file; it is
SAME.
"""

from typing import Dict, List

from pykpatch.differ.bundle import PFX
from pykpatch.differ.correlate import is_special_static, mangled_key
from pykpatch.differ.state import DiffState, Status
from pykpatch.differ.x86 import CALL_REL32, InsnIndex
from pykpatch.elf.constants import PC_RELATIVE_RELOCS, SHT_GROUP, SHT_NOBITS, SHT_RELA, SHT_STRTAB, SHT_SYMTAB, SHT_SYMTAB_SHNDX
from pykpatch.elf.model import Rela, Section, Symbol
from pykpatch.kernel.sections import (
    IGNORED_SECTION_PREFIXES, LINE_NUMBER_CALLEES, METADATA_SECTION_PREFIXES, SPECIAL_SECTIONS,
    ORC_UNWIND, ALTINSTR_REPLACEMENT, IGNORE_FUNCTIONS_SECTIONS, INIT_SECTION_PREFIXES,
)

_STRUCTURAL_TYPES = (SHT_RELA, SHT_SYMTAB, SHT_STRTAB, SHT_SYMTAB_SHNDX)


def is_compared_section(sec: Section) -> bool:
    """Sections whose content can make a patch: not tables, metadata, debug."""
    name = sec.name
    return not (sec.type in _STRUCTURAL_TYPES or name.startswith(IGNORED_SECTION_PREFIXES)
                or name.startswith(METADATA_SECTION_PREFIXES) or name in SPECIAL_SECTIONS
                or name in (ORC_UNWIND, ALTINSTR_REPLACEMENT, ".altinstr_aux", ".fixup")
                or not sec.name)


def mark_changes(state: DiffState) -> None:
    """Set the status of every patched section and function/object."""
    comparer = _Comparer(state)
    for sec in state.patched.elf.sections:
        if not is_compared_section(sec):
            continue
        twin = state.twin_of(sec)
        if not isinstance(twin, Section):
            state.status[sec] = Status.NEW
        else:
            state.status[sec] = comparer.section_status(twin, sec)
    for sym in state.patched.elf.symbols:
        if sym.section is not None and is_special_static(sym):
            state.status[sym] = Status.NEW  # a fresh copy for every use site
        elif (sym.is_func or sym.is_object) and sym.section is not None and is_compared_section(sym.section):
            state.status[sym] = comparer.symbol_status(sym)
            if state.status[sym] is Status.CHANGED:
                state.reasons.setdefault(sym, "its code changed" if sym.is_func else "its data changed")
            elif state.status[sym] is Status.NEW:
                state.reasons.setdefault(sym, "new")
    _apply_ignore_annotations(state)
    _settle_init_code(state)
    _propagate_to_parents(state)
    _propagate_untraceable_to_callers(state)


def _settle_init_code(state: DiffState) -> None:
    """__init code already ran and is gone; if only what it refers to moved
    or changed (strings, shared aux code) and its instructions did not,
    there is nothing a patch could or should do about it."""
    for sym in state.patched.elf.symbols:
        twin = state.twin_of(sym)
        if (state.status_of(sym) is Status.CHANGED and sym.is_func and sym.section is not None
                and sym.section.name.startswith(INIT_SECTION_PREFIXES)
                and isinstance(twin, Symbol) and _same_bytes(twin, sym)):
            state.status[sym] = Status.SAME
            state.warnings.append(
                f"{sym.name}: __init code with unchanged instructions refers to changed "
                "strings or moved code; ignored, it already ran at boot")


def _same_bytes(orig: Symbol, patched: Symbol) -> bool:
    osec, psec = orig.section, patched.section
    assert osec is not None and psec is not None
    return (orig.size == patched.size and osec.data[orig.value:orig.value + orig.size]
            == psec.data[patched.value:patched.value + patched.size])


def _apply_ignore_annotations(state: DiffState) -> None:
    """KPATCH_IGNORE_FUNCTION(f): the author vouches that f's change does
    not need patching (it and its children count as SAME)."""
    for name in IGNORE_FUNCTIONS_SECTIONS:
        sec = state.patched.elf.section_by_name(name)
        if sec is None:
            continue
        for rela in state.patched.relas(sec):
            func = rela.symbol
            for sym in [func] + state.patched.children.get(func, []):
                if state.status_of(sym) is Status.CHANGED:
                    state.status[sym] = Status.SAME
                    state.warnings.append(f"{sym.name}: changed, but ignored as the patch asks")


def _propagate_to_parents(state: DiffState) -> None:
    """A changed child that cannot be traced makes its parent changed: the
    parent is the only entry point the kernel can redirect."""
    patched = state.patched
    for child, parent in patched.parent.items():
        if state.status_of(child) is not Status.CHANGED or child in patched.has_fentry:
            continue
        while parent in patched.parent and parent not in patched.has_fentry:
            parent = patched.parent[parent]
        if state.status_of(parent) is Status.SAME:
            state.status[parent] = Status.CHANGED
            state.reasons[parent] = f"its child {child.name} changed"


def _callers(state: DiffState, func: Symbol) -> List[Symbol]:
    """Functions of the patched object with a relocation to *func*."""
    patched = state.patched
    return [sym for sym in patched.elf.symbols
            if sym.is_func and sym is not func
            and any(r.symbol is func for r in patched.function_relas(sym))]


def _propagate_untraceable_to_callers(state: DiffState) -> None:
    """A changed static function that ftrace cannot redirect (``notrace``,
    which the kernel's ``inline`` implies, e.g. a syscall's ``__do_sys_*``
    that GCC chose not to inline) is carried by its callers: they become
    changed, and call the new copy.  kpatch refuses these; all callers of a
    static function are in this object, so patching them is complete."""
    patched = state.patched
    work = [sym for sym in patched.elf.symbols
            if sym.is_func and state.status_of(sym) is Status.CHANGED
            and sym not in patched.has_fentry and sym not in patched.parent]
    while work:
        func = work.pop()
        callers = _callers(state, func)
        if not func.is_local or not callers or func in state.via_callers:
            continue  # refused later: callers outside this object, or none
        state.via_callers.add(func)
        for caller in callers:
            if state.status_of(caller) is Status.SAME:
                state.status[caller] = Status.CHANGED
                state.reasons[caller] = f"calls {func.name}, which changed and has no __fentry__"
                if caller not in patched.has_fentry and caller not in patched.parent:
                    work.append(caller)


class _Comparer:
    def __init__(self, state: DiffState) -> None:
        self.state = state
        self._insns: Dict[Section, InsnIndex] = {}

    def section_status(self, orig: Section, patched: Section) -> Status:
        if (orig.type, orig.flags, orig.entsize) != (patched.type, patched.flags, patched.entsize):
            return Status.CHANGED
        if orig.size != patched.size:
            return Status.CHANGED
        if patched.type == SHT_GROUP:
            names = lambda s: [m.name for m in s.group_members]  # noqa: E731
            return Status.SAME if names(orig) == names(patched) else Status.CHANGED
        o_relas = self.state.orig.relas(orig)
        p_relas = self.state.patched.relas(patched)
        if not self._relas_equal(orig, o_relas, patched, p_relas):
            return Status.CHANGED
        if patched.type == SHT_NOBITS or orig.data == patched.data:
            return Status.SAME
        if patched.is_text and self._only_line_numbers(orig, patched, p_relas):
            self.state.line_only.add(patched)
            return Status.SAME
        return Status.CHANGED

    def symbol_status(self, sym: Symbol) -> Status:
        twin = self.state.twin_of(sym)
        if not isinstance(twin, Symbol) or twin.section is None:
            return Status.NEW
        sec = sym.section
        assert sec is not None
        if self.state.patched.owner.get(sec) is sym or sym.name.startswith(PFX):
            if self.state.twin_of(sec) is not twin.section:
                return Status.CHANGED
            return self.state.status_of(sec)
        return self._range_status(twin, sym)

    def _range_status(self, orig: Symbol, patched: Symbol) -> Status:
        """Status of a symbol sharing its section with others."""
        if orig.size != patched.size or self.state.status_of(patched.section) is Status.SAME:
            return Status.CHANGED if orig.size != patched.size else Status.SAME
        osec, psec = orig.section, patched.section
        assert osec is not None and psec is not None
        if psec.type != SHT_NOBITS:
            obytes = osec.data[orig.value:orig.value + orig.size]
            pbytes = psec.data[patched.value:patched.value + patched.size]
        else:
            obytes = pbytes = b""
        o_relas = _shifted(self.state.orig.function_relas(orig), orig.value)
        p_relas = _shifted(self.state.patched.function_relas(patched), patched.value)
        if obytes == pbytes and self._relas_equal(osec, o_relas, psec, p_relas):
            return Status.SAME
        return Status.CHANGED

    def _relas_equal(self, osec: Section, o_relas: List[Rela], psec: Section,
                     p_relas: List[Rela]) -> bool:
        if len(o_relas) != len(p_relas):
            return False
        for a, b in zip(sorted(o_relas, key=_offset), sorted(p_relas, key=_offset)):
            if a.offset != b.offset or a.type != b.type:
                return False
            if not self._same_target(osec, a, psec, b):
                return False
        return True

    def _same_target(self, osec: Section, a: Rela, psec: Section, b: Rela) -> bool:
        sa, sb = a.symbol, b.symbol
        if _is_string_ref(sa) and _is_string_ref(sb):
            return (_string_at(osec, a) == _string_at(psec, b))
        if a.addend != b.addend:
            return False
        twin = self.state.twin_of(sb)
        if twin is not None:
            return twin is sa
        if sa.is_section and sb.is_section:
            return (sa.section is not None and sb.section is not None
                    and mangled_key(sa.section.name) == mangled_key(sb.section.name))
        if self.state.twin_of(sa) is not None:
            return False
        return sa.type == sb.type and mangled_key(sa.name) == mangled_key(sb.name)

    def _only_line_numbers(self, orig: Section, patched: Section, relas: List[Rela]) -> bool:
        o_idx, p_idx = self._index(orig), self._index(patched)
        if not (o_idx.ok and p_idx.ok):
            return False
        calls = _call_targets(patched, relas)
        o_starts = {i.offset: i for i in o_idx.insns}
        for insn in p_idx.insns:
            end = insn.offset + insn.length
            if orig.data[insn.offset:end] == patched.data[insn.offset:end]:
                continue
            twin = o_starts.get(insn.offset)
            if twin is None or twin.length != insn.length or twin.opcode != insn.opcode:
                return False
            if not (0xB8 <= insn.opcode <= 0xBF):  # mov $imm32, %reg
                return False
            if not _next_call_reports_line(p_idx, insn.offset, calls):
                return False
        return True

    def _index(self, sec: Section) -> InsnIndex:
        if sec not in self._insns:
            self._insns[sec] = InsnIndex(sec.data)
        return self._insns[sec]


def _offset(rela: Rela) -> int:
    return rela.offset


def _shifted(relas: List[Rela], base: int) -> List[Rela]:
    return [Rela(r.offset - base, r.type, r.symbol, r.addend) for r in relas]


def _is_string_ref(sym: Symbol) -> bool:
    return sym.section is not None and sym.section.is_strings


def _string_at(where: Section, rela: Rela) -> bytes:
    sec = rela.symbol.section
    assert sec is not None
    offset = rela.symbol.value + rela.addend
    if rela.type in PC_RELATIVE_RELOCS and where.is_text:
        offset += 4
    end = sec.data.find(b"\0", offset)
    return sec.data[offset:end if end >= 0 else len(sec.data)]


def _call_targets(sec: Section, relas: List[Rela]) -> Dict[int, str]:
    """Offset of each call instruction's opcode byte -> called symbol name."""
    return {r.offset - 1: r.symbol.name for r in relas
            if r.offset >= 1 and r.type in PC_RELATIVE_RELOCS and sec.data[r.offset - 1] == CALL_REL32}


def _next_call_reports_line(index: InsnIndex, start: int, calls: Dict[int, str]) -> bool:
    for insn in index.insns:
        if insn.offset <= start or insn.opcode != CALL_REL32:
            continue
        name = calls.get(insn.offset)
        if name is None:
            return False
        return name in LINE_NUMBER_CALLEES or name.startswith("__btrfs_")
    return False
