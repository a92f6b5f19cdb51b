"""Our own ELF64 x86-64 relocatable-object reader/writer (struct only)."""

from pykpatch.elf.model import ElfFile, Rela, Section, Symbol
from pykpatch.elf.reader import read_elf
from pykpatch.elf.writer import write_elf

__all__ = ["ElfFile", "Rela", "Section", "Symbol", "read_elf", "write_elf"]
