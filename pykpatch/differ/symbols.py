"""The target's symbol table: where a referenced kernel symbol lives.

Answers two questions for the klp stage: is the name exported (it then
stays a normal relocation) and what is its ``sympos`` -- the 1-based rank,
by address, of this symbol among the target's symbols of the same name, or
0 when the name is unique.  Duplicate local names (every file may have a
static ``show``) are told apart by the FILE symbol that precedes a file's
locals in vmlinux; an unresolvable ambiguity is an error, never a guess.

Sources: an ELF file (vmlinux, a module ``.ko``, or the object itself),
``readelf -s --wide`` text, or ``/proc/kallsyms`` text.  Debian's shipped
modules have no FILE symbols; for a module, its own table is the object.
"""

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set

from pykpatch.cache import once_per_file_version
from pykpatch.elf.constants import (
    ELFMAG, SHN_ABS, SHN_UNDEF, STB_GLOBAL, STB_LOCAL, STB_WEAK, STT_FILE, STT_FUNC,
    STT_NOTYPE, STT_OBJECT, STT_SECTION,
)
from pykpatch.elf.model import ElfFile
from pykpatch.elf.symtab import cached_symbol_table
from pykpatch.errors import InputError
from pykpatch.kernel.symvers import read_symvers

_BINDS = {"LOCAL": STB_LOCAL, "GLOBAL": STB_GLOBAL, "WEAK": STB_WEAK}
_TYPES = {"NOTYPE": STT_NOTYPE, "OBJECT": STT_OBJECT, "FUNC": STT_FUNC, "SECTION": STT_SECTION,
          "FILE": STT_FILE}
_READELF_LINE = re.compile(
    r"^\s*\d+:\s+([0-9a-fA-F]+)\s+(\S+)\s+(\w+)\s+(\w+)\s+\w+\s+(\S+)\s*(.*)$")


class AmbiguousSymbol(InputError):
    """Several target symbols share a name and the table cannot tell which
    one the object means (a table without FILE symbols, e.g. a shipped .ko)."""

    def __init__(self, source: str, name: str, count: int) -> None:
        super().__init__(f"{source}: {count} symbols named {name!r} and nothing says which one "
                         "the patched object means; pass the vmlinux/module with FILE symbols "
                         "via --symbols")
        self.name = name


@dataclass(frozen=True)
class TargetSymbol:
    """One defined symbol of the target; *file* is the FILE block of a local."""

    name: str
    address: int
    bind: int
    type: int
    file: Optional[str]
    block: int = -1  # which FILE block (several files share a name: route.c)


@dataclass
class TargetSymbols:
    """Lookup tables over a target's symbols (see module doc)."""

    source: str
    by_name: Dict[str, List[TargetSymbol]] = field(default_factory=dict)
    exported: Set[str] = field(default_factory=set)
    has_files: bool = False
    block_locals: Dict[int, Set[str]] = field(default_factory=dict)

    def add(self, sym: TargetSymbol) -> None:
        self.by_name.setdefault(sym.name, []).append(sym)
        self.has_files |= sym.file is not None
        if sym.block >= 0:
            self.block_locals.setdefault(sym.block, set()).add(sym.name)

    def find(self, name: str) -> List[TargetSymbol]:
        """Every defined symbol called *name*."""
        return self.by_name.get(name, [])

    def is_exported(self, name: str) -> bool:
        """True when Module.symvers lists *name*."""
        return name in self.exported

    def sympos(self, name: str, local: bool, files: Iterable[str] = (),
               neighbours: Iterable[str] = ()) -> Optional[int]:
        """The klp sympos of *name*, or None when the target lacks it.

        :param local: look for a local (file-scope) symbol.
        :param files: FILE symbol names of the object the reference comes
            from; used to pick among same-named locals.
        :param neighbours: names of that object's own local symbols; when
            several FILE blocks share the file name (net/ipv4/route.c and
            net/ipv6/route.c), the block holding most of them is the object.
        :raises AmbiguousSymbol: several candidates and nothing tells them apart.
        """
        candidates = self.find(name)
        if not candidates:
            return None
        if len(candidates) == 1:
            return 0
        ranked = sorted(candidates, key=lambda s: s.address)
        wanted = [s for s in candidates if (s.bind == STB_LOCAL) == local]
        if len(wanted) > 1 and local and self.has_files:
            names = set(files)
            wanted = [s for s in wanted if s.file in names]
        if len(wanted) > 1:
            wanted = self._closest_blocks(wanted, set(neighbours))
        if len(wanted) != 1:
            raise AmbiguousSymbol(self.source, name, len(wanted) or len(candidates))
        return ranked.index(wanted[0]) + 1


    def _closest_blocks(self, candidates: List[TargetSymbol], neighbours: Set[str]
                        ) -> List[TargetSymbol]:
        """The candidates whose FILE block shares the most local names with the object."""
        if not neighbours:
            return candidates
        scores = [len(self.block_locals.get(c.block, set()) & neighbours) for c in candidates]
        best = max(scores)
        return [c for c, score in zip(candidates, scores) if score == best]


