"""Reading a module's identity straight from its ELF sections."""

import shutil
from pathlib import Path

import pytest

from pykpatch.errors import InputError, Refusal
from pykpatch.manage.modinfo import (
    PatchFile, parse_build_id_note, read_module_info, require_livepatch, require_release,
)
from test_kpatch_cli_support import (  # noqa: F401  (no_real_kernel is autouse)
    RELEASE, SHA, VERMAGIC, make_ko, no_real_kernel, origin_fields,
)


def test_reads_name_vermagic_livepatch_and_origin(tmp_path: Path) -> None:
    ko = make_ko(tmp_path, modinfo=origin_fields(f"a.patch:{SHA},b fix.patch:{SHA}"),
                 build_id=bytes(range(20)))
    info = read_module_info(ko)
    assert info.name == "livepatch_test"
    assert info.vermagic == VERMAGIC
    assert info.release == RELEASE
    assert info.is_livepatch
    assert info.build_id == bytes(range(20)).hex()
    origin = info.origin
    assert origin is not None
    assert origin.patches == (PatchFile("a.patch", SHA), PatchFile("b fix.patch", SHA))
    assert origin.release == RELEASE
    assert origin.tool_version == "0.1.0"


def test_patch_entry_forms(tmp_path: Path) -> None:
    # kpatch-build's own form, abbreviated digest; the plain form; no digest;
    # a colon in the file name that is not followed by a digest.
    value = "a.patch:sha256:0123456789ABCDEF,b.patch:" + SHA + ",c.patch,d:e.patch"
    info = read_module_info(make_ko(tmp_path, modinfo=[("pykpatch.patches", value)]))
    assert info.origin is not None
    assert info.origin.patches == (PatchFile("a.patch", "0123456789abcdef"),
                                   PatchFile("b.patch", SHA), PatchFile("c.patch", None),
                                   PatchFile("d:e.patch", None))


def test_repeated_keys_add_up(tmp_path: Path) -> None:
    ko = make_ko(tmp_path, modinfo=[("alias", "one"), ("alias", "two"),
                                    ("pykpatch.patches", "a.patch"),
                                    ("pykpatch.patches", f"b.patch:sha256:{SHA}")])
    info = read_module_info(ko)
    assert info.modinfo_json()["alias"] == ["one", "two"]
    assert info.origin is not None
    assert info.origin.patches == (PatchFile("a.patch", None), PatchFile("b.patch", SHA))
    assert info.origin.release is None


def test_underscore_origin_keys_are_read_too(tmp_path: Path) -> None:
    # plain MODULE_INFO() cannot take a dotted tag; accept its spelling
    ko = make_ko(tmp_path, modinfo=[("pykpatch_release", RELEASE)])
    info = read_module_info(ko)
    assert info.origin is not None and info.origin.release == RELEASE


def test_module_without_origin_keys_has_no_origin(tmp_path: Path) -> None:
    assert read_module_info(make_ko(tmp_path)).origin is None


def test_name_falls_back_to_modinfo_then_file_name(tmp_path: Path) -> None:
    ko = make_ko(tmp_path, "a.ko", name="", modinfo=[("name", "from_modinfo")])
    assert read_module_info(ko).name == "from_modinfo"
    ko = make_ko(tmp_path, "livepatch-from-file.ko", name="")
    assert read_module_info(ko).name == "livepatch_from_file"


def test_text_file_is_not_a_module(tmp_path: Path) -> None:
    path = tmp_path / "notes.ko"
    path.write_text("hello")
    with pytest.raises(InputError, match="not an ELF file"):
        read_module_info(path)


def test_object_file_without_module_sections_is_not_a_module(tmp_path: Path) -> None:
    ko = make_ko(tmp_path, this_module=False)
    with pytest.raises(InputError, match="gnu.linkonce.this_module"):
        read_module_info(ko)


def test_executable_is_not_a_module() -> None:
    true = Path(shutil.which("true") or "/bin/true")
    with pytest.raises(InputError, match="not a kernel module"):
        read_module_info(true)


def test_truncated_file_is_damaged(tmp_path: Path) -> None:
    ko = make_ko(tmp_path)
    cut = tmp_path / "cut.ko"
    cut.write_bytes(ko.read_bytes()[:200])
    with pytest.raises(InputError, match="damaged|not a kernel module"):
        read_module_info(cut)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read_module_info(tmp_path / "missing.ko")
    with pytest.raises(InputError, match="directory"):
        read_module_info(tmp_path)


def test_ordinary_module_is_refused(tmp_path: Path) -> None:
    info = read_module_info(make_ko(tmp_path, livepatch=False))
    with pytest.raises(Refusal, match="not a livepatch module"):
        require_livepatch(info)


def test_module_for_another_kernel_is_refused(tmp_path: Path) -> None:
    info = read_module_info(make_ko(tmp_path, vermagic="6.1.0-99-amd64 SMP mod_unload "))
    with pytest.raises(Refusal, match="built for kernel 6.1.0-99-amd64.*target is " + RELEASE):
        require_release(info, RELEASE)
    require_release(info, "6.1.0-99-amd64")


def test_module_without_vermagic_is_refused(tmp_path: Path) -> None:
    info = read_module_info(make_ko(tmp_path, vermagic=None))
    with pytest.raises(Refusal, match="no vermagic"):
        require_release(info, RELEASE)


def test_build_id_note_parsing_skips_other_notes() -> None:
    other = (4).to_bytes(4, "little") + (4).to_bytes(4, "little") + (1).to_bytes(4, "little") \
        + b"Foo\0" + b"abcd"
    build = (4).to_bytes(4, "little") + (2).to_bytes(4, "little") + (3).to_bytes(4, "little") \
        + b"GNU\0" + b"\x12\x34\0\0"
    assert parse_build_id_note(other + build, "<") == "1234"
    assert parse_build_id_note(other, "<") is None
