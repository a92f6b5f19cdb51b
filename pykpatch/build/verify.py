"""Checking that the original objects are the code the target kernel runs.

A patch built from a source tree that is not the running kernel's would
replace functions with versions of other functions.  Before any module is
made, every function the patch replaces is compared, byte for byte, between
the object we compiled from the unpatched source and the target's own
binary (the debug vmlinux, or the shipped module).  Relocation fields are
masked: the object leaves them to the linker, the binary has them filled.
"""

import mmap
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from pykpatch.elf.model import ElfFile, Symbol
from pykpatch.elf.reader import EHDR, SHDR, read_elf
from pykpatch.elf.symtab import SymbolEntry, cached_symbol_table

STT_FUNC = 2
_RELOC_WIDTH = {1: 8, 2: 4, 4: 4, 9: 4, 10: 4, 11: 4, 24: 8, 42: 4}  # x86-64 type -> bytes


@dataclass
class Mismatch:
    function: str
    why: str
    missing: bool = False  # the binary has no function of that name at all


class TargetBinary:
    """Function bytes of a vmlinux or .ko, by symbol, read through mmap."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._symbols: Optional[Dict[str, List[SymbolEntry]]] = None
        self._headers: Optional[List[tuple]] = None

    def _load(self) -> None:
        self._symbols = {}
        for sym in cached_symbol_table(self.path):
            if sym.type == STT_FUNC:
                self._symbols.setdefault(sym.name, []).append(sym)
        with open(self.path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            header = EHDR.unpack_from(mm, 0)
            shoff, shnum = header[6], header[12]
            self._headers = [SHDR.unpack_from(mm, shoff + i * SHDR.size) for i in range(shnum)]

    def candidates(self, name: str) -> List[SymbolEntry]:
        if self._symbols is None:
            self._load()
        return self._symbols.get(name, [])

    def file_offset(self, sym: SymbolEntry) -> int:
        """Where *sym*'s bytes are in the file."""
        if self._headers is None:
            self._load()
        _name, _type, _flags, addr, offset = self._headers[sym.shndx][:5]
        return sym.value - addr + offset

    def code(self, sym: SymbolEntry) -> bytes:
        with open(self.path, "rb") as fh:
            fh.seek(self.file_offset(sym))
            return fh.read(sym.size)


def _masked(code: bytes, masks: Sequence[range]) -> bytes:
    buf = bytearray(code)
    for r in masks:
        for i in r:
            if 0 <= i < len(buf):
                buf[i] = 0
    return bytes(buf)


def _relocation_masks(obj: ElfFile, func: Symbol) -> List[range]:
    rela = obj.rela_section_for(func.section) if func.section is not None else None
    masks = []
    for r in (rela.relas if rela else []):
        if func.value <= r.offset < func.value + func.size:
            start = r.offset - func.value
            masks.append(range(start, start + _RELOC_WIDTH.get(r.type, 4)))
    return masks


def compare_function(obj: ElfFile, name: str, target: TargetBinary) -> Optional[Mismatch]:
    """None when some same-named function of *target* has the object's code."""
    func = next((s for s in obj.symbols if s.name == name and s.is_func and s.section), None)
    if func is None:
        return None  # not in this object under that name (e.g. a renamed clone)
    ours = bytes(func.section.data[func.value:func.value + func.size])
    masks = _relocation_masks(obj, func)
    theirs = target.candidates(name)
    if not theirs:
        return Mismatch(name, f"no function {name} in {target.path.name}", missing=True)
    same_size = [t for t in theirs if t.size == func.size]
    if not same_size:
        sizes = ", ".join(str(t.size) for t in theirs)
        return Mismatch(name, f"{func.size} bytes here, {sizes} in {target.path.name}")
    for t in same_size:
        if _masked(target.code(t), masks) == _masked(ours, masks):
            return None
    return Mismatch(name, f"its code differs from {target.path.name}'s")


def verify_original(obj_path: Path, functions: Sequence[str], target: TargetBinary) -> List[Mismatch]:
    """Mismatches between *functions* of the original object and the target binary."""
    obj = read_elf(obj_path)
    found = (compare_function(obj, name, target) for name in functions)
    return [m for m in found if m is not None]
