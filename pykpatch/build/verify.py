"""Checking that the original objects are the code the target kernel runs.

A patch built from a source tree that is not the running kernel's would
replace functions with versions of other functions.  Before any module is
made, every function the patch replaces is compared, byte for byte, between
the object we compiled from the unpatched source and the target's own
binary (the debug vmlinux, or the shipped module).  Relocation fields are
masked: the object leaves them to the linker, the binary has them filled.
"""

import mmap
from bisect import bisect_left
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from pykpatch.differ.x86 import DecodeError, decode_all, is_padding_nop, relative_branch
from pykpatch.elf.model import ElfFile, Symbol
from pykpatch.elf.reader import EHDR, SHDR, read_elf
from pykpatch.elf.symtab import SymbolEntry, cached_symbol_table
from pykpatch.kernel.sections import (
    JUMP_ENTRY_CODE_OFFSET, JUMP_LABEL_NOP_AT_BUILD, SPECIAL_SECTIONS, X86_JMPS, X86_NOPS,
)

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


def _build_time_nop_sites(obj: ElfFile, func: Symbol) -> List[int]:
    """Offsets in *func* of static branches that objtool turns into NOPs.

    Where objtool runs only on the linked vmlinux.o or module (IBT, LTO),
    the object still holds the jmp the compiler wrote and the binary the NOP.
    """
    table = obj.section_by_name("__jump_table")
    rela = obj.rela_section_for(table) if table is not None else None
    if rela is None:
        return []
    key_offset = SPECIAL_SECTIONS["__jump_table"].key_offset
    by_offset = {r.offset: r for r in rela.relas}
    sites = []
    for key in rela.relas:
        code = by_offset.get(key.offset - key_offset + JUMP_ENTRY_CODE_OFFSET)
        if (key.offset < key_offset or not key.addend & JUMP_LABEL_NOP_AT_BUILD or code is None
                or code.symbol.section is not func.section):
            continue
        site = code.section_offset - func.value
        if 0 <= site < func.size:
            sites.append(site)
    return sites


def _with_objtool_nops(code: bytes, sites: Sequence[int]) -> bytes:
    """*code* with the jmp at each site turned into the NOP objtool writes there."""
    buf = bytearray(code)
    for site in sites:
        length = X86_JMPS.get(buf[site])
        if length is not None:
            buf[site:site + length] = X86_NOPS[length]
    return bytes(buf)


def _same_apart_from_padding(ours: bytes, theirs: bytes, masks: Sequence[range]) -> bool:
    """Equal once alignment NOPs are left out and branches compared by where
    they land.

    The kernel's build puts all functions of a file in one section, ours
    gives each its own: a function then starts at another offset modulo 32
    or 64, and code aligned to more than the function (a loop, a 64-byte
    aligned block) gets other padding, which moves branch targets and can
    switch jumps between their short and near forms.
    """
    try:
        mine = [i for i in decode_all(ours) if not is_padding_nop(ours, i)]
        other = [i for i in decode_all(theirs) if not is_padding_nop(theirs, i)]
    except DecodeError:
        return False
    if len(mine) != len(other):
        return False
    masked = {b for r in masks for b in r}
    mine_starts, other_starts = [i.offset for i in mine], [i.offset for i in other]
    for a, b in zip(mine, other):
        # The object's relocated bytes of this instruction, from its start.
        relocated = [range(p - a.offset, p - a.offset + 1)
                     for p in masked if a.offset <= p < a.offset + a.length]
        branch_a, branch_b = relative_branch(ours, a), relative_branch(theirs, b)
        if branch_a is not None and branch_b is not None:
            if branch_a[0] != branch_b[0]:
                return False
            if not relocated and (bisect_left(mine_starts, branch_a[1])
                                  != bisect_left(other_starts, branch_b[1])):
                return False
            continue
        if a.length != b.length or branch_a or branch_b:
            return False
        if (_masked(ours[a.offset:a.offset + a.length], relocated)
                != _masked(theirs[b.offset:b.offset + b.length], relocated)):
            return False
    return True


def compare_function(obj: ElfFile, name: str, target: TargetBinary) -> Optional[Mismatch]:
    """None when some same-named function of *target* has the object's code."""
    func = next((s for s in obj.symbols if s.name == name and s.is_func and s.section), None)
    if func is None:
        return None  # not in this object under that name (e.g. a renamed clone)
    masks = _relocation_masks(obj, func)
    ours = _with_objtool_nops(bytes(func.section.data[func.value:func.value + func.size]),
                              _build_time_nop_sites(obj, func))
    theirs = target.candidates(name)
    if not theirs:
        return Mismatch(name, f"no function {name} in {target.path.name}", missing=True)
    for t in theirs:
        code = target.code(t)
        if t.size == func.size and _masked(code, masks) == _masked(ours, masks):
            return None
        if _same_apart_from_padding(ours, code, masks):
            return None
    if not any(t.size == func.size for t in theirs):
        sizes = ", ".join(str(t.size) for t in theirs)
        return Mismatch(name, f"{func.size} bytes here, {sizes} in {target.path.name}")
    return Mismatch(name, f"its code differs from {target.path.name}'s")


def verify_original(obj_path: Path, functions: Sequence[str], target: TargetBinary) -> List[Mismatch]:
    """Mismatches between *functions* of the original object and the target binary."""
    obj = read_elf(obj_path)
    found = (compare_function(obj, name, target) for name in functions)
    return [m for m in found if m is not None]
