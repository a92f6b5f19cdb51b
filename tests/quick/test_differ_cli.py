"""kpatch-diff-object as a user runs it: exit codes, one-line errors."""

import random
import subprocess
from pathlib import Path

import pytest

from _differ_support import corpus, run_diff_cli, tool  # noqa: F401 (fixture)
from pykpatch.elf.klp_link import from_linkable, to_linkable
from pykpatch.elf.reader import read_elf
from pykpatch.elf.writer import write_elf

SIZES = ["--struct-size", "bug_entry=12", "--struct-size", "exception_table_entry=12",
         "--struct-size", "jump_entry=16", "--struct-size", "alt_instr=12",
         "--struct-size", "paravirt_patch_site=16", "--struct-size", "orc_entry=6",
         "--struct-size", "static_call_site=8", "--struct-size", "pi_entry=44"]


def _assert_one_line_error(result: subprocess.CompletedProcess, code: int) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_patch_written_and_exit_0(corpus, tmp_path):
    out = tmp_path / "out.o"
    report = tmp_path / "report.json"
    result = run_diff_cli([str(corpus / "cold-add.ORIG.o"), str(corpus / "cold-add.PATCHED.o"),
                           "-o", str(out), "--report", str(report), *SIZES])
    assert result.returncode == 0, result.stderr
    assert ".pykpatch.funcs" in tool("readelf", "-SW", str(out))
    assert '"outcome": "patch"' in report.read_text()


def test_nothing_changed_exits_3_without_output(corpus, tmp_path):
    out = tmp_path / "out.o"
    result = run_diff_cli([str(corpus / "warn-detect.ORIG.o"),
                           str(corpus / "warn-detect.PATCHED.FAIL.o"), "-o", str(out), *SIZES])
    assert result.returncode == 3 and not out.exists()


def test_refusal_exits_1_with_reason_and_no_output(corpus, tmp_path):
    out = tmp_path / "out.o"
    result = run_diff_cli([str(corpus / "meminfo-init.ORIG.o"),
                           str(corpus / "meminfo-init.PATCHED.FAIL.o"), "-o", str(out), *SIZES])
    assert result.returncode == 1 and not out.exists()
    assert "__init" in result.stderr and "Traceback" not in result.stderr


