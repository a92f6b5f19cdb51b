"""The target symbol table: sympos, FILE blocks, text formats, ambiguity."""

import pytest

from pykpatch.differ.symbols import TargetSymbols, TargetSymbol, load_target_symbols
from pykpatch.elf.constants import STB_GLOBAL, STB_LOCAL, STT_FUNC
from pykpatch.errors import InputError

READELF = """
Symbol table '.symtab' contains 6 entries:
   Num:    Value          Size Type    Bind   Vis      Ndx Name
     0: 0000000000000000     0 NOTYPE  LOCAL  DEFAULT  UND
     1: 0000000000000000     0 FILE    LOCAL  DEFAULT  ABS a.c
     2: ffffffff81000200    10 FUNC    LOCAL  DEFAULT    1 show
     3: 0000000000000000     0 FILE    LOCAL  DEFAULT  ABS b.c
     4: ffffffff81000100    10 FUNC    LOCAL  DEFAULT    1 show
     5: ffffffff81000300    10 FUNC    GLOBAL DEFAULT    1 unique_fn
     6: 0000000000000000     0 NOTYPE  GLOBAL DEFAULT  UND printk
"""


@pytest.fixture
def readelf_table(tmp_path):
    path = tmp_path / "syms.txt"
    path.write_text(READELF)
    return load_target_symbols(str(path), fallback=None, symvers=None)


def test_unique_name_has_sympos_0(readelf_table):
    assert readelf_table.sympos("unique_fn", local=False) == 0


def test_duplicate_local_ranked_by_address_within_its_file(readelf_table):
    # b.c's show is at the lower address, so it is the first of the two.
    assert readelf_table.sympos("show", local=True, files=["b.c"]) == 1
    assert readelf_table.sympos("show", local=True, files=["a.c"]) == 2


def test_ambiguity_is_an_error_not_a_guess(readelf_table):
    with pytest.raises(InputError, match="show"):
        readelf_table.sympos("show", local=True, files=["c.c"])


def test_undefined_and_unknown_names_are_not_found(readelf_table):
    assert readelf_table.sympos("printk", local=False) is None
    assert readelf_table.sympos("nope", local=False) is None


def test_kallsyms_text_and_symvers(tmp_path):
    kallsyms = tmp_path / "kallsyms"
    kallsyms.write_text("ffffffff81000100 t show\nffffffff81000200 T vfs_read\n"
                        "ffffffffc0000000 t show\t[ext4]\n")
    symvers = tmp_path / "Module.symvers"
    symvers.write_text("0x12345678\tvfs_read\tvmlinux\tEXPORT_SYMBOL\t\n")
    table = load_target_symbols(str(kallsyms), fallback=None, symvers=str(symvers))
    assert table.is_exported("vfs_read") and not table.is_exported("show")
    assert table.sympos("show", local=True) == 0  # the module's copy is not vmlinux's


def test_module_table_without_file_symbols_ranks_within_module():
    table = TargetSymbols("mod.ko")
    table.add(TargetSymbol("helper", 0x40, STB_LOCAL, STT_FUNC, None))
    table.add(TargetSymbol("helper", 0x10, STB_LOCAL, STT_FUNC, None))
    table.add(TargetSymbol("main", 0x80, STB_GLOBAL, STT_FUNC, None))
    with pytest.raises(InputError):
        table.sympos("helper", local=True)
    assert table.sympos("main", local=False) == 0


def test_garbage_symbols_file_is_input_error(tmp_path):
    path = tmp_path / "junk"
    path.write_text("hello\nworld\n")
    with pytest.raises(InputError):
        load_target_symbols(str(path), fallback=None, symvers=None)


SAME_FILE_NAME_TWICE = """\
Symbol table '.symtab' contains 9 entries:
   Num:    Value          Size Type    Bind   Vis      Ndx Name
     0: 0000000000000000     0 NOTYPE  LOCAL  DEFAULT  UND
     1: 0000000000000000     0 FILE    LOCAL  DEFAULT  ABS route.c
     2: ffffffff81000000    10 FUNC    LOCAL  DEFAULT    1 dst_discard
     3: ffffffff81000010    10 FUNC    LOCAL  DEFAULT    1 ipv4_mtu
     4: ffffffff81000020    10 FUNC    LOCAL  DEFAULT    1 rt_cache_route
     5: 0000000000000000     0 FILE    LOCAL  DEFAULT  ABS route.c
     6: ffffffff82000000    10 FUNC    LOCAL  DEFAULT    1 dst_discard
     7: ffffffff82000010    10 FUNC    LOCAL  DEFAULT    1 ip6_pkt_drop
     8: ffffffff82000020    10 FUNC    GLOBAL DEFAULT    1 ip6_route_input
"""


def test_two_files_of_one_name_are_told_apart_by_their_other_locals(tmp_path):
    # net/ipv4/route.c and net/ipv6/route.c both have a static dst_discard.
    from pykpatch.differ.symbols import load_target_symbols

    path = tmp_path / "symbols.txt"
    path.write_text(SAME_FILE_NAME_TWICE)
    table = load_target_symbols(str(path), None, None)
    assert table.sympos("dst_discard", True, ["route.c"], ["ipv4_mtu", "rt_cache_route"]) == 1
    assert table.sympos("dst_discard", True, ["route.c"], ["ip6_pkt_drop"]) == 2
    with pytest.raises(InputError, match="2 symbols named 'dst_discard'"):
        table.sympos("dst_discard", True, ["route.c"], [])


@pytest.mark.parametrize("orig, patched, paired", [
    ("foo.isra.3", "foo.isra.5", True),
    ("__UNIQUE_ID_ddebug12", "__UNIQUE_ID_ddebug15", True),
    # BTF_ID(struct, nf_conn): __COUNTER__ and __LINE__ run together
    ("__BTF_ID__struct__nf_conn__768208", "__BTF_ID__struct__nf_conn__768222", True),
    ("__BTF_ID__struct__nf_conn__768208", "__BTF_ID__struct__sock__768208", False),
    (".rodata.str1.1", ".rodata.str1.8", False),
])
def test_compiler_and_macro_counters_do_not_change_identity(orig, patched, paired):
    from pykpatch.differ.correlate import mangled_key
    assert (mangled_key(orig) == mangled_key(patched)) is paired


def test_symvers_namespaces(tmp_path):
    from pykpatch.kernel.symvers import read_symvers
    symvers = tmp_path / "Module.symvers"
    symvers.write_text("0x1\tnvme_find_get_ns\tvmlinux\tEXPORT_SYMBOL_GPL\tNVME_TARGET_PASSTHRU\n"
                       "0x2\tprintk\tvmlinux\tEXPORT_SYMBOL\t\n"
                       "0x3\tusb_stor_x\tdrivers/usb/storage/usb-storage\tEXPORT_SYMBOL_GPL\tUSB_STORAGE\n")
    exports = read_symvers(str(symvers))
    assert {e.name: e.namespace for e in exports.values() if e.namespace} == {
        "nvme_find_get_ns": "NVME_TARGET_PASSTHRU", "usb_stor_x": "USB_STORAGE"}
