"""The ELF layer: read -> write must not change what binutils see."""

import subprocess
import struct
from pathlib import Path

import pytest

from _differ_support import corpus, tool  # noqa: F401 (fixture)
from pykpatch.elf.constants import (
    SHF_ALLOC, SHF_EXECINSTR, SHT_PROGBITS, SHT_RELA, STB_GLOBAL, STB_LOCAL, STT_FUNC,
    STT_NOTYPE, STT_OBJECT,
)
from pykpatch.elf.model import Rela, Section, Symbol
from pykpatch.elf.reader import read_elf
from pykpatch.elf.symtab import read_symbol_table
from pykpatch.elf.writer import write_elf
from pykpatch.kernel.livepatch import SHF_RELA_LIVEPATCH, SHN_LIVEPATCH

# A spread of the corpus: GCC and Clang, big and small, XINDEX-free.
SAMPLES = ["cold-add.ORIG.o", "clang-unnamed.ORIG.o", "special-static-2.PATCHED.o",
           "static-call-pr-1315.ORIG.o", "oot-issue-928.NOSTRIP.PATCHED.o",
           "unique-id-pr-1314.ORIG.o"]


def _binutils_view(path: Path) -> str:
    text = tool("readelf", "-aW", str(path)) + tool("objdump", "-dr", str(path))
    return text.replace(str(path), "FILE")


@pytest.mark.parametrize("name", SAMPLES)
def test_unchanged_round_trip_is_identical_to_binutils(corpus, tmp_path, name):
    src = corpus / name
    out = tmp_path / "rt.o"
    write_elf(read_elf(src), out)
    assert _binutils_view(out) == _binutils_view(src)


def _tiny_object(tmp_path: Path) -> Path:
    src = tmp_path / "t.c"
    src.write_text("static int counter;\nint get(void) { return ++counter; }\n"
                   "static int helper(int x) { return x * 3; }\nint use(int y) { return helper(y); }\n")
    obj = tmp_path / "t.o"
    subprocess.run(["gcc", "-O1", "-c", "-ffunction-sections", "-fdata-sections", str(src),
                    "-o", str(obj)], check=True)
    return obj


def test_added_local_symbol_goes_before_globals(tmp_path):
    elf = read_elf(_tiny_object(tmp_path))
    text = elf.section_by_name(".text.get")
    elf.symbols.append(Symbol(name="late_local", bind=STB_LOCAL, type=STT_FUNC, section=text))
    out = tmp_path / "out.o"
    write_elf(elf, out)
    result = subprocess.run(["readelf", "-sW", str(out)], capture_output=True, text=True)
    assert "Warning" not in result.stderr
    symbols = [line.split() for line in result.stdout.splitlines() if line.strip()[:1].isdigit()]
    binds = [fields[4] for fields in symbols]
    assert binds.index("GLOBAL") > max(i for i, b in enumerate(binds) if b == "LOCAL")
    subprocess.run(["ld", "-r", "-o", str(tmp_path / "linked.o"), str(out)], check=True)


def test_livepatch_markers_pass_through_untouched(tmp_path):
    elf = read_elf(_tiny_object(tmp_path))
    target = elf.section_by_name(".text.use")
    klp_sym = Symbol(name=".klp.sym.vmlinux.helper,1", bind=STB_GLOBAL, type=STT_FUNC,
                     shndx=SHN_LIVEPATCH)
    elf.symbols.append(klp_sym)
    elf.sections.append(Section(name=".klp.rela.vmlinux..text.use", type=SHT_RELA,
                                flags=SHF_ALLOC | SHF_RELA_LIVEPATCH, align=8, entsize=24,
                                link=elf.symtab, info=target, relas=[Rela(1, 2, klp_sym, -4)]))
    once, twice = tmp_path / "once.o", tmp_path / "twice.o"
    write_elf(elf, once)
    write_elf(read_elf(once), twice)
    assert _binutils_view(once) == _binutils_view(twice)
    sections = tool("readelf", "-SW", str(twice))
    assert ".klp.rela.vmlinux..text.use" in sections
    assert "OS [0xff20] .klp.sym.vmlinux.helper,1" in tool("readelf", "-sW", str(twice))


def test_symbols_agree_with_pyelftools(corpus):
    elftools = pytest.importorskip("elftools.elf.elffile")
    path = corpus / "ASSERT_RTNL-detect.PATCHED.o"
    with open(path, "rb") as fh:
        oracle = [(s.name, s["st_value"], s["st_size"]) for s in
                  elftools.ELFFile(fh).get_section_by_name(".symtab").iter_symbols()]
    ours = [(s.name, s.value, s.size) for s in read_elf(path).symbols]
    fast = [(s.name, s.value, s.size) for s in read_symbol_table(path)]
    assert ours == oracle == fast


def test_more_than_65279_sections_use_xindex(tmp_path):
    elf = read_elf(_tiny_object(tmp_path))
    count = 0xFF00 + 50
    for i in range(count):
        sec = Section(name=f".text.f{i}", type=SHT_PROGBITS, flags=SHF_ALLOC | SHF_EXECINSTR,
                      data=b"\xc3", align=1)
        elf.sections.append(sec)
        elf.symbols.append(Symbol(name=f"f{i}", bind=STB_GLOBAL, type=STT_FUNC, section=sec,
                                  size=1))
    out = tmp_path / "big.o"
    write_elf(elf, out)
    raw = out.read_bytes()
    e_shnum, e_shstrndx = struct.unpack_from("<HH", raw, 0x3C)
    assert e_shnum == 0  # the real count lives in section 0
    again = read_elf(out)
    last = again.symbol_by_name(f"f{count - 1}")
    assert last is not None and last.section is not None
    assert last.section.name == f".text.f{count - 1}" and last.section.index >= 0xFF00
    assert any(s.type == 18 for s in again.sections)  # SHT_SYMTAB_SHNDX
    result = subprocess.run(["readelf", "-sW", str(out)], capture_output=True, text=True)
    assert f"f{count - 1}" in result.stdout and "Warning" not in result.stderr


def test_object_sizes_are_kept_for_data(tmp_path):
    elf = read_elf(_tiny_object(tmp_path))
    counter = elf.symbol_by_name("counter")
    assert counter is not None and counter.type == STT_OBJECT and counter.size == 4
    assert counter.section is not None and counter.section.name == ".bss.counter"
    assert elf.symbols[0].type == STT_NOTYPE
