"""The source check against the kernel binary is blind to alignment padding.

The kernel's build puts a file's functions in one section and ours one per
section, so a function lands at another offset modulo 64 and a 64-byte
aligned loop inside it gets other NOP padding (inotify_ioctl in Debian's
6.12 is 323 bytes in vmlinux and 291 compiled here).  Real objects made by
the host's assembler, one function placed at two offsets.
"""

import subprocess
from pathlib import Path

from pykpatch.build.verify import TargetBinary, compare_function
from pykpatch.elf.reader import read_elf

FUNCTION = """
f:
	endbr64
	xor %eax, %eax
	test %edi, %edi
	je 2f
	.p2align 6
1:	add %edi, %eax
	sub $1, %edi
	jne 1b
2:	ret
	.size f, . - f
	.type f, @function
"""


def _assemble(tmp_path: Path, name: str, before_f: int, loop_add: str = "%edi",
              skip_to: str = "2f") -> Path:
    """A section whose function f starts *before_f* bytes in."""
    src, obj = tmp_path / f"{name}.s", tmp_path / f"{name}.o"
    filler = "\t.skip %d, 0xcc\n" % before_f if before_f else ""
    src.write_text(f"\t.section .text.f,\"ax\",@progbits\n\t.globl f\n{filler}"
                   + FUNCTION.replace("add %edi", f"add {loop_add}").replace("je 2f", f"je {skip_to}"))
    subprocess.run(["as", "-o", str(obj), str(src)], check=True)
    return obj


def _function_size(obj: Path) -> int:
    return next(s.size for s in read_elf(obj).symbols if s.name == "f")


def test_the_two_placements_really_differ_in_padding(tmp_path):
    assert _function_size(_assemble(tmp_path, "ours", 0)) != _function_size(
        _assemble(tmp_path, "theirs", 24))


def test_same_code_with_other_padding_matches(tmp_path):
    ours, theirs = _assemble(tmp_path, "ours", 0), _assemble(tmp_path, "theirs", 24)
    assert compare_function(read_elf(ours), "f", TargetBinary(theirs)) is None


def test_a_real_change_behind_other_padding_is_still_a_mismatch(tmp_path):
    ours = _assemble(tmp_path, "ours", 0)
    theirs = _assemble(tmp_path, "theirs", 24, loop_add="%esi")
    mismatch = compare_function(read_elf(ours), "f", TargetBinary(theirs))
    assert mismatch is not None and "bytes here" in mismatch.why


def test_a_branch_to_another_place_behind_other_padding_is_a_mismatch(tmp_path):
    ours = _assemble(tmp_path, "ours", 0)
    theirs = _assemble(tmp_path, "theirs", 24, skip_to="1f")
    assert compare_function(read_elf(ours), "f", TargetBinary(theirs)) is not None
