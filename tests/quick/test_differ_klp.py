"""How references leaving a module patch are resolved: exports of vmlinux stay
normal relocations, exports of other modules become klp relocations of the
patched module (resolved when it loads, after the modules it depends on)."""

from pathlib import Path

import pytest

from _differ_support import corpus  # noqa: F401 (fixture)
from pykpatch.differ.driver import diff_objects
from pykpatch.differ.state import Options
from pykpatch.errors import Refusal

SIZES = {"bug_entry": 12, "exception_table_entry": 12, "jump_entry": 16, "alt_instr": 12,
         "paravirt_patch_site": 16, "orc_entry": 6, "static_call_site": 8, "pi_entry": 44}


@pytest.fixture
def symvers(tmp_path: Path) -> Path:
    # cold-add's changed function calls printk and single_open; here the
    # second is pretended to be an export of module "seq-helpers".
    path = tmp_path / "Module.symvers"
    path.write_text("0x1\tprintk\tvmlinux\tEXPORT_SYMBOL\t\n"
                    "0x2\tsingle_open\tfs/seq-helpers\tEXPORT_SYMBOL_GPL\t\n")
    return path


def _diff(corpus: Path, **options):
    return diff_objects(str(corpus / "cold-add.ORIG.o"), str(corpus / "cold-add.PATCHED.o"),
                        Options(objname="mymod", struct_sizes=SIZES, **options))


def _undefined(result) -> set:
    return {s.name for s in result.output.symbols if s.section is None and s.name}


def test_another_modules_export_is_a_klp_symbol_of_that_module(corpus, symvers):
    result = _diff(corpus, symvers=str(symvers), dependencies=frozenset({"seq_helpers"}))
    assert ".klp.sym.seq_helpers.single_open,0" in result.report.klp_symbols
    assert "single_open" not in _undefined(result)
    assert "printk" in _undefined(result)  # vmlinux's export: the module loader's job
    klp_sections = [s.name for s in result.output.sections if s.name.startswith(".klp.rela.")]
    assert klp_sections and all(n.startswith(".klp.rela.mymod.") for n in klp_sections)


def test_sympos_of_another_modules_export_comes_from_its_table(corpus, symvers, tmp_path):
    table = tmp_path / "kallsyms"
    table.write_text("0000000000001000 t single_open\n0000000000002000 T single_open\n")
    result = _diff(corpus, symvers=str(symvers), module_symbols=lambda module: str(table))
    assert ".klp.sym.seq_helpers.single_open,2" in result.report.klp_symbols


def test_export_of_a_module_the_target_does_not_depend_on_is_refused(corpus, symvers):
    with pytest.raises(Refusal) as refusal:
        _diff(corpus, symvers=str(symvers), dependencies=frozenset({"sunrpc"}))
    assert "single_open(), exported by module seq_helpers, which mymod does not depend on" \
        in str(refusal.value)


def test_vmlinux_code_keeps_normal_references_to_exports(corpus, symvers):
    result = diff_objects(str(corpus / "cold-add.ORIG.o"), str(corpus / "cold-add.PATCHED.o"),
                          Options(symvers=str(symvers), struct_sizes=SIZES))
    assert {"single_open", "printk"} <= _undefined(result)
    assert not any(".seq_helpers." in name for name in result.report.klp_symbols)
