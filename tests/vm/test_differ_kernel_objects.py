"""The differ on real Debian 6.1 objects, compiled here from small patches.

Each patch in ``differ_patches/`` touches one source file of the cached
prepared tree.  A session fixture compiles every original object once and
each patched object once (in as few ``make`` runs as possible, patches on
different files together), then the tests diff the pairs with the library
entry point and read the output back with ``readelf``: special sections
must hold exactly the entries of the functions the output carries, pointing
at the same instruction as in the input; refusals must name the symbol and
the reason.

No guest is booted: these tests only need the prepared tree, the debug
vmlinux and the shipped modules.
"""

import re
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from pykpatch.build.compile import compile_objects
from pykpatch.build.objindex import KernelObject
from pykpatch.build.patchfile import touched_files
from pykpatch.build.pipeline import INCLUDE_DIR
from pykpatch.build.structsizes import struct_sizes
from pykpatch.build.target import prepared_tree
from pykpatch.build.workspace import BACKUP_DIR, PatchedTree
from pykpatch.differ.driver import DiffResult, Outcome, diff_objects
from pykpatch.differ.state import Options
from pykpatch.elf.symtab import read_symbol_table
from pykpatch.elf.writer import write_elf
from pykpatch.errors import Refusal
from world import skip_branch

PATCHES = Path(__file__).parent / "differ_patches"

# Bytes per entry of each special section, by the kernel struct behind it
# (the sizes themselves are measured from the tree by struct_sizes()).
SECTION_STRUCT = {
    "__bug_table": "bug_entry",
    "__ex_table": "exception_table_entry",
    "__jump_table": "jump_entry",
    ".altinstructions": "alt_instr",
    ".parainstructions": "paravirt_patch_site",
    ".static_call_sites": "static_call_site",
}
FIXED_SIZE = {".retpoline_sites": 4, ".return_sites": 4, ".call_sites": 4, ".smp_locks": 4,
              ".orc_unwind_ip": 4, ".printk_index": 8, "__mcount_loc": 8}
ORC_ENTRY = 6  # struct orc_entry (checked against the measured size below)
SHN_LIVEPATCH = "OS [0xff20]"


# --------------------------------------------------------------------------
# readelf, parsed


@dataclass
class Sym:
    name: str
    value: int
    size: int
    type: str
    bind: str
    ndx: str


@dataclass
class Rel:
    offset: int
    type: str
    symbol: str  # the section's name for a section symbol, "" for none
    addend: int


@dataclass
class Sec:
    index: int
    name: str
    type: str
    size: int
    entsize: int
    info: int


@dataclass
class Readelf:
    """What ``readelf -SW -sW -rW`` says about one object."""

    path: Path
    sections: Dict[str, Sec] = field(default_factory=dict)
    by_index: Dict[int, Sec] = field(default_factory=dict)
    symbols: List[Sym] = field(default_factory=list)
    relocs: Dict[str, List[Rel]] = field(default_factory=dict)  # by relocated section
    by_rela: Dict[str, List[Rel]] = field(default_factory=dict)  # by relocation section

    def defined_functions(self) -> Dict[str, Sym]:
        return {s.name: s for s in self.symbols if s.type == "FUNC" and s.ndx.isdigit()}

    def symbol(self, name: str) -> Optional[Sym]:
        found = [s for s in self.symbols if s.name == name]
        found.sort(key=lambda s: not s.ndx.isdigit())  # a definition first
        return found[0] if found else None

    def hexdump(self, section: str) -> bytes:
        out = _readelf("-x", section, self.path)
        data = bytearray()
        for line in out.splitlines():
            m = re.match(r"\s+0x[0-9a-f]+ ((?:[0-9a-f]{2,8} ){1,4})", line + " ")
            if m:
                data += bytes.fromhex(m.group(1).replace(" ", ""))
        return bytes(data[:self.sections[section].size])


def _readelf(*args: object) -> str:
    return subprocess.run(["readelf", "-W", *map(str, args)], check=True, capture_output=True,
                          text=True).stdout


_SECTION = re.compile(r"^\s*\[\s*(\d+)\]\s+(\S*)\s+(\S+)\s+[0-9a-f]+\s+[0-9a-f]+\s+([0-9a-f]+)"
                      r"\s+([0-9a-f]+)\s+(.*)$")
