"""Read an ELF64 little-endian x86-64 relocatable object into the model.

Every malformed input ends in :class:`~pykpatch.errors.InputError` with one
line naming the file; low-level ``struct``/index errors never escape.
"""

import struct
from pathlib import Path
from typing import List, Optional, Union

from pykpatch.elf.constants import (
    ELFCLASS64, ELFDATA2LSB, ELFMAG, EM_X86_64, ET_REL, SHF_INFO_LINK,
    SHN_LORESERVE, SHN_UNDEF, SHN_XINDEX, SHT_GROUP, SHT_NOBITS, SHT_REL,
    SHT_RELA, SHT_SYMTAB, SHT_SYMTAB_SHNDX,
)
from pykpatch.elf.model import ElfFile, ElfHeader, Rela, Section, Symbol
from pykpatch.errors import InputError

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
SHDR = struct.Struct("<IIQQQQIIQQ")
SYM = struct.Struct("<IBBHQQ")
RELA = struct.Struct("<QQq")

# Section types whose sh_link names another section by index.
_LINKED_TYPES = frozenset({SHT_SYMTAB, SHT_RELA, SHT_REL, SHT_GROUP, SHT_SYMTAB_SHNDX})


# Larger alignments do not occur in kernel objects; refusing them keeps a
# corrupt header from making the writer pad gigabytes.
_MAX_ALIGN = 1 << 24


class _Malformed(Exception):
    """Internal: a structural problem, turned into InputError at the edge."""


