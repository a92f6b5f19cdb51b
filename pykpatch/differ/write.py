"""Stage: build the output object from the decisions of the other stages.

The output is an ordinary relocatable object with only the included
sections (sections of patched functions, new data, the strings and
read-only data they use), the kept special-section entries, a fresh
``__mcount_loc``, the ``.pykpatch.funcs`` table (see
:mod:`pykpatch.differ.funcs`) and klp relocations in their final kernel
form: ``.klp.rela.<obj>.<section>`` sections whose symbols are
``.klp.sym.<obj>.<name>,<sympos>`` with ``st_shndx = SHN_LIVEPATCH``.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from pykpatch.differ.funcs import (
    FUNC_ENTRY, FUNCS_SECTION, NEW_FUNC_OFFSET, OBJNAME_OFFSET, OLD_NAME_OFFSET, STRINGS_SECTION,
)
from pykpatch.differ.klp import KlpTarget, kernel_name
from pykpatch.differ.state import DiffState, Status
from pykpatch.elf.constants import (
    R_X86_64_64, SHF_ALLOC, SHF_INFO_LINK, SHF_MERGE, SHF_STRINGS, SHT_PROGBITS, SHT_RELA,
    SHT_SYMTAB, STB_GLOBAL, STB_LOCAL, STT_FILE, STT_FUNC, STT_NOTYPE, STT_SECTION,
)
from pykpatch.elf.model import ElfFile, ElfHeader, Rela, Section, Symbol
from pykpatch.kernel.livepatch import SHF_RELA_LIVEPATCH, SHN_LIVEPATCH, klp_rela_section_name


@dataclass(frozen=True)
class PatchedFunction:
    """One ``.pykpatch.funcs`` entry: new function, kernel name, object, sympos."""

    symbol: Symbol
    old_name: str
    objname: str
    sympos: int


@dataclass
class Output:
    """The output object under construction and its record maps."""

    elf: ElfFile
    sections: Dict[Section, Section] = field(default_factory=dict)  # patched -> output
    symbols: Dict[Symbol, Symbol] = field(default_factory=dict)
    klp_symbols: Dict[str, Symbol] = field(default_factory=dict)
    relas: Dict[Section, List[Rela]] = field(default_factory=dict)  # output target -> relas
    klp_relas: Dict[Section, List[Rela]] = field(default_factory=dict)

    def add_section(self, sec: Section) -> Section:
        self.elf.sections.append(sec)
        return sec

    def section_symbol(self, sec: Section) -> Symbol:
        """The output section symbol of output section *sec* (made on demand)."""
        for sym in self.elf.symbols:
            if sym.is_section and sym.section is sec:
                return sym
        sym = Symbol(name="", bind=STB_LOCAL, type=STT_SECTION, section=sec)
        self.elf.symbols.append(sym)
        return sym


def new_output(state: DiffState) -> Output:
    """An empty output object with the patched object's ELF header."""
    hdr = state.patched.elf.header
    elf = ElfFile(header=ElfHeader(hdr.ident, hdr.type, hdr.machine, hdr.version, 0, hdr.flags))
    elf.symbols = [Symbol(name="", bind=STB_LOCAL, type=STT_NOTYPE)]
    return Output(elf=elf)


def copy_included_sections(state: DiffState, out: Output) -> None:
    """Clone every included section (not relocation sections) in file order."""
    for sec in state.patched.elf.sections:
        if sec not in state.included_sections or sec.type == SHT_RELA:
            continue
        twin = state.twin_of(sec)
        name = twin.name if isinstance(twin, Section) else sec.name
        clone = Section(name=name, type=sec.type, flags=sec.flags, data=sec.data, align=sec.align,
                        entsize=sec.entsize, nobits_size=sec.nobits_size)
        out.sections[sec] = out.add_section(clone)


def copy_symbols(state: DiffState, out: Output, externals: Dict[Symbol, KlpTarget]) -> None:
    """Clone included symbols: defined ones, klp ones and normal undefined ones."""
    files = [s for s in state.patched.elf.symbols if s.is_file]
    if files:
        out.elf.symbols.append(Symbol(name=files[0].name, bind=STB_LOCAL, type=STT_FILE,
                                      shndx=0xFFF1))
    for sym in state.patched.elf.symbols[1:]:
        if sym not in state.included_symbols or sym.is_file:
            continue
        out.symbols[sym] = _clone_symbol(state, out, sym, externals.get(sym))