def _bad_inputs(corpus: Path, tmp: Path) -> dict:
    good = corpus / "cold-add.ORIG.o"
    data = good.read_bytes()
    garbage = tmp / "garbage.o"
    garbage.write_bytes(b"this is not an object file at all\n" * 10)
    truncated = tmp / "truncated.o"
    truncated.write_bytes(data[: len(data) // 3])
    arm = tmp / "arm.o"
    arm.write_bytes(data[:18] + (183).to_bytes(2, "little") + data[20:])  # EM_AARCH64
    exe = tmp / "exec.o"
    exe.write_bytes(data[:16] + (2).to_bytes(2, "little") + data[18:])  # ET_EXEC
    return {"garbage": (garbage, good), "truncated": (good, truncated),
            "non-x86-64": (arm, good), "ET_EXEC": (good, exe),
            "mismatched pair": (good, corpus / "bug-table-section.PATCHED.o"),
            "missing file": (good, tmp / "nope.o")}


@pytest.mark.parametrize("kind", ["garbage", "truncated", "non-x86-64", "ET_EXEC",
                                  "mismatched pair", "missing file"])
def test_bad_input_exits_2_with_one_line(corpus, tmp_path, kind):
    orig, patched = _bad_inputs(corpus, tmp_path)[kind]
    out = tmp_path / "out.o"
    result = run_diff_cli([str(orig), str(patched), "-o", str(out), *SIZES])
    _assert_one_line_error(result, 2)
    assert not out.exists()


def test_debug_shows_the_traceback(corpus, tmp_path):
    result = run_diff_cli(["/dev/null", str(corpus / "cold-add.ORIG.o"), "-o",
                           str(tmp_path / "o.o"), "--debug"])
    assert result.returncode == 2 and "Traceback" in result.stderr


def test_missing_struct_size_names_the_option(corpus, tmp_path):
    result = run_diff_cli([str(corpus / "bug-table-section.ORIG.o"),
                           str(corpus / "bug-table-section.PATCHED.o"), "-o", str(tmp_path / "o.o")])
    _assert_one_line_error(result, 2)
    assert "--struct-size bug_entry=BYTES" in result.stderr


def test_usage_error_exits_2(tmp_path):
    _assert_one_line_error(run_diff_cli(["only-one-arg"]), 2)
    _assert_one_line_error(run_diff_cli(["a.o", "b.o", "-o", "c.o", "--struct-size", "x"]), 2)


def test_klp_relocations_survive_ld_and_come_back(corpus, tmp_path):
    out = tmp_path / "out.o"
    assert run_diff_cli([str(corpus / "convert-global-local.ORIG.o"),
                         str(corpus / "convert-global-local.PATCHED.o"), "-o", str(out),
                         *SIZES]).returncode == 0
    before = tool("readelf", "-rW", str(out))
    assert ".klp.rela.vmlinux." in before
    elf = read_elf(out)
    to_linkable(elf)
    linkable = tmp_path / "linkable.o"
    write_elf(elf, linkable)
    assert ".klp.rela" not in tool("readelf", "-SW", str(linkable))
    linked = tmp_path / "linked.ko"
    subprocess.run(["ld", "-r", "-o", str(linked), str(linkable)], check=True)
    assert from_linkable(linked) > 0
    after = tool("readelf", "-rW", str(linked))
    klp_lines = lambda text: sorted(l.split()[0] + l.split()[2] + l.split()[4]  # noqa: E731
                                    for l in text.splitlines() if ".klp.sym." in l)
    assert klp_lines(after) == klp_lines(before)
    symbols = tool("readelf", "-sW", str(linked))
    assert all("OS [0xff20]" in l for l in symbols.splitlines() if ".klp.sym." in l)
    result = subprocess.run(["readelf", "-aW", str(linked)], capture_output=True, text=True)
    assert "Warning" not in result.stderr


def test_klp_symbol_of_another_object_stays_in_its_sections_object_through_ld(corpus, tmp_path):
    """A module's code calling another module's export: the relocation is
    nfsd's (applied when nfsd loads), its symbol sunrpc's."""
    out = tmp_path / "out.o"
    assert run_diff_cli([str(corpus / "convert-global-local.ORIG.o"),
                         str(corpus / "convert-global-local.PATCHED.o"), "-o", str(out),
                         *SIZES]).returncode == 0
    elf = read_elf(out)
    moved = next(s for s in elf.symbols if s.name.startswith(".klp.sym.vmlinux."))
    name = moved.name.replace(".klp.sym.vmlinux.", ".klp.sym.othermod.")
    moved.name = name
    to_linkable(elf)
    linkable = tmp_path / "linkable.o"
    write_elf(elf, linkable)
    linked = tmp_path / "linked.ko"
    subprocess.run(["ld", "-r", "-o", str(linked), str(linkable)], check=True)
    from_linkable(linked)
    relocations = tool("readelf", "-rW", str(linked))
    sections = [block.split("'")[1] for block in relocations.split("Relocation section ")[1:]
                if name in block]
    assert sections and all(s.startswith(".klp.rela.vmlinux.") for s in sections)
    symbols = tool("readelf", "-sW", str(linked))
    assert f"OS [0xff20] {name}" in symbols
    assert ":in:" not in symbols


FUZZ_SEED = 1234
FUZZ_RUNS = 24


def test_fuzzed_objects_never_crash(corpus, tmp_path):
    """Mutated corpus bytes: any exit 0/1/2/3 is fine, a traceback is not."""
    rng = random.Random(FUZZ_SEED)
    pairs = [("cold-add.ORIG.o", "cold-add.PATCHED.o"), ("data-new.ORIG.o", "data-new.PATCHED.o"),
             ("bug-table-section.ORIG.o", "bug-table-section.PATCHED.o")]
    for run in range(FUZZ_RUNS):
        orig, patched = pairs[run % len(pairs)]
        data = bytearray((corpus / patched).read_bytes())
        for _ in range(rng.randint(1, 40)):
            data[rng.randrange(64, len(data))] = rng.randrange(256)
        if run % 4 == 0:  # also hit the headers now and then
            data[rng.randrange(16, 64)] = rng.randrange(256)
        mutated = tmp_path / f"fuzz{run}.o"
        mutated.write_bytes(bytes(data))
        result = run_diff_cli([str(corpus / orig), str(mutated), "-o",
                               str(tmp_path / f"out{run}.o"), *SIZES])
        assert result.returncode in (0, 1, 2, 3), (run, result.stderr)
        assert "Traceback" not in result.stderr, (run, result.stderr)
