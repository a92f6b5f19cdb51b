"""Static branches that objtool turns into NOPs only when it runs on the
linked vmlinux.o or module (kernels with IBT, such as Debian 13's 6.12):
the compiled object holds the jmp, the kernel binary the NOP.

Real objects, compiled here with the host's gcc from a static branch
written the way x86's arch_static_branch() writes it.
"""

from pathlib import Path

import pytest

from _differ_support import compile_kernel_like
from pykpatch.build.verify import TargetBinary, compare_function
from pykpatch.differ.driver import diff_objects
from pykpatch.differ.state import Options
from pykpatch.elf.reader import read_elf
from pykpatch.elf.writer import write_elf

SOURCE = r"""
struct static_key { int enabled; };
extern struct static_key __tracepoint_demo;
int trace_demo(int);
static inline __attribute__((always_inline)) int demo_enabled(void)
{
	asm goto("1: jmp %l[yes]\n\t"
		 ".pushsection __jump_table, \"aw\"\n\t.balign 8\n\t"
		 ".long 1b - .\n\t.long %l[yes] - .\n\t"
		 ".quad __tracepoint_demo + 2 - .\n\t.popsection"
		 : : : : yes);
	return 0;
yes:
	return 1;
}
int demo(int x)
{
	if (demo_enabled())
		trace_demo(x);
	return x + VALUE;
}
"""
JMP8, NOP2 = 0xEB, bytes.fromhex("6690")
SIZES = {"jump_entry": 16}


def _compile(tmp_path: Path, value: int) -> Path:
    return compile_kernel_like(SOURCE, tmp_path / f"demo{value}.o", value)


def _site(obj: Path) -> int:
    """Offset in .text.demo of the static branch (its __jump_table entry)."""
    elf = read_elf(obj)
    table = elf.section_by_name("__jump_table")
    code = min(elf.rela_section_for(table).relas, key=lambda r: r.offset)
    return code.addend


def _demo_code(obj: Path) -> bytes:
    elf = read_elf(obj)
    return bytes(elf.section_by_name(".text.demo").data)


@pytest.fixture
def pair(tmp_path):
    return _compile(tmp_path, 1), _compile(tmp_path, 2)


def _as_objtool_leaves_it(obj: Path, out: Path, site: int, nop: bytes) -> Path:
    """A copy of *obj* with the static branch turned into *nop*, as the
    kernel binary has it after objtool."""
    elf = read_elf(obj)
    text = elf.section_by_name(".text.demo")
    text.data = bytes(text.data[:site]) + nop + bytes(text.data[site + len(nop):])
    write_elf(elf, out)
    return out


def test_the_compiled_object_holds_a_jmp_at_the_site(pair):
    orig, _ = pair
    assert _demo_code(orig)[_site(orig)] == JMP8


def test_verify_accepts_the_nop_objtool_wrote_in_the_binary(pair, tmp_path):
    orig, _ = pair
    binary = _as_objtool_leaves_it(orig, tmp_path / "binary.o", _site(orig), NOP2)
    assert compare_function(read_elf(orig), "demo", TargetBinary(binary)) is None


def test_verify_still_sees_any_other_difference_at_the_site(pair, tmp_path):
    orig, _ = pair
    binary = _as_objtool_leaves_it(orig, tmp_path / "binary.o", _site(orig), b"\x90\xcc")
    mismatch = compare_function(read_elf(orig), "demo", TargetBinary(binary))
    assert mismatch is not None and "code differs" in mismatch.why


def test_a_dropped_site_becomes_the_nop_objtool_would_have_written(pair, tmp_path):
    # In a module, a tracepoint key is resolved only after the patch
    # registered its sites: the site is dropped and must stay off.
    orig, patched = pair
    symvers = tmp_path / "Module.symvers"  # the key is exported by nobody: the module's
    symvers.write_text("0x1\ttrace_demo\tvmlinux\tEXPORT_SYMBOL\t\n")
    result = diff_objects(str(orig), str(patched), Options(objname="mymod", struct_sizes=SIZES,
                                                            symvers=str(symvers)))
    out = tmp_path / "out.o"
    write_elf(result.output, out)
    site = _site(patched)
    assert _demo_code(out)[site:site + 2] == NOP2
    assert read_elf(out).section_by_name("__jump_table") is None
    assert any("dropped site keyed by __tracepoint_demo" in w for w in result.report.warnings)


def test_a_kept_site_stays_a_jmp_for_the_modules_objtool(pair, tmp_path):
    # vmlinux keys are resolved while the patch module loads, before its
    # jump labels are registered: the entry is kept.
    orig, patched = pair
    result = diff_objects(str(orig), str(patched), Options(struct_sizes=SIZES))
    out = tmp_path / "out.o"
    write_elf(result.output, out)
    assert _demo_code(out)[_site(patched)] == JMP8
    assert read_elf(out).section_by_name("__jump_table") is not None
