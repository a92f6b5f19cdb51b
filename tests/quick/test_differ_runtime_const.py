"""x86 runtime constants (6.11+): vmlinux writes their values into its own
code at boot, never into a patch module, so a patched copy must load the
variable instead.  Real objects compiled here with the kernel's macro shape.
"""

import subprocess
from pathlib import Path

import pytest

from _differ_support import compile_kernel_like
from pykpatch.differ.driver import diff_objects
from pykpatch.differ.state import Options
from pykpatch.elf.writer import write_elf
from pykpatch.errors import Refusal

SOURCE = r"""
extern unsigned long USER_PTR_MAX;
static inline unsigned long user_ptr_max(void)
{
	register unsigned long ret asm(REG);
	asm("mov %1,%0\n1:\n"
	    ".pushsection runtime_ptr_USER_PTR_MAX,\"a\"\n\t.long 1b - %c2 - .\n.popsection"
	    : "=r" (ret) : "i" (0x0123456789abcdefUL), "i" (sizeof(long)));
	return ret;
}
static inline unsigned int shifted(unsigned int v)
{
	asm("shrl $12,%k0\n1:\n"
	    ".pushsection runtime_shift_d_hash_shift,\"a\"\n\t.long 1b - 1 - .\n.popsection"
	    : "+r" (v));
	return v;
}
int demo(unsigned long p)
{
	return p <= user_ptr_max() ? VALUE : 0;
}
unsigned int demo_hash(unsigned int v)
{
	return shifted(v) + VALUE;
}
"""


def _compile(tmp_path: Path, value: int, reg: str, only: str) -> Path:
    text = SOURCE.replace("REG", f'"{reg}"')
    # VALUE changes only the function *only*.
    if only == "demo":
        text = text.replace("return shifted(v) + VALUE;", "return shifted(v) + 1;")
    else:
        text = text.replace("? VALUE : 0", "? 1 : 0")
    return compile_kernel_like(text, tmp_path / f"rc{only}{value}{reg}.o", value)


def _disassembly(obj: Path) -> str:
    return subprocess.run(["objdump", "-dr", "--section=.text.demo", str(obj)],
                          capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("reg", ["rax", "r9"])
def test_a_runtime_pointer_becomes_a_load_of_its_variable(tmp_path, reg):
    orig, patched = _compile(tmp_path, 1, reg, "demo"), _compile(tmp_path, 2, reg, "demo")
    assert "movabs $0x123456789abcdef" in _disassembly(orig)
    result = diff_objects(str(orig), str(patched), Options())
    out = tmp_path / "out.o"
    write_elf(result.output, out)
    text = _disassembly(out)
    assert f"mov    0x0(%rip),%{reg}" in text, text
    assert "R_X86_64_PC32\tUSER_PTR_MAX-0x4" in text, text
    assert "movabs" not in text
    sections = subprocess.run(["readelf", "-SW", str(out)], capture_output=True, text=True).stdout
    assert "runtime_ptr_" not in sections


def test_a_runtime_shift_in_a_patched_function_is_refused(tmp_path):
    orig = _compile(tmp_path, 1, "rax", "demo_hash")
    patched = _compile(tmp_path, 2, "rax", "demo_hash")
    with pytest.raises(Refusal) as refusal:
        diff_objects(str(orig), str(patched), Options())
    assert "demo_hash: shifts by the runtime constant d_hash_shift" in str(refusal.value)
