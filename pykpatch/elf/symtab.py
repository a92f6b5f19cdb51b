"""Read only the symbol table of a (possibly huge) ELF64 file, quickly.

The Debian debug vmlinux is ~590 MB; parsing all of it would take seconds.
Here the file is mmapped and only the section headers, ``.symtab`` and its
string table are touched.
"""

import mmap
import struct
from pathlib import Path
from typing import List, NamedTuple, Sequence, Union

from pykpatch.cache import once_per_file_version
from pykpatch.elf.constants import SHN_XINDEX, SHT_SYMTAB, SHT_SYMTAB_SHNDX
from pykpatch.elf.reader import EHDR, SHDR, SYM, check_elf_identity
from pykpatch.errors import InputError


class SymbolEntry(NamedTuple):
    """One symbol as read from a symbol table (indices kept raw)."""

    name: str
    value: int
    size: int
    bind: int
    type: int
    shndx: int


def read_symbol_table(path: Union[str, Path]) -> List[SymbolEntry]:
    """All symbols of *path*'s ``.symtab`` (any ELF64 x86-64 type), in order.

    :raises InputError: not an ELF64 x86-64 file, truncated, or no .symtab.
    """
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            check_elf_identity(mm[:EHDR.size], str(path), require_rel=False)
            try:
                return _read(memoryview(mm), str(path))
            except (struct.error, IndexError, ValueError) as exc:
                raise InputError(f"{path}: malformed ELF symbol table: {exc}") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except ValueError as exc:  # mmap of an empty file
        raise InputError(f"{path}: not an ELF file ({exc})") from exc


def cached_symbol_table(path: Union[str, Path]) -> Sequence[SymbolEntry]:
    """:func:`read_symbol_table`, read once per version of the file (do not modify it).

    One build reads the vmlinux's 116,000 symbols for the differ's klp
    relocations and again to check the original code: half a second each.
    """
    try:
        return _symbol_table_once(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from exc


@once_per_file_version
def _symbol_table_once(path: str) -> Sequence[SymbolEntry]:
    return tuple(read_symbol_table(path))


def _read(view: memoryview, name: str) -> List[SymbolEntry]:
    try:
        header = EHDR.unpack_from(view, 0)
        shoff, shnum = header[6], header[12]
        if shnum == 0:
            shnum = SHDR.unpack_from(view, shoff)[5]
        headers = [SHDR.unpack_from(view, shoff + i * SHDR.size) for i in range(shnum)]
        symtab_index = next((i for i, h in enumerate(headers) if h[1] == SHT_SYMTAB), None)
        if symtab_index is None:
            raise InputError(f"{name}: has no symbol table (stripped?)")
        symtab = headers[symtab_index]
        strtab = headers[symtab[6]]
        sym_data = _slice(view, symtab[4], symtab[5], name)
        str_data = bytes(_slice(view, strtab[4], strtab[5], name))
        xindex = _xindex(view, headers, symtab_index, name)
        try:
            return _entries(sym_data, str_data, xindex)
        finally:
            sym_data.release()
    finally:
        view.release()


def _slice(view: memoryview, offset: int, size: int, name: str) -> memoryview:
    if offset + size > len(view):
        raise InputError(f"{name}: symbol table lies past the end of the file (truncated?)")
    return view[offset:offset + size]


def _xindex(view: memoryview, headers: list, symtab_index: int, name: str) -> List[int]:
    for h in headers:
        if h[1] == SHT_SYMTAB_SHNDX and h[6] == symtab_index:
            return [v for (v,) in struct.iter_unpack("<I", _slice(view, h[4], h[5], name))]
    return []


def _entries(sym_data: memoryview, strtab: bytes, xindex: List[int]) -> List[SymbolEntry]:
    find = strtab.find
    out: List[SymbolEntry] = []
    append = out.append
    usable = len(sym_data) // SYM.size * SYM.size
    for i, (st_name, info, _other, shndx, value, size) in enumerate(SYM.iter_unpack(sym_data[:usable])):
        end = find(b"\0", st_name)
        text = strtab[st_name:end].decode("utf-8", "surrogateescape")
        if shndx == SHN_XINDEX and i < len(xindex):
            shndx = xindex[i]
        append(SymbolEntry(text, value, size, info >> 4, info & 0xF, shndx))
    return out
