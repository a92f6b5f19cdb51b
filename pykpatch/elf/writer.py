"""Write the model back to an ELF64 relocatable object.

Everything positional is recomputed here: symbol order (locals first, with
the symbol table's ``sh_info``), section indices, string tables, file
offsets and alignment, SHN_XINDEX escapes and group member lists.  Sections
read from a file keep their original file order and string tables keep
their original bytes when every name is still found in them, so an
unchanged read/write round trip reproduces the input's ``readelf -a``.
"""

import struct
from pathlib import Path
from typing import Dict, List, Optional, Union

from pykpatch.elf.constants import (
    SHN_LORESERVE, SHN_XINDEX, SHT_GROUP, SHT_NOBITS, SHT_RELA,
    SHT_STRTAB, SHT_SYMTAB_SHNDX, STB_LOCAL,
)
from pykpatch.elf.model import ElfFile, Section, Symbol
from pykpatch.elf.reader import EHDR, RELA, SHDR, SYM


class StringTable:
    """Builds a string table, reusing an original table when possible."""

    def __init__(self, original: bytes = b"") -> None:
        self._original = original
        self._known: Dict[str, int] = {}
        self._extra = bytearray()
        self._whole: Optional[Dict[bytes, int]] = None
        if not original:
            self._extra.append(0)

    def offset(self, name: str) -> int:
        """Offset of *name*, added to the table if needed."""
        if not name:
            return 0
        if name in self._known:
            return self._known[name]
        raw = name.encode("utf-8", "surrogateescape")
        pos = self._find_original(raw)
        if pos < 0:
            pos = len(self._original) + len(self._extra)
            self._extra += raw + b"\0"
        self._known[name] = pos
        return pos

    def _find_original(self, raw: bytes) -> int:
        if self._whole is None:
            self._whole = {}
            start = 0
            for piece in self._original.split(b"\0"):
                self._whole.setdefault(piece, start)
                start += len(piece) + 1
        pos = self._whole.get(raw)
        if pos is not None:
            return pos
        # A suffix of a longer string is a valid offset too (gas shares them).
        return self._original.find(raw + b"\0") if raw else 0

    def data(self) -> bytes:
        """The finished table."""
        return bytes(self._original) + bytes(self._extra)


def write_elf(elf: ElfFile, path: Union[str, Path]) -> None:
    """Write *elf* to *path* (see the module docstring for what is recomputed)."""
    Path(path).write_bytes(serialize_elf(elf))


def serialize_elf(elf: ElfFile) -> bytes:
    """Return *elf* as ELF bytes."""
    _order_symbols(elf)
    _number_sections(elf)
    _ensure_xindex_section(elf)
    _number_sections(elf)
    _build_string_tables(elf)
    _build_symbol_table(elf)
    for sec in elf.sections:
        if sec.type == SHT_RELA:
            sec.data = b"".join(RELA.pack(r.offset, (r.symbol.index << 32) | r.type, r.addend)
                                for r in sec.relas)
        elif sec.type == SHT_GROUP:
            sec.data = struct.pack(f"<{1 + len(sec.group_members)}I", sec.group_flags,
                                   *(m.index for m in sec.group_members))
    return _layout_and_pack(elf)


def _order_symbols(elf: ElfFile) -> None:
    if not elf.symbols:
        return
    null, rest = elf.symbols[0], elf.symbols[1:]
    locals_ = [s for s in rest if s.bind == STB_LOCAL]
    others = [s for s in rest if s.bind != STB_LOCAL]
    elf.symbols = [null] + locals_ + others
    for index, sym in enumerate(elf.symbols):
        sym.index = index


def _number_sections(elf: ElfFile) -> None:
    for index, sec in enumerate(elf.sections, start=1):
        sec.index = index


def _needs_xindex(elf: ElfFile) -> bool:
    return len(elf.sections) + 1 >= SHN_LORESERVE


def _ensure_xindex_section(elf: ElfFile) -> None:
    if elf.symtab is None or not _needs_xindex(elf):
        return
    if any(s.type == SHT_SYMTAB_SHNDX and s.link is elf.symtab for s in elf.sections):
        return
    shndx = Section(name=".symtab_shndx", type=SHT_SYMTAB_SHNDX, align=4, entsize=4,
                    link=elf.symtab)
    elf.sections.insert(elf.sections.index(elf.symtab) + 1, shndx)


def _build_string_tables(elf: ElfFile) -> None:
    if elf.shstrtab is None:
        elf.shstrtab = Section(name=".shstrtab", type=SHT_STRTAB)
        elf.sections.append(elf.shstrtab)
        _number_sections(elf)
    shstr = _reusable_table(elf.shstrtab, [s.name for s in elf.sections])
    for sec in elf.sections:
        sec_name_offsets[id(sec)] = shstr.offset(sec.name)
    elf.shstrtab.data = shstr.data()
    if elf.symtab is not None:
        strtab = elf.symtab.link
        if strtab is None or strtab is elf.shstrtab:
            strtab = Section(name=".strtab", type=SHT_STRTAB)
            elf.sections.insert(elf.sections.index(elf.symtab) + 1, strtab)
            elf.symtab.link = strtab
            _number_sections(elf)
            sec_name_offsets[id(strtab)] = shstr.offset(strtab.name)
            elf.shstrtab.data = shstr.data()
        table = _reusable_table(strtab, [s.name for s in elf.symbols])
        for sym in elf.symbols:
            sym_name_offsets[id(sym)] = table.offset(sym.name)
        strtab.data = table.data()


