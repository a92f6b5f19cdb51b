"""One ELF file out of a package, decompressing only the blocks it needs.

The packages here are made with the real tools (gcc, tar, xz, dpkg-deb, ar)
the way Debian's are: an ar archive around a data.tar.xz in several blocks.
"""

import os
import subprocess
from pathlib import Path

import pytest

from pykpatch.elf.reader import read_elf
from pykpatch.provider.debpart import NotSeekable, ar_member, extract_elf_without_debug

MEMBER = "./usr/lib/debug/boot/vmlinux-test"
LONG_DIR = "./usr/lib/debug/lib/modules/" + "deeply/nested/" * 8


def _sh(*args, cwd=None):
    subprocess.run([str(a) for a in args], cwd=cwd, check=True, capture_output=True)


def _elf_with_dwarf(tmp: Path) -> Path:
    src = tmp / "k.c"
    src.write_text("int counter;\nstatic int helper(int x) { return x * 3 + counter; }\n"
                   "int entry(int x) { counter++; return helper(x) + helper(x + 1); }\n")
    obj = tmp / "k.o"
    _sh("gcc", "-g", "-O1", "-c", "-o", obj, src)
    return obj


def _package(tmp: Path, block_size: str) -> Path:
    """A .deb holding random filler, the ELF file (also under a long name), more filler."""
    root = tmp / "root"
    for path, data in [("./usr/share/filler-a", os.urandom(300_000)),
                       (MEMBER, _elf_with_dwarf(tmp).read_bytes()),
                       (LONG_DIR + "k.ko", _elf_with_dwarf(tmp).read_bytes()),
                       ("./usr/share/filler-b", os.urandom(200_000))]:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN/control").write_text(
        "Package: pykpatch-test\nVersion: 1\nArchitecture: all\nMaintainer: t <t@example.org>\n"
        "Description: test\n")
    deb = tmp / "made.deb"
    _sh("dpkg-deb", "--root-owner-group", "-Zxz", "-b", root, deb)
    # Compressed again the way a multi-threaded dpkg does: in blocks.
    parts = tmp / "parts"
    parts.mkdir()
    _sh("ar", "x", deb, cwd=parts)
    _sh("xz", "-d", "data.tar.xz", cwd=parts)
    _sh("xz", "-T1", f"--block-size={block_size}", "data.tar", cwd=parts)
    repacked = tmp / "test.deb"
    _sh("ar", "rc", repacked, "debian-binary", "control.tar.xz", "data.tar.xz", cwd=parts)
    return repacked


def _sections(path: Path) -> dict:
    return {s.name: s.data for s in read_elf(path).sections}


def test_the_file_keeps_everything_but_dwarf_and_relocations(tmp_path: Path):
    deb = _package(tmp_path, "64KiB")
    out = tmp_path / "vmlinux"
    extract_elf_without_debug(deb, MEMBER, out)
    original = tmp_path / "k.o"
    assert out.stat().st_size == original.stat().st_size
    got, want = _sections(out), _sections(original)
    assert set(got) == set(want)
    dropped = {n for n in want if n.startswith((".debug_", ".rela"))}
    assert ".debug_info" in dropped and ".rela.text" in dropped
    assert all(want[name] for name in dropped)  # (zeros in their place would show)
    for name in want:
        if name in dropped:
            assert got[name] == bytes(len(want[name])), name
        else:
            assert got[name] == want[name], name


def test_a_member_with_a_long_name_is_found(tmp_path: Path):
    deb = _package(tmp_path, "64KiB")
    out = tmp_path / "k.ko"
    extract_elf_without_debug(deb, LONG_DIR + "k.ko", out)
    assert _sections(out)[".text"] == _sections(tmp_path / "k.o")[".text"]


def test_a_missing_member_is_not_found(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        extract_elf_without_debug(_package(tmp_path, "64KiB"), "./no/such/file", tmp_path / "x")


def test_a_stream_of_one_block_cannot_be_read_in_parts(tmp_path: Path):
    deb = _package(tmp_path, "64MiB")
    with pytest.raises(NotSeekable, match="single xz block"):
        extract_elf_without_debug(deb, MEMBER, tmp_path / "x")


def test_a_damaged_package_is_left_to_the_usual_unpacking(tmp_path: Path):
    deb = _package(tmp_path, "64KiB")
    with open(deb, "rb") as fh:
        _name, start, _size = ar_member(fh, "data.tar.xz")
    data = bytearray(deb.read_bytes())
    first_block = start + 12 + 64  # past the stream and block headers: compressed tar headers
    data[first_block:first_block + 64] = bytes(64)
    deb.write_bytes(bytes(data))
    with pytest.raises(NotSeekable, match="unexpected contents"):
        extract_elf_without_debug(deb, MEMBER, tmp_path / "x")