_SYMBOL = re.compile(r"^\s*\d+:\s+([0-9a-f]+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+"
                     r"(UND|ABS|COM|OS \[0x[0-9a-f]+\]|PRC\[0x[0-9a-f]+\]|\d+)\s*(\S*)$")
_RELOC_HEAD = re.compile(r"^Relocation section '([^']+)'")
_RELOC = re.compile(r"^([0-9a-f]+)\s+[0-9a-f]+\s+(\S+)\s+(?:[0-9a-f]+\s+(\S+)\s+([+-])\s+"
                    r"([0-9a-f]+)|([0-9a-f]+))\s*$")


def read_elf_text(path: Path) -> Readelf:
    elf = Readelf(path)
    for line in _readelf("-S", path).splitlines():
        m = _SECTION.match(line)
        if not m:
            continue
        rest = m.group(6).split()
        sec = Sec(int(m.group(1)), m.group(2), m.group(3), int(m.group(4), 16),
                  int(m.group(5), 16), int(rest[-2]))
        elf.sections.setdefault(sec.name, sec)
        elf.by_index[sec.index] = sec
    for line in _readelf("-s", path).splitlines():
        m = _SYMBOL.match(line)
        if m:
            size = m.group(2)
            elf.symbols.append(Sym(m.group(7), int(m.group(1), 16),
                                   int(size, 16) if size.startswith("0x") else int(size),
                                   m.group(3), m.group(4), m.group(6)))
    current: Optional[List[Rel]] = None
    for line in _readelf("-r", path).splitlines():
        head = _RELOC_HEAD.match(line)
        if head:
            rela = elf.sections[head.group(1)]
            current = elf.relocs.setdefault(elf.by_index[rela.info].name, [])
            own = elf.by_rela.setdefault(rela.name, [])
            continue
        m = _RELOC.match(line)
        if m and current is not None:
            if m.group(3) is not None:
                sign = -1 if m.group(4) == "-" else 1
                rel = Rel(int(m.group(1), 16), m.group(2), m.group(3), sign * int(m.group(5), 16))
            else:
                rel = Rel(int(m.group(1), 16), m.group(2), "", int(m.group(6), 16))
            current.append(rel)
            own.append(rel)
    return elf


def code_site(elf: Readelf, rel: Rel) -> Optional[Tuple[str, int]]:
    """(function, offset in it) a relocation points at, or None outside functions."""
    sym = elf.symbol(rel.symbol)
    if sym is not None and sym.type != "SECTION":
        if not sym.ndx.isdigit():
            return None
        ndx, addr = int(sym.ndx), sym.value + rel.addend
    elif rel.symbol in elf.sections:
        ndx, addr = elf.sections[rel.symbol].index, rel.addend
    else:
        return None
    inside = [f for f in elf.defined_functions().values()
              if f.ndx == str(ndx) and f.value <= addr <= f.value + f.size]
    inside.sort(key=lambda f: addr == f.value + f.size)  # strictly inside first
    return (inside[0].name, addr - inside[0].value) if inside else None


