"""The in-memory model of an ELF64 relocatable object.

Records point at each other, never at indices: a :class:`Rela` holds its
:class:`Symbol`, a symbol holds its :class:`Section`, a RELA section holds the
section it applies to.  Indices, string-table offsets and file offsets are
recomputed by :mod:`pykpatch.elf.writer`, so the differ can drop, add and
reorder records freely.
"""

import sys
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional

from pykpatch.elf.constants import (
    SHF_ALLOC, SHF_EXECINSTR, SHF_STRINGS, SHF_WRITE, SHT_NOBITS, SHT_RELA,
    STB_LOCAL, STT_FILE, STT_FUNC, STT_OBJECT, STT_SECTION,
)

# slots=True only exists from Python 3.10; the model works without it.
_SLOTS = {"slots": True} if sys.version_info >= (3, 10) else {}


@dataclass(eq=False, **_SLOTS)
class Section:
    """One section header plus its contents.

    ``link``/``info`` hold the section (or symbol) they refer to when the
    ELF rules say they are indices; ``link_raw``/``info_raw`` keep the
    number when they are not (or point nowhere we understand).
    """

    name: str
    type: int
    flags: int = 0
    data: bytes = b""
    align: int = 1
    entsize: int = 0
    addr: int = 0
    nobits_size: int = 0
    link: Optional["Section"] = None
    link_raw: int = 0
    info: Optional["Section"] = None
    info_raw: int = 0
    relas: List["Rela"] = field(default_factory=list)
    group_flags: int = 0
    group_members: List["Section"] = field(default_factory=list)
    group_signature: Optional["Symbol"] = None
    index: int = 0
    offset: Optional[int] = None

    @property
    def size(self) -> int:
        """sh_size: NOBITS sections occupy no file space but have a size."""
        if self.type == SHT_NOBITS:
            return self.nobits_size
        return len(self.data)

    @property
    def is_text(self) -> bool:
        return bool(self.flags & SHF_EXECINSTR)

    @property
    def is_alloc(self) -> bool:
        return bool(self.flags & SHF_ALLOC)

    @property
    def is_writable(self) -> bool:
        return bool(self.flags & SHF_WRITE)

    @property
    def is_strings(self) -> bool:
        return bool(self.flags & SHF_STRINGS)

    def __repr__(self) -> str:
        return f"<Section {self.index} {self.name}>"


@dataclass(eq=False, **_SLOTS)
class Symbol:
    """One symbol.  ``section`` is set for symbols defined in a section;
    otherwise ``shndx`` keeps the special index (UNDEF, ABS, COMMON,
    SHN_LIVEPATCH, or anything else we pass through)."""

    name: str
    bind: int
    type: int
    other: int = 0
    section: Optional[Section] = None
    shndx: int = 0
    value: int = 0
    size: int = 0
    index: int = 0

    @property
    def is_local(self) -> bool:
        return self.bind == STB_LOCAL

    @property
    def is_func(self) -> bool:
        return self.type == STT_FUNC

    @property
    def is_object(self) -> bool:
        return self.type == STT_OBJECT

    @property
    def is_section(self) -> bool:
        return self.type == STT_SECTION

    @property
    def is_file(self) -> bool:
        return self.type == STT_FILE

    @property
    def is_defined(self) -> bool:
        return self.section is not None

    def __repr__(self) -> str:
        return f"<Symbol {self.name or '(' + str(self.section) + ')'}>"


@dataclass(eq=False, **_SLOTS)
class Rela:
    """One Elf64_Rela entry."""

    offset: int
    type: int
    symbol: Symbol
    addend: int

    @property
    def section_offset(self) -> int:
        """Where in its symbol's section a data relocation (``.long sym+a - .``,
        a table entry) points."""
        return self.addend + (0 if self.symbol.is_section else self.symbol.value)

    def __repr__(self) -> str:
        return f"<Rela {self.offset:#x} {self.type} {self.symbol.name}{self.addend:+d}>"


@dataclass(eq=False)
class ElfHeader:
    """The fields of Elf64_Ehdr that are not recomputed on write."""

    ident: bytes
    type: int
    machine: int
    version: int = 1
    entry: int = 0
    flags: int = 0


@dataclass(eq=False)
class ElfFile:
    """A relocatable object: header, sections (without the null section)
    and symbols (``symbols[0]`` is the null symbol)."""

    header: ElfHeader
    sections: List[Section] = field(default_factory=list)
    symbols: List[Symbol] = field(default_factory=list)
    symtab: Optional[Section] = None
    shstrtab: Optional[Section] = None
    path: str = "<memory>"

    def section_by_name(self, name: str) -> Optional[Section]:
        """The first section called *name*, or None."""
        for sec in self.sections:
            if sec.name == name:
                return sec
        return None

    def sections_by_name(self) -> Dict[str, Section]:
        """Map of name to section (first one wins for duplicate names)."""
        table: Dict[str, Section] = {}
        for sec in self.sections:
            table.setdefault(sec.name, sec)
        return table

    def rela_sections(self) -> Iterator[Section]:
        """Every SHT_RELA section."""
        return (s for s in self.sections if s.type == SHT_RELA)

    def rela_section_for(self, target: Section) -> Optional[Section]:
        """The ordinary ``.rela`` section applying to *target*, if any."""
        for sec in self.sections:
            if sec.type == SHT_RELA and sec.info is target and not sec.name.startswith(".klp.rela."):
                return sec
        return None

    def symbol_by_name(self, name: str) -> Optional[Symbol]:
        """The first symbol called *name*, or None."""
        for sym in self.symbols:
            if sym.name == name:
                return sym
        return None
