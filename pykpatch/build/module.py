"""Linking the differ's objects into a livepatch module, and checking the result.

The module is an ordinary out-of-tree kbuild module built against the
target's headers (vermagic and ``Module.symvers`` come from there), made of
our C core (``pykpatch/data/module``), a generated file of origin strings,
and the differ's objects.  GNU ld destroys klp relocation sections, so the
objects go in with their klp relocations in linkable form and the linked
``.ko`` gets them back afterwards (see :mod:`pykpatch.elf.klp_link`).
"""

import hashlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

from pykpatch import __version__
from pykpatch.elf.klp_link import from_linkable, to_linkable
from pykpatch.elf.reader import read_elf
from pykpatch.elf.writer import write_elf
from pykpatch.errors import KpatchError
from pykpatch.kernel.livepatch import KLP_SYM_PREFIX, MODULE_NAME_MAX, SHN_LIVEPATCH
from pykpatch.kernel.symvers import read_symvers
from pykpatch.process import run

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "data" / "module"

# Origin of a module, in its .modinfo (read back by `kpatch list/info`).
MODINFO_PATCHES = "pykpatch.patches"
MODINFO_RELEASE = "pykpatch.release"
MODINFO_VERSION = "pykpatch.version"
MODINFO_DESCRIPTION = "description"    # what modinfo(8) shows as the module's description


def module_name(patches: Sequence[Path], name: str = "") -> str:
    """The kpatch-style module name: livepatch-<patch> unless given; [A-Za-z0-9_-], ≤ 55."""
    if not name:
        stem = patches[0].name.rsplit(".", 1)[0] if len(patches) == 1 else "patch"
        name = f"livepatch-{stem}"
    name = re.sub(r"[^A-Za-z0-9_-]", "-", name)
    return name[:MODULE_NAME_MAX]


@dataclass
class ModuleInputs:
    name: str
    objects: List[Path]          # differ outputs (klp relocations in kernel form)
    patches: List[Path]
    release: str
    replace: bool
    description: str = ""        # modinfo's description (one line)


def origin_strings(inputs: ModuleInputs) -> Dict[str, str]:
    """modinfo key -> value describing where the module came from."""
    patches = ",".join(f"{p.name}:sha256:{hashlib.sha256(p.read_bytes()).hexdigest()[:16]}"
                       for p in inputs.patches)
    strings = {MODINFO_PATCHES: patches, MODINFO_RELEASE: inputs.release,
               MODINFO_VERSION: __version__}
    if inputs.description:
        strings[MODINFO_DESCRIPTION] = " ".join(inputs.description.split())
    return strings


def _c_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _origin_c(strings: Dict[str, str]) -> str:
    # Raw .modinfo entries: MODULE_INFO() only takes C identifiers as keys.
    lines = ["#include <linux/compiler.h>", ""]
    for i, (key, value) in enumerate(strings.items()):
        lines.append(f'static const char pykpatch_origin_{i}[] __used __section(".modinfo") '
                     f'__aligned(1) = {_c_string(f"{key}={value}")};')
    return "\n".join(lines) + "\n"


def prepare_module_dir(inputs: ModuleInputs, build_dir: Path) -> None:
    """Write the kbuild directory: core, origin, differ objects, Kbuild file."""
    if build_dir.exists():
        shutil.rmtree(build_dir)
    shutil.copytree(TEMPLATE_DIR, build_dir)
    (build_dir / "pykpatch-origin.c").write_text(_origin_c(origin_strings(inputs)))
    parts = ["pykpatch-module.o", "pykpatch-origin.o"]
    for i, obj in enumerate(inputs.objects):
        part = f"pykpatch-diff-{i}.o"
        elf = read_elf(obj)
        to_linkable(elf)
        write_elf(elf, build_dir / part)
        # kbuild wants a .cmd file for every object it links; this one is prebuilt.
        (build_dir / f".{part}.cmd").write_text(f"cmd_{build_dir}/{part} := true\n")
        parts.append(part)
    (build_dir / "Kbuild").write_text(
        f"obj-m := {inputs.name}.o\n"
        f"{inputs.name}-y := {' '.join(parts)}\n"
        "ldflags-y += -T $(src)/pykpatch.lds\n"
        f"ccflags-y += -DPYKPATCH_REPLACE={1 if inputs.replace else 0}\n")


def link_module(inputs: ModuleInputs, headers_dir: Path, build_dir: Path, logfile: Path,
                jobs: int = 2, tools: Sequence[str] = ()) -> Path:
    """Build the livepatch .ko and put its klp relocations back; returns its path."""
    prepare_module_dir(inputs, build_dir)
    # modpost would refuse the .klp.sym.* references as undefined: they are
    # resolved by livepatch at load, not by the module loader.
    run([*tools, "make", f"-j{jobs}", "-C", headers_dir, f"M={build_dir}", "KBUILD_MODPOST_WARN=1",
         "modules"], logfile=logfile, what="linking the livepatch module")
    ko = build_dir / f"{inputs.name}.ko"
    if not ko.is_file():
        raise KpatchError(f"kbuild made no {ko.name}", log=str(logfile))
    from_linkable(ko)
    return ko


# -- checks on the finished module --------------------------------------------

def check_module(ko: Path, release: str, symvers: Path) -> None:
    """Refuse a module the target would not load: vermagic, undefined symbols, CRCs."""
    elf = read_elf(ko)
    modinfo = _modinfo(elf)
    vermagic = modinfo.get("vermagic", "")
    if vermagic.split(" ")[0] != release:
        raise KpatchError(f"{ko.name}: vermagic '{vermagic}' is not for {release}")
    if modinfo.get("livepatch") != "Y":
        raise KpatchError(f"{ko.name}: not marked as a livepatch module")
    exported = read_symvers(symvers)
    problems = []
    for sym in elf.symbols:
        if sym.name and sym.section is None and sym.shndx == 0 and sym.name not in exported:
            if not sym.name.startswith(KLP_SYM_PREFIX):
                problems.append(f"undefined symbol {sym.name} is not exported by the kernel")
        if sym.name.startswith(KLP_SYM_PREFIX) and sym.shndx != SHN_LIVEPATCH:
            problems.append(f"{sym.name} is not an SHN_LIVEPATCH symbol")
    for name, crc in _module_versions(elf).items():
        export = exported.get(name)
        if export is not None and int(export.crc, 16) != crc:
            problems.append(f"CRC of {name} is {crc:#010x}, the kernel's is {export.crc}")
    if problems:
        raise KpatchError(f"{ko.name} would not load:\n  " + "\n  ".join(problems))


def _modinfo(elf) -> Dict[str, str]:
    for sec in elf.sections:
        if sec.name == ".modinfo":
            pairs = (p.split("=", 1) for p in bytes(sec.data).decode(errors="replace").split("\0"))
            return {p[0]: p[1] for p in pairs if len(p) == 2}
    return {}


def _module_versions(elf) -> Dict[str, int]:
    # struct modversion_info { unsigned long crc; char name[64 - sizeof(long)]; }
    for sec in elf.sections:
        if sec.name == "__versions":
            data = bytes(sec.data)
            out = {}
            for off in range(0, len(data) - 63, 64):
                crc = int.from_bytes(data[off:off + 8], "little")
                name = data[off + 8:off + 64].split(b"\0")[0].decode()
                out[name] = crc
            return out
    return {}