# Name offsets of the serialization in progress (keyed by record identity so
# the records themselves carry no file-format state).
sec_name_offsets: Dict[int, int] = {}
sym_name_offsets: Dict[int, int] = {}


def _reusable_table(sec: Section, names: List[str]) -> StringTable:
    """Reuse the section's bytes if they still hold every name, else start fresh."""
    if sec.data and sec.offset is not None:
        table = StringTable(sec.data)
        wanted = set(n for n in names if n)
        if all(table._find_original(n.encode("utf-8", "surrogateescape")) >= 0 for n in wanted):
            return table
    return StringTable()


def _build_symbol_table(elf: ElfFile) -> None:
    symtab = elf.symtab
    if symtab is None:
        return
    symtab.entsize = SYM.size
    symtab.info_raw = sum(1 for s in elf.symbols if s.bind == STB_LOCAL)
    big = _needs_xindex(elf)
    entries = []
    xindex: List[int] = []
    for sym in elf.symbols:
        shndx, extended = _symbol_shndx(sym, big)
        xindex.append(extended)
        entries.append(SYM.pack(sym_name_offsets[id(sym)], (sym.bind << 4) | (sym.type & 0xF),
                                sym.other, shndx, sym.value, sym.size))
    symtab.data = b"".join(entries)
    for sec in elf.sections:
        if sec.type == SHT_SYMTAB_SHNDX and sec.link is symtab:
            sec.data = struct.pack(f"<{len(xindex)}I", *xindex)


def _symbol_shndx(sym: Symbol, big: bool) -> "tuple[int, int]":
    if sym.section is None:
        return sym.shndx, 0
    index = sym.section.index
    if index >= SHN_LORESERVE or (big and index >= SHN_LORESERVE):
        return SHN_XINDEX, index
    return index, 0


def _align(value: int, alignment: int) -> int:
    if alignment <= 1:
        return value
    return (value + alignment - 1) // alignment * alignment


def _file_order(elf: ElfFile) -> List[Section]:
    """Sections read from a file keep their file order; new ones follow."""
    old = sorted((s for s in elf.sections if s.offset is not None), key=lambda s: (s.offset, s.index))
    new = [s for s in elf.sections if s.offset is None]
    return old + new


def _layout_and_pack(elf: ElfFile) -> bytes:
    out = bytearray(EHDR.size)
    offsets: Dict[int, int] = {}
    for sec in _file_order(elf):
        pos = _align(len(out), sec.align)
        # Keep an input's own placement when it still fits (LLVM aligns
        # file offsets less than sh_addralign asks), else align afresh.
        if sec.offset is not None and len(out) <= sec.offset <= pos:
            pos = sec.offset
        offsets[id(sec)] = pos
        # like gas, pad up to a NOBITS section's alignment too
        out += b"\0" * (pos - len(out))
        if sec.type != SHT_NOBITS:
            out += sec.data
    shoff = _align(len(out), 8)
    out += b"\0" * (shoff - len(out))
    count = len(elf.sections) + 1
    big = count >= SHN_LORESERVE
    shstrndx = elf.shstrtab.index if elf.shstrtab else 0
    out += SHDR.pack(0, 0, 0, 0, 0, count if big else 0,
                     shstrndx if shstrndx >= SHN_LORESERVE else 0, 0, 0, 0)
    for sec in elf.sections:
        out += SHDR.pack(sec_name_offsets.get(id(sec), 0), sec.type, sec.flags, sec.addr,
                         offsets[id(sec)], sec.size, _link_of(sec), _info_of(sec),
                         sec.align, sec.entsize)
    EHDR.pack_into(out, 0, elf.header.ident, elf.header.type, elf.header.machine,
                   elf.header.version, elf.header.entry, 0, shoff, elf.header.flags,
                   EHDR.size, 0, 0, SHDR.size, 0 if big else count,
                   SHN_XINDEX if shstrndx >= SHN_LORESERVE else shstrndx)
    for sec in elf.sections:
        sec.offset = offsets[id(sec)]
    sec_name_offsets.clear()
    sym_name_offsets.clear()
    return bytes(out)


def _link_of(sec: Section) -> int:
    return sec.link.index if sec.link is not None else sec.link_raw


def _info_of(sec: Section) -> int:
    if sec.type == SHT_GROUP:
        return sec.group_signature.index if sec.group_signature else 0
    if sec.info is not None:
        return sec.info.index
    return sec.info_raw
