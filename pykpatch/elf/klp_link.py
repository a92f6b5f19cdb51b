"""Carry klp relocations through the kbuild link and restore them after.

GNU ld does not understand ``SHF_RELA_LIVEPATCH`` sections or
``SHN_LIVEPATCH`` symbols (``ld -r`` turns them into garbage), so:

* :func:`to_linkable` (before the link) folds every ``.klp.rela.<obj>.<sec>``
  back into the ordinary ``.rela<sec>`` against *undefined* symbols still
  named ``.klp.sym.<sym_obj>.<name>,<pos>``, which ld keeps as they are;
* :func:`from_linkable` (on the linked ``.ko``) moves every relocation whose
  symbol is a ``.klp.sym.*`` name back out into ``.klp.rela.<obj>.<sec>``
  and marks those symbols ``SHN_LIVEPATCH``.  Nothing else changes.

The section's object (whose load resolves the relocation) is usually the
symbol's own; where it is not -- a module's code calling another module's
export: ``.klp.sym.sunrpc.svc_reserve,0`` in ``.klp.rela.nfsd.*`` -- the
linkable symbol name carries it after :data:`LINK_OBJECT_MARK`.
"""

import dataclasses
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple, Union

from pykpatch.elf.constants import SHF_ALLOC, SHF_INFO_LINK, SHN_UNDEF, SHT_RELA, STB_GLOBAL
from pykpatch.elf.model import ElfFile, Rela, Section, Symbol
from pykpatch.elf.reader import read_elf
from pykpatch.elf.writer import write_elf
from pykpatch.errors import InputError
from pykpatch.kernel.livepatch import (
    KLP_RELA_PREFIX, KLP_SYM_PREFIX, SHF_RELA_LIVEPATCH, SHN_LIVEPATCH, klp_rela_section_name,
    klp_rela_section_objname, parse_klp_symbol_name,
)


def is_klp_rela_section(sec: Section) -> bool:
    """A final-form klp relocation section."""
    return sec.type == SHT_RELA and (bool(sec.flags & SHF_RELA_LIVEPATCH)
                                     or sec.name.startswith(KLP_RELA_PREFIX))


# Between a klp symbol's name and the object of the section its relocation
# was in, in the linkable form only (the kernel never sees it).
LINK_OBJECT_MARK = ":in:"


def to_linkable(elf: ElfFile) -> None:
    """Rewrite *elf* in place so ``ld -r``/kbuild keep its klp relocations."""
    renamed: Dict[Tuple[Symbol, str], Symbol] = {}
    for klp_sec in [s for s in elf.sections if is_klp_rela_section(s)]:
        target = klp_sec.info
        if target is None:
            raise InputError(f"{elf.path}: {klp_sec.name} names no target section")
        section_obj = klp_rela_section_objname(klp_sec.name)
        for rela in klp_sec.relas:
            if _objname(elf, rela.symbol.name) != section_obj:
                rela.symbol = _carrying_object(elf, rela.symbol, section_obj, renamed)
        normal = elf.rela_section_for(target)
        if normal is None:
            normal = Section(name=".rela" + target.name, type=SHT_RELA, flags=SHF_INFO_LINK,
                             align=8, entsize=24, link=elf.symtab, info=target)
            elf.sections.insert(elf.sections.index(klp_sec), normal)
        normal.relas.extend(klp_sec.relas)
        elf.sections.remove(klp_sec)
    _drop_unused({original for original, _ in renamed}, elf)
    for sym in elf.symbols:
        if sym.section is None and sym.shndx == SHN_LIVEPATCH:
            sym.shndx = SHN_UNDEF
            sym.bind = STB_GLOBAL


def _carrying_object(elf: ElfFile, sym: Symbol, section_obj: str,
                     renamed: Dict[Tuple[Symbol, str], Symbol]) -> Symbol:
    """A copy of *sym* whose name also says which object's section uses it."""
    key = (sym, section_obj)
    if key not in renamed:
        copy = dataclasses.replace(sym, name=f"{sym.name}{LINK_OBJECT_MARK}{section_obj}")
        elf.symbols.append(copy)
        renamed[key] = copy
    return renamed[key]


def _drop_unused(candidates: Set[Symbol], elf: ElfFile) -> None:
    used = {rela.symbol for sec in elf.sections if sec.type == SHT_RELA for rela in sec.relas}
    elf.symbols = [s for s in elf.symbols if s not in candidates or s in used]


def from_linkable_elf(elf: ElfFile) -> int:
    """Move ``.klp.sym.*`` relocations of *elf* into klp sections; return how many."""
    moved = 0
    for rela_sec in [s for s in elf.sections if s.type == SHT_RELA and not is_klp_rela_section(s)]:
        keep: List[Rela] = []
        split: Dict[str, List[Rela]] = {}
        for rela in rela_sec.relas:
            if rela.symbol.name.startswith(KLP_SYM_PREFIX) and rela.symbol.section is None:
                split.setdefault(_section_objname(elf, rela.symbol), []).append(rela)
            else:
                keep.append(rela)
        if not split:
            continue
        target = rela_sec.info
        assert target is not None
        position = elf.sections.index(rela_sec) + 1
        for objname, relas in sorted(split.items()):
            elf.sections.insert(position, Section(
                name=klp_rela_section_name(objname, target.name), type=SHT_RELA,
                flags=SHF_ALLOC | SHF_RELA_LIVEPATCH, align=8, entsize=24, link=elf.symtab,
                info=target, relas=relas))
            moved += len(relas)
        rela_sec.relas = keep
        if not keep:
            elf.sections.remove(rela_sec)
    for sym in elf.symbols:
        if sym.name.startswith(KLP_SYM_PREFIX) and sym.section is None:
            sym.name = sym.name.partition(LINK_OBJECT_MARK)[0]
            sym.shndx = SHN_LIVEPATCH
    return moved


def _section_objname(elf: ElfFile, sym: Symbol) -> str:
    """The object whose klp section a linked relocation against *sym* belongs in."""
    name, mark, section_obj = sym.name.partition(LINK_OBJECT_MARK)
    return section_obj if mark else _objname(elf, name)


def _objname(elf: ElfFile, name: str) -> str:
    try:
        return parse_klp_symbol_name(name)[0]
    except ValueError as exc:
        raise InputError(f"{elf.path}: malformed klp symbol name {name!r}") from exc


def from_linkable(ko_path: Union[str, Path], out_path: Optional[Union[str, Path]] = None) -> int:
    """Restore klp relocations in a linked ``.ko`` (in place unless *out_path*).

    :returns: the number of relocations moved.
    :raises InputError: the file is not an x86-64 relocatable ELF.
    """
    elf = read_elf(ko_path)
    moved = from_linkable_elf(elf)
    write_elf(elf, out_path or ko_path)
    return moved