def _clone_symbol(state: DiffState, out: Output, sym: Symbol, klp: Optional[KlpTarget]) -> Symbol:
    section = out.sections.get(sym.section) if sym.section is not None else None
    if sym.is_section:
        assert section is not None, f"section symbol of excluded {sym.section}"
        return out.section_symbol(section)
    if section is not None:
        bind = sym.bind
        if sym.is_func and state.status_of(sym) is Status.CHANGED:
            bind = STB_LOCAL  # must not clash with the kernel's global of that name
        clone = Symbol(name=kernel_name(state, sym), bind=bind, type=sym.type, other=sym.other,
                       section=section, value=sym.value, size=sym.size)
        out.elf.symbols.append(clone)
        return clone
    if klp is not None:
        existing = out.klp_symbols.get(klp.symbol_name)
        if existing is None:
            existing = Symbol(name=klp.symbol_name, bind=STB_GLOBAL, type=sym.type,
                              shndx=SHN_LIVEPATCH)
            out.klp_symbols[klp.symbol_name] = existing
            out.elf.symbols.append(existing)
        return existing
    name = kernel_name(state, sym)
    for existing in out.elf.symbols:
        if existing.section is None and existing.name == name and existing.shndx == 0:
            return existing
    bind = sym.bind if sym.bind != STB_LOCAL else STB_GLOBAL
    clone = Symbol(name=name, bind=bind, type=sym.type if sym.type != STT_FUNC else STT_NOTYPE)
    out.elf.symbols.append(clone)
    return clone


def copy_relocations(state: DiffState, out: Output) -> None:
    """Clone the relocations of every copied section, splitting off klp ones."""
    for sec, clone in out.sections.items():
        for rela in state.patched.relas(sec):
            add_relocation(out, clone, rela.offset, rela.type, out.symbols[rela.symbol], rela.addend)


def add_relocation(out: Output, target: Section, offset: int, rtype: int, sym: Symbol,
                   addend: int) -> None:
    """Queue one output relocation; klp symbols go to the klp section."""
    table = out.klp_relas if sym.shndx == SHN_LIVEPATCH and sym.section is None else out.relas
    table.setdefault(target, []).append(Rela(offset, rtype, sym, addend))


def add_funcs_table(out: Output, funcs: List[PatchedFunction]) -> None:
    """Write ``.pykpatch.funcs`` and its strings (layout in differ.funcs)."""
    if not funcs:
        return
    strings = bytearray()
    offsets: Dict[str, int] = {}

    def string(text: str) -> int:
        if text not in offsets:
            offsets[text] = len(strings)
            strings.extend(text.encode() + b"\0")
        return offsets[text]

    ordered = sorted(funcs, key=lambda f: (f.objname != "vmlinux", f.objname))
    table = out.add_section(Section(name=FUNCS_SECTION, type=SHT_PROGBITS, flags=SHF_ALLOC,
                                    align=8, entsize=FUNC_ENTRY.size))
    strsec = out.add_section(Section(name=STRINGS_SECTION, type=SHT_PROGBITS,
                                     flags=SHF_ALLOC | SHF_MERGE | SHF_STRINGS, align=1, entsize=1))
    strsym = out.section_symbol(strsec)
    data = bytearray()
    for i, func in enumerate(ordered):
        base = i * FUNC_ENTRY.size
        data += FUNC_ENTRY.pack(0, 0, 0, func.sympos)
        add_relocation(out, table, base + NEW_FUNC_OFFSET, R_X86_64_64, func.symbol, 0)
        add_relocation(out, table, base + OLD_NAME_OFFSET, R_X86_64_64, strsym, string(func.old_name))
        add_relocation(out, table, base + OBJNAME_OFFSET, R_X86_64_64, strsym, string(func.objname))
    table.data = bytes(data)
    strsec.data = bytes(strings)


def add_modinfo(out: Output, entries: List[bytes]) -> None:
    """A ``.modinfo`` with the given ``key=value`` strings (import_ns=...)."""
    if entries:
        out.add_section(Section(name=".modinfo", type=SHT_PROGBITS, flags=SHF_ALLOC, align=1,
                                data=b"".join(e + b"\0" for e in entries)))


def finish(state: DiffState, out: Output, objname: str) -> ElfFile:
    """Create relocation sections and the symbol table; return the object."""
    symtab = Section(name=".symtab", type=SHT_SYMTAB, align=8, entsize=24)
    for target, relas in out.relas.items():
        out.add_section(Section(name=".rela" + target.name, type=SHT_RELA, flags=SHF_INFO_LINK,
                                align=8, entsize=24, link=symtab, info=target, relas=relas))
    for target, relas in out.klp_relas.items():
        out.add_section(Section(name=klp_rela_section_name(objname, target.name), type=SHT_RELA,
                                flags=SHF_ALLOC | SHF_RELA_LIVEPATCH, align=8, entsize=24,
                                link=symtab, info=target, relas=relas))
    out.add_section(symtab)
    out.elf.symtab = symtab
    _order_locals(out.elf)
    return out.elf


def _order_locals(elf: ElfFile) -> None:
    """null, FILE, section symbols, other locals, then globals (the writer
    keeps this order and only moves globals after locals)."""
    null, rest = elf.symbols[0], elf.symbols[1:]
    rank = {STT_FILE: 0, STT_SECTION: 1}
    rest.sort(key=lambda s: (s.bind != STB_LOCAL, rank.get(s.type, 2) if s.bind == STB_LOCAL else 0))
    elf.symbols = [null] + rest
