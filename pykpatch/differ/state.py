"""What the differ's stages share: the two objects and the decisions so far.

Glossary (used in every stage):

* **twin** -- the original and patched copies of the same section or symbol.
* **owner** -- the symbol a section was made for (``foo`` owns ``.text.foo``
  under ``-ffunction-sections``); the section follows its owner.
* **status** -- SAME, CHANGED or NEW, for patched sections and symbols.
* **included** -- patched sections and symbols that go into the output;
  a symbol included without its section becomes an undefined reference.
"""

from dataclasses import dataclass, field
from functools import cached_property
from enum import Enum
from typing import TYPE_CHECKING, Callable, Dict, FrozenSet, List, Optional, Set

from pykpatch.elf.model import ElfFile, Rela, Section, Symbol

if TYPE_CHECKING:
    from pykpatch.differ.symbols import TargetSymbols


class Status(Enum):
    """Whether a patched record differs from its twin."""

    SAME = "same"
    CHANGED = "changed"
    NEW = "new"


@dataclass(eq=False)
class DiffObject:
    """One input object plus the indices the stages keep asking for."""

    elf: ElfFile
    path: str
    owner: Dict[Section, Symbol] = field(default_factory=dict)
    section_symbol: Dict[Section, Symbol] = field(default_factory=dict)
    rela_of: Dict[Section, Section] = field(default_factory=dict)
    parent: Dict[Symbol, Symbol] = field(default_factory=dict)
    children: Dict[Symbol, List[Symbol]] = field(default_factory=dict)
    prefix_of: Dict[Symbol, Symbol] = field(default_factory=dict)  # func -> its __pfx_ symbol
    has_fentry: Set[Symbol] = field(default_factory=set)

    @cached_property
    def file_names(self) -> List[str]:
        """FILE symbol names (which source files the object is built from)."""
        return [s.name for s in self.elf.symbols if s.is_file]

    @cached_property
    def local_names(self) -> Set[str]:
        """Names of the object's own local functions and data."""
        return {s.name for s in self.elf.symbols
                if s.is_local and (s.is_func or s.is_object) and s.section is not None}

    def relas(self, sec: Section) -> List[Rela]:
        """The ordinary relocations applying to *sec* (empty if none)."""
        rela_sec = self.rela_of.get(sec)
        return rela_sec.relas if rela_sec is not None else []

    def function_relas(self, func: Symbol) -> List[Rela]:
        """Relocations inside *func*'s byte range of its section."""
        if func.section is None:
            return []
        if self.owner.get(func.section) is func:
            return self.relas(func.section)
        end = func.value + max(func.size, 1)
        return [r for r in self.relas(func.section) if func.value <= r.offset < end]


@dataclass(frozen=True)
class Options:
    """Inputs of one diff besides the two objects.

    :param symbols: the target's symbol table (ELF or ``readelf -s --wide``
        text or /proc/kallsyms text); None means the original object's own.
    :param symvers: ``Module.symvers`` of the target kernel, or None.
    :param objname: ``vmlinux`` or the module name the object links into.
    :param patch_name: name of the livepatch module (for messages).
    :param struct_sizes: bytes per entry of each special-section struct,
        keyed by kernel struct name (``bug_entry``...).
    :param module_symbols: the symbol table file of another module, by its
        klp object name (for the sympos of that module's exports); None:
        such exports get sympos 0.
    :param dependencies: klp object names of the modules that *objname*
        loads after (its ``depends``, transitively); None: not checked.
    :param objtool_at_link: objtool runs on the linked patch module (IBT
        kernels) and writes its sections itself; copies would stop it.
    """

    symbols: Optional[str] = None
    symvers: Optional[str] = None
    objname: str = "vmlinux"
    patch_name: str = "livepatch"
    struct_sizes: Dict[str, int] = field(default_factory=dict)
    module_symbols: Optional[Callable[[str], str]] = None
    dependencies: Optional[FrozenSet[str]] = None
    objtool_at_link: bool = False


@dataclass(eq=False)
class DiffState:
    """Decisions the stages take, in the order they take them."""

    orig: DiffObject
    patched: DiffObject
    options: Options
    twin: Dict[object, object] = field(default_factory=dict)  # both directions
    status: Dict[object, Status] = field(default_factory=dict)  # patched records
    line_only: Set[Section] = field(default_factory=set)
    reasons: Dict[Symbol, str] = field(default_factory=dict)
    included_sections: Set[Section] = field(default_factory=set)
    included_symbols: Set[Symbol] = field(default_factory=set)
    refusals: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    # Changed static functions without __fentry__ whose callers are patched instead.
    via_callers: Set[Symbol] = field(default_factory=set)
    target: Optional["TargetSymbols"] = None  # noqa: F821 (set by the driver)

    def twin_of(self, record: object) -> Optional[object]:
        """The twin of a section or symbol of either object, or None."""
        return self.twin.get(record)

    def pair(self, orig: object, patched: object) -> None:
        """Record *orig* and *patched* as twins (dropping older pairings)."""
        for record in (orig, patched):
            old = self.twin.pop(record, None)
            if old is not None:
                self.twin.pop(old, None)
        self.twin[orig] = patched
        self.twin[patched] = orig

    def status_of(self, record: object) -> Status:
        """Status of a patched section/symbol (SAME when never marked)."""
        return self.status.get(record, Status.SAME)