def load_target_symbols(path: Optional[str], fallback: ElfFile, symvers: Optional[str]) -> TargetSymbols:
    """Read the target's table from *path* (ELF or text), else use *fallback*.

    :raises InputError: unreadable or unrecognised files.
    """
    table = _from_model(fallback) if path is None else read_target_symbols(path)
    if symvers is not None:
        table = replace(table, exported=set(read_symvers(symvers)))
    return table


def _from_path(path: str) -> TargetSymbols:
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise InputError(f"{path}: cannot read symbols: {exc.strerror or exc}") from exc
    if head == ELFMAG:
        return _from_entries(path, ((e.name, e.value, e.bind, e.type, e.shndx)
                                    for e in cached_symbol_table(path)))
    text = Path(path).read_text(errors="replace")
    if "Symbol table" in text or re.search(_READELF_LINE.pattern, text[:20000], re.M):
        return _from_readelf_text(path, text)
    return _from_kallsyms_text(path, text)


# The tables of vmlinux take 2 s to read; a build reads them once, maybe
# ahead of the diff.  Callers get them shared: they must not modify them.
read_target_symbols = once_per_file_version(_from_path)


def _from_model(elf: ElfFile) -> TargetSymbols:
    entries = []
    for sym in elf.symbols[1:]:
        shndx = sym.section.index if sym.section is not None else sym.shndx
        entries.append((sym.name, sym.value, sym.bind, sym.type, shndx))
    return _from_entries(elf.path, entries)


def _from_entries(source: str, entries: Iterable[tuple]) -> TargetSymbols:
    table = TargetSymbols(source)
    current_file: Optional[str] = None
    block = -1
    for name, value, bind, type_, shndx in entries:
        if type_ == STT_FILE:
            current_file = name
            block += 1
            continue
        if not name or type_ == STT_SECTION or shndx == SHN_UNDEF:
            continue
        local = bind == STB_LOCAL
        table.add(TargetSymbol(name, value, bind, type_, current_file if local else None,
                               block if local and current_file is not None else -1))
    return table


def _from_readelf_text(source: str, text: str) -> TargetSymbols:
    entries = []
    for line in text.splitlines():
        match = _READELF_LINE.match(line)
        if not match:
            continue
        value, _size, type_, bind, ndx, name = match.groups()
        shndx = SHN_UNDEF if ndx == "UND" else (SHN_ABS if ndx == "ABS" else 1)
        entries.append((name.split("@")[0].strip(), int(value, 16), _BINDS.get(bind, STB_GLOBAL),
                        _TYPES.get(type_, STT_NOTYPE), shndx))
    if not entries:
        raise InputError(f"{source}: no symbols found (expected readelf -s --wide output)")
    return _from_entries(source, entries)


def _from_kallsyms_text(source: str, text: str) -> TargetSymbols:
    table = TargetSymbols(source)
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3 or len(parts[1]) != 1:
            continue
        try:
            address = int(parts[0], 16)
        except ValueError:
            continue
        if len(parts) > 3:  # "[module]": not the core kernel
            continue
        letter = parts[1]
        bind = STB_LOCAL if letter.islower() else STB_GLOBAL
        type_ = STT_FUNC if letter in "tTwW" else STT_OBJECT
        table.add(TargetSymbol(parts[2], address, bind, type_, None))
    if not table.by_name:
        raise InputError(f"{source}: not an ELF file, readelf -s text or kallsyms text")
    return table
