"""Sizes of the kernel structs behind the special sections, from the build tree.

The differ splits ``__bug_table``, ``__ex_table``... into entries of these
structs.  Their sizes depend on the kernel version and config, so they are
measured, never assumed: a tiny C file is compiled with the exact flags of a
real vmlinux object of this tree, and the sizes are read back from its data.
"""

import json
import logging
import shlex
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, List

from pykpatch.build.objindex import ObjectIndex
from pykpatch.elf.reader import read_elf
from pykpatch.errors import KpatchError
from pykpatch.kernel.sections import STRUCT_NAMES

log = logging.getLogger("pykpatch")

CACHE_FILE = ".pykpatch-struct-sizes.json"

# Each struct with the header that defines it and the config that enables it.
_PROBES = {
    "bug_entry": ("linux/bug.h", "CONFIG_GENERIC_BUG"),
    "exception_table_entry": ("asm/extable.h", None),
    "jump_entry": ("linux/jump_label.h", "CONFIG_JUMP_LABEL"),
    "alt_instr": ("asm/alternative.h", None),
    "paravirt_patch_site": ("asm/paravirt_types.h", "CONFIG_PARAVIRT"),
    "static_call_site": ("linux/static_call.h", "CONFIG_HAVE_STATIC_CALL_INLINE"),
    "orc_entry": ("asm/orc_types.h", "CONFIG_UNWINDER_ORC"),
    "pi_entry": ("linux/printk.h", "CONFIG_PRINTK_INDEX"),
}
_SECTION = ".data.pykpatch_struct_sizes"


def _probe_source(names: List[str]) -> str:
    # linux/module.h first: several of the headers below are not self-contained.
    lines = ["#include <linux/module.h>", "#include <linux/uaccess.h>"]
    lines += [f"#include <{_PROBES[name][0]}>" for name in names]
    lines.append("#include <linux/compiler.h>")
    for name in names:
        config = _PROBES[name][1]
        size = f"sizeof(struct {name})"
        if config is not None:
            # The struct may not even be declared when its config is off.
            lines.append(f"#ifdef {config}")
        lines.append(f'unsigned long pykpatch_size_{name} __section("{_SECTION}.{name}") = {size};')
        if config is not None:
            lines.append("#endif")
    return "\n".join(lines) + "\n"


def struct_sizes(tree: Path, index: ObjectIndex) -> Dict[str, int]:
    """Bytes per entry of each special-section struct this kernel has (cached in *tree*)."""
    cache = tree / CACHE_FILE
    if cache.is_file():
        return json.loads(cache.read_text())
    sizes = _measure(tree, index)
    cache.write_text(json.dumps(sizes))
    return sizes


def _measure(tree: Path, index: ObjectIndex) -> Dict[str, int]:
    """All sizes in one compile; when that fails, one compile per struct: a
    kernel may lack a struct its config still names (paravirt_patch_site
    left in 6.8, when .parainstructions became alternatives)."""
    template = next((o for o in index.objects.values() if o.module is None), None)
    if template is None:
        raise KpatchError(f"no vmlinux object in {tree} to take compile flags from")
    try:
        sizes = _compile_probe(tree, index, template.command, list(_PROBES))
    except KpatchError:
        sizes = {}
        for name in _PROBES:
            try:
                sizes.update(_compile_probe(tree, index, template.command, [name]))
            except KpatchError as failed:
                why = [line for line in str(failed).splitlines() if "error:" in line]
                log.info("struct %s not measured (%s)", name, why[0].split("error:")[-1].strip()
                         if why else "the probe did not compile")
    missing = set(STRUCT_NAMES) - set(sizes) - {n for n, (_, c) in _PROBES.items() if c}
    if missing:
        raise KpatchError(f"could not measure struct {', '.join(sorted(missing))}")
    return sizes


def _compile_probe(tree: Path, index: ObjectIndex, command: str,
                   names: List[str]) -> Dict[str, int]:
    with tempfile.TemporaryDirectory(prefix="pykpatch-sizes-") as tmp:
        src, obj = Path(tmp) / "sizes.c", Path(tmp) / "sizes.o"
        src.write_text(_probe_source(names))
        argv = [a for a in shlex.split(command) if not a.startswith("-Wp,-MMD")]
        argv[-1] = str(src)
        argv[argv.index("-o") + 1] = str(obj)
        proc = subprocess.run([*index.tools, *argv], cwd=tree, capture_output=True, text=True)
        if proc.returncode != 0:
            raise KpatchError("measuring the kernel's special-section structs failed:\n"
                              + proc.stderr.strip()[-2000:])
        elf = read_elf(obj)
    sizes = {}
    for sec in elf.sections:
        if sec.name.startswith(_SECTION + "."):
            sizes[sec.name[len(_SECTION) + 1:]] = struct.unpack("<Q", bytes(sec.data[:8]))[0]
    return sizes