def entries(elf: Readelf, section: str, size: int) -> Dict[int, List[Rel]]:
    """Relocations of *section* grouped by entry index."""
    out: Dict[int, List[Rel]] = {}
    for rel in elf.relocs.get(section, []):
        out.setdefault(rel.offset // size, []).append(rel)
    return out


def entry_sites(elf: Readelf, section: str, size: int) -> Dict[int, Optional[Tuple[str, int]]]:
    """Entry index -> the code site its first field (offset 0) points at."""
    sites = {}
    for index, rels in entries(elf, section, size).items():
        first = [r for r in rels if r.offset == index * size]
        sites[index] = code_site(elf, first[0]) if first else None
    return sites


# --------------------------------------------------------------------------
# Compiling the objects once per session


@dataclass
class Case:
    patch: Path
    obj: KernelObject
    orig: Path
    patched: Path


@dataclass
class Corpus:
    kernel: object
    tree: Path
    sizes: Dict[str, int]
    work: Path
    cases: Dict[str, Case]
    _results: Dict[str, object] = field(default_factory=dict)

    def diff(self, name: str) -> DiffResult:
        """Diff the pair of patch *name* (cached; a Refusal is re-raised)."""
        if name not in self._results:
            case = self.cases[name]
            try:
                self._results[name] = diff_objects(str(case.orig), str(case.patched),
                                                   self.options(case.obj))
            except Refusal as refusal:
                self._results[name] = refusal
        result = self._results[name]
        if isinstance(result, Refusal):
            raise result
        assert isinstance(result, DiffResult)
        return result

    def options(self, obj: KernelObject) -> Options:
        if obj.module is None:
            symbols = self.kernel.vmlinux
        else:
            symbols = module_file(self.kernel.modules_dir, obj.module)
        symvers = self.kernel.headers_dir / "Module.symvers"
        return Options(symbols=str(symbols), symvers=str(symvers), objname=obj.target,
                       patch_name="pykpatch_differ_test", struct_sizes=self.sizes)

    def output(self, name: str) -> Tuple[DiffResult, Readelf]:
        """The diff of *name*, written and read back with readelf."""
        result = self.diff(name)
        assert result.outcome is Outcome.PATCH, result.report.to_text()
        path = self.work / "out" / (Path(name).stem + ".o")
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_elf(result.output, path)
        return result, read_elf_text(path)

    def inputs(self, name: str) -> Tuple[Readelf, Readelf]:
        case = self.cases[name]
        return read_elf_text(case.orig), read_elf_text(case.patched)


def module_file(modules_dir: Path, name: str) -> Path:
    wanted = name.replace("-", "_")
    for path in modules_dir.rglob("*.ko*"):
        if path.name.split(".ko")[0].replace("-", "_") == wanted:
            return path
    raise AssertionError(f"module {name} not shipped in {modules_dir}")


def _rounds(patches: List[Tuple[Path, str]]) -> List[List[Tuple[Path, str]]]:
    """Group patches so that no two in a group touch the same file."""
    rounds: List[List[Tuple[Path, str]]] = []
    for patch, src in patches:
        for group in rounds:
            if all(s != src for _, s in group):
                group.append((patch, src))
                break
        else:
            rounds.append([(patch, src)])
    return rounds


@pytest.fixture(scope="session")
def corpus(kernel, tmp_path_factory) -> Corpus:
    tree, index = prepared_tree(kernel, jobs=2)
    make_args = kernel.make_args()
    work = tmp_path_factory.mktemp("differ-objects")
    logfile = work / "build.log"
    patches = []
    for patch in sorted(PATCHES.glob("*.patch")):
        files = touched_files(patch.read_text(), patch.name)
        assert len(files) == 1, f"{patch.name}: one file per test patch"
        patches.append((patch, files[0].path))
    objects = {src: index.for_source(src) for _, src in patches}
    missing = [src for src, obj in objects.items() if obj is None]
    assert not missing, f"not built by this config: {missing}"
    extra = f"-I{INCLUDE_DIR}"
    unique = sorted(set(objects.values()), key=lambda o: o.obj)
    with PatchedTree(tree, [], logfile):
        orig = compile_objects(tree, make_args, unique, work / "orig", jobs=2,
                               extra_cflags=extra, logfile=logfile, what="original")
    cases = {}
    for number, group in enumerate(_rounds(patches)):
        objs = [objects[src] for _, src in group]
        with PatchedTree(tree, [p for p, _ in group], logfile) as patched_tree:
            patched_tree.apply()
            built = compile_objects(tree, make_args, objs, work / f"patched{number}", jobs=2,
                                    extra_cflags=extra, logfile=logfile, what="patched")
        for patch, src in group:
            obj = objects[src]
            cases[patch.name] = Case(patch, obj, orig[obj.obj], built[obj.obj])
    assert not (tree / BACKUP_DIR).exists(), "a patch was left applied to the tree"
    return Corpus(kernel, tree, struct_sizes(tree, index), work, cases)


def entry_size(corpus: Corpus, section: str) -> int:
    if section in SECTION_STRUCT:
        return corpus.sizes[SECTION_STRUCT[section]]
    return FIXED_SIZE[section]


# --------------------------------------------------------------------------
# Special sections: the kept entries are exactly those of the output's functions


def check_special_section(corpus: Corpus, name: str, section: str) -> List[Tuple[str, int]]:
    """Check *section* of the output of patch *name* against the patched input.

    Returns the kept (function, offset) sites, sorted.
    """
    _, out = corpus.output(name)
    _, patched = corpus.inputs(name)
    size = entry_size(corpus, section)
    functions = out.defined_functions()
    # What the output should keep: every input entry landing in a function it carries.
    in_sites = entry_sites(patched, section, size)
    wanted = sorted(s for s in in_sites.values() if s is not None and s[0] in functions)
    if not wanted:
        assert section not in out.sections, f"{section} kept though no included function uses it"
        return []
    assert section in out.sections, f"{section} missing; wanted entries at {wanted}"
    sec = out.sections[section]
    assert sec.size % size == 0, (section, sec.size, size)
    out_sites = entry_sites(out, section, size)
    assert len(out_sites) == sec.size // size, f"{section}: entries without a relocation"
    assert all(s is not None and s[0] in functions for s in out_sites.values()), out_sites
    assert sorted(out_sites.values()) == wanted
    return wanted


def special_sections_of(elf: Readelf) -> List[str]:
    return [s for s in list(SECTION_STRUCT) + list(FIXED_SIZE) if s in elf.sections]


# (section, patch that covers it)
SPECIAL_CASES = [
    ("__bug_table", "exec-special.patch"),
    ("__ex_table", "readdir-usercopy.patch"),
    ("__jump_table", "exec-special.patch"),
    (".altinstructions", "readdir-usercopy.patch"),
    (".parainstructions", "exec-special.patch"),
    (".static_call_sites", "exec-special.patch"),
    (".retpoline_sites", "exec-special.patch"),
    (".return_sites", "exec-special.patch"),
    (".smp_locks", "exec-special.patch"),
    (".orc_unwind_ip", "exec-special.patch"),
    ("__mcount_loc", "exec-special.patch"),
]


@pytest.mark.parametrize("section,patch", SPECIAL_CASES, ids=[c[0] for c in SPECIAL_CASES])
def test_special_section_keeps_entries_of_included_functions(corpus, section, patch):
    _, patched = corpus.inputs(patch)
    kept = check_special_section(corpus, patch, section)
    assert kept, f"{patch} does not exercise {section}"
    # The selection really dropped the entries of the functions left out
    # (fs/exec.o has .parainstructions in begin_new_exec only).
    total = len(entry_sites(patched, section, entry_size(corpus, section)))
    if section != ".parainstructions":
        assert total > len(kept), f"{section}: all {total} entries kept"


@pytest.mark.parametrize("patch", ["exec-special.patch", "readdir-usercopy.patch",
                                   "file_table-static-local.patch", "d_path-sympos.patch",
                                   "io-wq-sympos.patch"])
def test_every_special_section_of_the_output_is_consistent(corpus, patch):
    _, out = corpus.output(patch)
    _, patched = corpus.inputs(patch)
    for section in special_sections_of(patched):
        check_special_section(corpus, patch, section)
    # and nothing else that is special slipped in
    assert set(special_sections_of(out)) <= set(special_sections_of(patched))


@pytest.mark.parametrize("patch,functions", [
    ("exec-special.patch", ["__set_task_comm", "begin_new_exec", "bprm_execve"]),
    ("readdir-usercopy.patch", ["filldir64"]),
])
def test_output_carries_only_the_changed_functions(corpus, patch, functions):
    result, out = corpus.output(patch)
    report = result.report.to_dict()["functions"]
    assert sorted(f["name"] for f in report) == functions
    assert all(f["patched"] and f["status"] == "changed" for f in report)
    assert sorted(out.defined_functions()) == functions
    assert out.sections[".pykpatch.funcs"].size == 32 * len(functions)


def test_altinstr_replacement_goes_with_altinstructions(corpus):
    patch = "readdir-usercopy.patch"
    _, out = corpus.output(patch)
    _, patched = corpus.inputs(patch)
    size = entry_size(corpus, ".altinstructions")
    assert ".altinstr_replacement" in out.sections
    out_repl = out.hexdump(".altinstr_replacement")
    in_repl = patched.hexdump(".altinstr_replacement")
    in_table, out_table = patched.hexdump(".altinstructions"), out.hexdump(".altinstructions")
    in_sites = entry_sites(patched, ".altinstructions", size)
    in_by_site = {site: index for index, site in in_sites.items()}

    def replacement(elf: Readelf, table: bytes, repl: bytes, index: int) -> bytes:
        rel = [r for r in elf.relocs[".altinstructions"] if r.offset == index * size + 4]
        assert rel, f"entry {index} has no replacement relocation"
        target = elf.symbol(rel[0].symbol)
        assert rel[0].symbol == ".altinstr_replacement" or (
            target is not None and elf.by_index[int(target.ndx)].name == ".altinstr_replacement")
        # struct alt_instr { s32 instr_offset; s32 repl_offset; u16 cpuid; u8 instrlen;
        #                    u8 replacementlen; }: repl_offset is "repl - ." (PC32), so the
        # addend is the replacement's offset in .altinstr_replacement.
        start = rel[0].addend + (target.value if target and target.type != "SECTION" else 0)
        length = table[index * size + 11]
        assert length, f"entry {index}: empty replacement"
        return repl[start:start + length]

    checked = 0
    for index, site in entry_sites(out, ".altinstructions", size).items():
        orig_index = in_by_site[site]
        assert out_table[index * size + 8:(index + 1) * size] == \
            in_table[orig_index * size + 8:(orig_index + 1) * size]
        assert replacement(out, out_table, out_repl, index) == \
            replacement(patched, in_table, in_repl, orig_index)
        checked += 1
    assert checked


def test_orc_unwind_follows_orc_unwind_ip(corpus):
    patch = "exec-special.patch"
    assert corpus.sizes.get("orc_entry", ORC_ENTRY) == ORC_ENTRY
    _, out = corpus.output(patch)
    _, patched = corpus.inputs(patch)
    out_sites = entry_sites(out, ".orc_unwind_ip", 4)
    in_index = {site: i for i, site in entry_sites(patched, ".orc_unwind_ip", 4).items()}
    assert out.sections[".orc_unwind"].size == len(out_sites) * ORC_ENTRY
    out_orc, in_orc = out.hexdump(".orc_unwind"), patched.hexdump(".orc_unwind")
    for index, site in out_sites.items():
        i = in_index[site]
        assert out_orc[index * ORC_ENTRY:(index + 1) * ORC_ENTRY] == \
            in_orc[i * ORC_ENTRY:(i + 1) * ORC_ENTRY], site


def test_mcount_loc_has_one_fentry_call_per_function(corpus):
    patch = "exec-special.patch"
    _, out = corpus.output(patch)
    sites = entry_sites(out, "__mcount_loc", 8)
    assert all(r.type == "R_X86_64_64" for r in out.relocs["__mcount_loc"])
    counts = Counter(site[0] for site in sites.values())
    assert counts and all(n == 1 for n in counts.values()), counts
    # every function with a __fentry__ call in the output is in __mcount_loc
    fentry_callers = set()
    for secname, rels in out.relocs.items():
        for rel in rels:
            if rel.symbol == "__fentry__":
                site = code_site(out, Rel(rel.offset, rel.type, secname, rel.offset))
                if site is not None:
                    fentry_callers.add(site[0])
    assert fentry_callers == set(counts)


@pytest.mark.parametrize("section,why", [
    (".call_sites", "objtool of 6.1 has no call-depth tracking (CONFIG_CALL_THUNKS, 6.2+)"),
    (".printk_index", "Debian's 6.1 config leaves CONFIG_PRINTK_INDEX off"),
])
def test_special_sections_this_kernel_does_not_make(corpus, section, why):
    producers = [name for name in corpus.cases if section in corpus.inputs(name)[1].sections]
    assert not producers, f"{section} is produced now ({producers}): give it a real case"
    skip_branch(f"{section}: {why}")


# --------------------------------------------------------------------------
# Refusals


def refusal_of(corpus: Corpus, patch: str) -> str:
    with pytest.raises(Refusal) as info:
        corpus.diff(patch)
    return str(info.value)


def test_refuses_changed_data_value_data_size_and_init_code(corpus):
    message = refusal_of(corpus, "file_table-refusals.patch")
    assert "3 problems" in message, message
    assert re.search(r"files_stat: initial value of data changed", message), message
    size = re.search(r"fs_stat_sysctls: data size changed \((\d+) -> (\d+) bytes\)", message)
    assert size, message
    old, new = int(size.group(1)), int(size.group(2))
    assert new - old == old // 4  # one more struct ctl_table among four
    assert re.search(r"files_maxfiles_init: changed __init code in \.init\.text", message), message


def test_refuses_removed_static_local(corpus):
    message = refusal_of(corpus, "file_table-static-local-removed.patch")
    assert re.search(r"alloc_empty_file: the reference to static local variable old_max\.\d+ was",
                     message), message


def test_refuses_changed_function_without_fentry(corpus):
    message = refusal_of(corpus, "extable-notrace.patch")
    assert "core_kernel_text: changed but has no __fentry__ call" in message, message


def test_refuses_module_jump_label_key(corpus):
    message = refusal_of(corpus, "chacha-module-key.patch")
    assert re.search(r"chacha_use_simd: a __jump_table site uses a key that lives in module "
                     r"chacha_x86_64", message), message


def test_refuses_module_static_call_key(corpus):
    message = refusal_of(corpus, "kvm_pmu-module-static-call.patch")
    assert re.search(r"__SCK__kvm_x86_pmu_is_valid_rdpmc_ecx: a \.static_call_sites site uses a "
                     r"key that lives in module kvm\b", message), message


def test_refuses_new_entry_in_a_boot_time_table(corpus):
    message = refusal_of(corpus, "pci_fixup-new-entry.patch")
    assert re.search(r"\.pci_fixup_final: entries changed \(added for pykpatch_test_quirk\); "
                     r"this table holds PCI quirks", message), message
    assert "1 problem)" in message, message  # the new quirk function itself is not a problem


def test_moved_boot_time_table_entries_are_no_change(corpus):
    # __LINE__ names every quirk entry: the names change, the entries do not.
    orig, patched = corpus.inputs("pci_fixup-lines.patch")
    assert orig.hexdump(".pci_fixup_final") == patched.hexdump(".pci_fixup_final")
    result = corpus.diff("pci_fixup-lines.patch")
    assert result.outcome is Outcome.NO_CHANGE, result.report.to_text()


# --------------------------------------------------------------------------
# __LINE__, static locals, .cold children, klp sympos


def test_line_shift_only_is_no_change(corpus):
    case = corpus.cases["exec-lines.patch"]
    orig, patched = read_elf_text(case.orig), read_elf_text(case.patched)
    # The patch really moved WARN/BUG line numbers (struct bug_entry's line at offset 8)...
    size = corpus.sizes["bug_entry"]
    lines = [[int.from_bytes(data[i + 8:i + 10], "little") for i in range(0, len(data), size)]
             for data in (orig.hexdump("__bug_table"), patched.hexdump("__bug_table"))]
    assert lines[0] and [b - a for a, b in zip(*lines)] == [4] * len(lines[0])
    # ...and the differ sees no change.
    result = corpus.diff("exec-lines.patch")
    assert result.outcome is Outcome.NO_CHANGE, result.report.to_text()
    assert result.output is None


def test_existing_static_local_becomes_klp_reference(corpus):
    patch = "file_table-static-local.patch"
    result, out = corpus.output(patch)
    orig, _ = corpus.inputs(patch)
    [local] = [s for s in orig.symbols if re.fullmatch(r"old_max\.\d+", s.name)]
    # no copy of the variable in the patch...
    assert not [s for s in out.symbols if s.name.startswith("old_max") and s.ndx.isdigit()]
    # ...but a livepatch symbol for the kernel's copy, used by a klp relocation
    klp = [s for s in out.symbols if s.name.startswith(f".klp.sym.vmlinux.{local.name},")]
    assert len(klp) == 1 and klp[0].ndx == SHN_LIVEPATCH and klp[0].bind == "GLOBAL", klp
    expected = expected_sympos(corpus.kernel.vmlinux, local.name, "file_table.c")
    assert klp[0].name == f".klp.sym.vmlinux.{local.name},{expected}"
    users = [sec for sec, rels in out.by_rela.items() if any(r.symbol == klp[0].name for r in rels)]
    # (the pr_info path, and with it old_max, lives in alloc_empty_file.cold)
    assert users and set(users) <= {".klp.rela.vmlinux..text.alloc_empty_file",
                                    ".klp.rela.vmlinux..text.unlikely.alloc_empty_file"}, users
    assert {f["name"] for f in result.report.to_dict()["functions"] if f["patched"]} == \
        {"alloc_empty_file"}


def expected_sympos(vmlinux: Path, name: str, source: str) -> int:
    """klp sympos of local *name* of *source*: 0 if unique, else 1-based address rank."""
    file = None
    found = []  # (address, file)
    for s in read_symbol_table(vmlinux):
        if s.type == 4:  # STT_FILE
            file = s.name
        elif s.name == name and s.bind == 0:
            found.append((s.value, file))
    ours = [i for i, (_, f) in enumerate(sorted(found)) if f == source]
    assert len(ours) == 1, (name, found)
    return 0 if len(found) == 1 else ours[0] + 1


@pytest.mark.parametrize("patch,callee,source,rank", [
    # prepend(): fs/d_path.c and security/tomoyo/path.c; io_run_task_work(), a static
    # inline that stays out of line in io_uring.c, sqpoll.c and io-wq.c.
    ("d_path-sympos.patch", "prepend", "d_path.c", 1),
    ("io-wq-sympos.patch", "io_run_task_work", "io-wq.c", 3),
])
def test_klp_relocation_with_nonzero_sympos(corpus, patch, callee, source, rank):
    result, out = corpus.output(patch)
    orig, _ = corpus.inputs(patch)
    assert orig.symbol(callee).bind == "LOCAL" and orig.symbol(callee).type == "FUNC"
    expected = expected_sympos(corpus.kernel.vmlinux, callee, source)
    assert expected == rank  # the case still has the shape it was chosen for
    name = f".klp.sym.vmlinux.{callee},{expected}"
    [sym] = [s for s in out.symbols if s.name.startswith(f".klp.sym.vmlinux.{callee},")]
    assert sym.name == name and sym.ndx == SHN_LIVEPATCH and sym.bind == "GLOBAL"
    patched = [f["name"] for f in result.report.to_dict()["functions"] if f["patched"]]
    callers = [sec for sec, rels in out.by_rela.items() if any(r.symbol == name for r in rels)]
    assert callers and all(sec.startswith(".klp.rela.vmlinux..text.") for sec in callers), callers
    assert {sec[len(".klp.rela.vmlinux..text."):] for sec in callers} <= set(patched)
    for sec in callers:
        assert out.sections[sec].type == "RELA"
        # no ordinary relocation to the callee is left beside the klp one
        assert not [r for r in out.by_rela.get(sec[len(".klp"):].replace(".vmlinux.", "", 1), [])
                    if r.symbol == callee]
    if patch == "d_path-sympos.patch":
        assert patched == ["simple_dname"]


def test_cold_child_comes_with_its_parent(corpus):
    patch = "file_table-static-local.patch"
    result, out = corpus.output(patch)
    orig, patched = corpus.inputs(patch)
    assert "alloc_empty_file.cold" in orig.defined_functions()
    functions = out.defined_functions()
    cold = functions["alloc_empty_file.cold"]
    assert out.by_index[int(cold.ndx)].name == ".text.unlikely.alloc_empty_file"
    assert cold.size == patched.defined_functions()["alloc_empty_file.cold"].size
    # The patch changes the string of the pr_info() that GCC moved to .cold: the child
    # changed, so its parent is replaced, and the kernel redirects the parent only.
    report = {f["name"]: f for f in result.report.to_dict()["functions"]}
    assert report["alloc_empty_file.cold"]["patched"] is False
    assert report["alloc_empty_file.cold"]["status"] == "changed"
    assert report["alloc_empty_file"]["patched"] is True
    assert report["alloc_empty_file"]["reason"] == "its child alloc_empty_file.cold changed"
    # the kernel redirects the parent only: one struct pykpatch_func (32 bytes)
    assert out.sections[".pykpatch.funcs"].size == 32
    # the parent jumps to the patch's own copy of the child, not to the kernel's
    to_child = [r for r in out.by_rela[".rela.text.alloc_empty_file"]
                if r.symbol in ("alloc_empty_file.cold", ".text.unlikely.alloc_empty_file")]
    assert to_child, out.by_rela[".rela.text.alloc_empty_file"]
    assert not [s for s in out.symbols if ".klp.sym" in s.name and "alloc_empty_file" in s.name]