def read_elf(path: Union[str, Path], *, require_rel: bool = True) -> ElfFile:
    """Read *path* as an ELF64 LE x86-64 object (ET_REL unless told otherwise).

    :raises InputError: the file is missing, not ELF64 x86-64, not ET_REL
        when *require_rel*, truncated or otherwise malformed.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return parse_elf(data, str(path), require_rel=require_rel)


def parse_elf(data: bytes, name: str = "<memory>", *, require_rel: bool = True) -> ElfFile:
    """Parse ELF bytes; see :func:`read_elf`."""
    check_elf_identity(data, name, require_rel=require_rel)
    try:
        return _parse(memoryview(data), name)
    except (_Malformed, struct.error, IndexError, ValueError, OverflowError) as exc:
        raise InputError(f"{name}: malformed ELF object: {exc}") from exc


def check_elf_identity(data: bytes, name: str, *, require_rel: bool = True) -> None:
    """Refuse anything that is not a little-endian ELF64 x86-64 object."""
    if len(data) < EHDR.size or data[:4] != ELFMAG:
        raise InputError(f"{name}: not an ELF file")
    if data[4] != ELFCLASS64 or data[5] != ELFDATA2LSB:
        raise InputError(f"{name}: not a little-endian ELF64 file")
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    if e_machine != EM_X86_64:
        raise InputError(f"{name}: ELF machine {e_machine} is not x86-64")
    if require_rel and e_type != ET_REL:
        raise InputError(f"{name}: ELF type {e_type} is not a relocatable object (ET_REL)")


def _parse(buf: memoryview, name: str) -> ElfFile:
    (ident, e_type, e_machine, e_version, e_entry, _phoff, e_shoff, e_flags,
     _ehsize, _phentsize, _phnum, e_shentsize, e_shnum, e_shstrndx) = EHDR.unpack_from(buf, 0)
    header = ElfHeader(bytes(ident), e_type, e_machine, e_version, e_entry, e_flags)
    if e_shoff == 0:
        raise _Malformed("no section header table")
    if e_shentsize != SHDR.size:
        raise _Malformed(f"section header size {e_shentsize} is not {SHDR.size}")
    raw = _read_section_headers(buf, e_shoff, e_shnum, e_shstrndx)
    elf = ElfFile(header=header, path=name)
    sections = _make_sections(buf, raw)
    elf.sections = sections[1:]
    shstrndx = raw[0][-1]
    elf.shstrtab = _section_at(sections, shstrndx)
    _name_sections(sections, raw, elf.shstrtab)
    _resolve_links(sections, raw)
    symtabs = [s for s in elf.sections if s.type == SHT_SYMTAB]
    if len(symtabs) > 1:
        raise _Malformed("more than one symbol table")
    if symtabs:
        elf.symtab = symtabs[0]
        elf.symbols = _read_symbols(elf.symtab, sections)
    for sec in elf.sections:
        if sec.type == SHT_RELA:
            sec.relas = _read_relas(sec, elf)
        elif sec.type == SHT_GROUP:
            _read_group(sec, sections, elf)
    return elf


def _read_section_headers(buf: memoryview, shoff: int, shnum: int, shstrndx: int) -> List[tuple]:
    if shoff + SHDR.size > len(buf):
        raise _Malformed("section header table lies past the end of the file (truncated?)")
    first = SHDR.unpack_from(buf, shoff)
    # More than SHN_LORESERVE sections: the real count and string-table
    # index live in section 0 (the SHN_XINDEX escape).
    count = shnum or first[5]
    if shstrndx == SHN_XINDEX:
        shstrndx = first[6]
    if count == 0 or shoff + count * SHDR.size > len(buf):
        raise _Malformed("section header table lies past the end of the file (truncated?)")
    headers = [SHDR.unpack_from(buf, shoff + i * SHDR.size) for i in range(count)]
    headers[0] = headers[0] + (shstrndx,)
    return headers


def _make_sections(buf: memoryview, raw: List[tuple]) -> List[Section]:
    sections = []
    for index, hdr in enumerate(raw):
        (_name, sh_type, flags, addr, offset, size, _link, _info, align, entsize) = hdr[:10]
        if align & (align - 1) or align > _MAX_ALIGN:
            raise _Malformed(f"section {index} has impossible alignment {align:#x}")
        if sh_type == SHT_NOBITS or index == 0:
            data = b""
        else:
            if offset + size > len(buf):
                raise _Malformed(f"section {index} lies past the end of the file (truncated?)")
            data = bytes(buf[offset:offset + size])
        sec = Section(name="", type=sh_type, flags=flags, data=data, align=align,
                      entsize=entsize, addr=addr, index=index, offset=offset)
        if sh_type == SHT_NOBITS:
            sec.nobits_size = size
        sections.append(sec)
    return sections


def _section_at(sections: List[Section], index: int) -> Section:
    if not 0 < index < len(sections):
        raise _Malformed(f"section index {index} out of range")
    return sections[index]


def _cstring(table: bytes, offset: int) -> str:
    if offset >= len(table) and offset:
        raise _Malformed(f"string offset {offset} past the end of its table")
    end = table.find(b"\0", offset)
    if end < 0:
        end = len(table)
    return table[offset:end].decode("utf-8", "surrogateescape")


def _name_sections(sections: List[Section], raw: List[tuple], shstrtab: Section) -> None:
    for sec, hdr in zip(sections[1:], raw[1:]):
        sec.name = _cstring(shstrtab.data, hdr[0])


def _resolve_links(sections: List[Section], raw: List[tuple]) -> None:
    for sec, hdr in zip(sections[1:], raw[1:]):
        link, info = hdr[6], hdr[7]
        if link and (sec.type in _LINKED_TYPES or link < len(sections)):
            sec.link = _section_at(sections, link)
        else:
            sec.link_raw = link
        if sec.type in (SHT_RELA, SHT_REL) or (sec.flags & SHF_INFO_LINK and sec.type != SHT_GROUP):
            # info of a relocation section is its target (0 for dynamic relocs)
            if info:
                sec.info = _section_at(sections, info)
        else:
            sec.info_raw = info
        if sec.type == SHT_SYMTAB:
            sec.info = None


def _read_symbols(symtab: Section, sections: List[Section]) -> List[Symbol]:
    strtab = symtab.link.data if symtab.link else b""
    shndx_table = _xindex_table(symtab, sections)
    symbols = []
    for index, (st_name, info, other, shndx, value, size) in enumerate(SYM.iter_unpack(symtab.data)):
        if shndx == SHN_XINDEX:
            if shndx_table is None or index >= len(shndx_table):
                raise _Malformed(f"symbol {index} uses SHN_XINDEX without a SYMTAB_SHNDX entry")
            shndx = shndx_table[index]
            section: Optional[Section] = _section_at(sections, shndx)
            special = 0
        elif shndx == SHN_UNDEF or shndx >= SHN_LORESERVE:
            section, special = None, shndx
        else:
            section, special = _section_at(sections, shndx), 0
        symbols.append(Symbol(name=_cstring(strtab, st_name), bind=info >> 4, type=info & 0xF,
                              other=other, section=section, shndx=special, value=value,
                              size=size, index=index))
    if not symbols:
        raise _Malformed("empty symbol table")
    return symbols


def _xindex_table(symtab: Section, sections: List[Section]) -> Optional[List[int]]:
    for sec in sections[1:]:
        if sec.type == SHT_SYMTAB_SHNDX and sec.link is symtab:
            return [v for (v,) in struct.iter_unpack("<I", sec.data[: len(sec.data) // 4 * 4])]
    return None


def _read_relas(sec: Section, elf: ElfFile) -> List[Rela]:
    if sec.link is not elf.symtab or elf.symtab is None:
        raise _Malformed(f"relocation section {sec.name} is not linked to the symbol table")
    if len(sec.data) % RELA.size:
        raise _Malformed(f"relocation section {sec.name} has a partial entry")
    symbols = elf.symbols
    count = len(symbols)
    relas = []
    for offset, info, addend in RELA.iter_unpack(sec.data):
        index = info >> 32
        if index >= count:
            raise _Malformed(f"relocation in {sec.name} names symbol {index} of {count}")
        relas.append(Rela(offset, info & 0xFFFFFFFF, symbols[index], addend))
    return relas


def _read_group(sec: Section, sections: List[Section], elf: ElfFile) -> None:
    words = [v for (v,) in struct.iter_unpack("<I", sec.data[: len(sec.data) // 4 * 4])]
    if not words:
        raise _Malformed(f"group section {sec.name} is empty")
    sec.group_flags = words[0]
    sec.group_members = [_section_at(sections, i) for i in words[1:]]
    if sec.info_raw >= len(elf.symbols):
        raise _Malformed(f"group section {sec.name} names symbol {sec.info_raw}")
    sec.group_signature = elf.symbols[sec.info_raw]
