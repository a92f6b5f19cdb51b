"""Which objects this kernel's config builds, from which source, into what.

A full build knows this from its ``.cmd`` files; we have no full build, so we
ask kbuild itself: ``make -n vmlinux modules`` walks every Makefile under the
real config and prints every compile command without running one (about
8 s on two cores, cached in the tree).  Each ``CC`` line names the object, its source,
and through ``-DMODULE``/``KBUILD_MODNAME`` whether it goes into vmlinux or
which module.  That is exact: it is the build's own decision, not a guess
from Makefile text.

Headers are mapped to objects on demand with the preprocessor
(:func:`objects_including`): every object's own compile command is rerun
with ``-M``, which lists every file it includes, transitively.
"""

import json
import os
import re
import shlex
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from pykpatch.errors import KpatchError
from pykpatch.kernel import kbuild
from pykpatch.process import run

INDEX_FILE = ".pykpatch-objects.json"
DEPS_FILE = ".pykpatch-deps.json"
_INDEX_VERSION = 2  # 2: objects outside the kernel proper left out

_CC_LINE = re.compile(r"echo '  CC (?:\[M\]|   )  (?P<obj>\S+\.o)'")
_GCC_CMD = re.compile(
    # gcc-12 (Debian 12's kernels), x86_64-linux-gnu-gcc-14 (Debian 13's)
    r";\s+(?P<cmd>(?:\S*/)?(?:[\w.]+-linux-gnu-)?gcc(?:-\d+)? -Wp,-MMD,\S+ .*? -c -o "
    r"(?P<obj>\S+\.o) (?P<src>\S+\.c))\s+;")
_NO_RULE = re.compile(r"No rule to make target '(?P<path>[^']+)'")
_SOURCE_SUFFIXES = (".c", ".h", ".S")
_MODNAME = re.compile(r"-DKBUILD_MODNAME='\"(?P<name>[^\"]+)\"'")
# Directories whose lib-y objects are archived into lib.a, from which the
# final link takes a member only when something calls into it.
_LIBRARY_DIRS = re.compile(r"^(lib|arch/[^/]+/lib)/")


def may_be_archive_member(src: str) -> bool:
    """True when *src* may be a lib.a member that vmlinux left out."""
    return bool(_LIBRARY_DIRS.match(src))


class IncompleteTree(KpatchError):
    """The build wants sources the tree does not have (see DebianKernel.source_exclusions)."""

    def __init__(self, missing: List[str]) -> None:
        super().__init__(f"the source tree lacks {len(missing)} file(s) the build needs, "
                         f"e.g. {missing[0]}")
        self.missing = missing


@dataclass(frozen=True)
class KernelObject:
    """One translation unit of the kernel build."""

    obj: str               # fs/proc/cmdline.o (relative to the tree)
    src: str               # fs/proc/cmdline.c
    module: Optional[str]  # KBUILD_MODNAME of its module, None for vmlinux
    command: str           # the compile command kbuild would run

    @property
    def target(self) -> str:
        """The livepatch object it belongs to: 'vmlinux' or the module name."""
        return self.module or "vmlinux"


def check_nothing_missing(text: str, tree: Path) -> None:
    """Raise unless ``make -n`` found a rule for everything but the link's inputs.

    Without a rule for a prerequisite, make skips the objects needing it
    and lists nothing for them: the index would silently miss them.  A
    missing source is most likely one the lean tree left packed
    (IncompleteTree); anything else means the tree is not prepared (the
    host tools of ``archprepare`` generate some headers and sources).
    """
    missing = sorted({p for p in _NO_RULE.findall(text) if not kbuild.LINK_INPUTS.match(p)})
    sources = [p for p in missing if p.endswith(_SOURCE_SUFFIXES)]
    if sources:
        raise IncompleteTree(sources)
    if missing:
        raise KpatchError(f"listing the objects of {tree}: make has no rule for "
                          f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; "
                          "is the tree prepared (make modules_prepare)?")


def parse_make_dry_run(text: str) -> Dict[str, KernelObject]:
    """Objects by source path, from the output of ``make -n``."""
    objects: Dict[str, KernelObject] = {}
    for line in text.splitlines():
        if not _CC_LINE.search(line):
            continue
        m = _GCC_CMD.search(line)
        if not m or m.group("obj").startswith(kbuild.PREPARE_OBJECT_DIR):
            continue  # (prepare's objects are listed only until prepare has built them)
        if kbuild.OUTSIDE_KERNEL_PROPER.search(m.group("obj")):
            continue  # (and would hide the kernel's own object of a source built twice)
        cmd = m.group("cmd")
        module = None
        if " -DMODULE " in cmd:
            name = _MODNAME.search(cmd)
            module = name.group("name") if name else Path(m.group("obj")).stem
        objects[m.group("src")] = KernelObject(m.group("obj"), m.group("src"), module, cmd)
    return objects


class ObjectIndex:
    """The objects of one prepared tree, by source file."""

    def __init__(self, tree: Path, make_args: Sequence[str], logfile: Optional[Path] = None,
                 jobs: int = 2, tools: Sequence[str] = ()) -> None:
        self.tree = tree
        self.make_args = list(make_args)
        self.tools = list(tools)  # what goes before make and the compiler (a build root)
        self.jobs = jobs
        self.logfile = logfile
        self._objects: Optional[Dict[str, KernelObject]] = None
        self._readers: Optional[Dict[str, List[str]]] = None

    @property
    def objects(self) -> Dict[str, KernelObject]:
        if self._objects is None:
            self._objects = self._load() or self._scan()
        return self._objects

    def _load(self) -> Optional[Dict[str, KernelObject]]:
        path = self.tree / INDEX_FILE
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if data.get("version") != _INDEX_VERSION or data.get("make_args") != self.make_args:
            return None
        return {o["src"]: KernelObject(**o) for o in data["objects"]}

    def _scan(self) -> Dict[str, KernelObject]:
        # -k: the dry run cannot link vmlinux (nothing was built), but every
        # compile command has been printed by then.  Parallel, each sub-make's
        # lines kept together.  objtool is left alone: -n does not reach its
        # make, and modules_prepare may be building it.
        proc = run([*self.tools, "make", "-n", "-k", f"-j{self.jobs}", "--output-sync=recurse",
                    *self.make_args, *kbuild.not_remade(kbuild.OBJTOOL_GOAL),
                    "vmlinux", "modules"], cwd=self.tree,
                   check=False, what="listing the kernel's objects (make -n)")
        check_nothing_missing(proc.stdout, self.tree)
        objects = parse_make_dry_run(proc.stdout)
        if not objects:
            raise KpatchError(f"make -n in {self.tree} listed no objects", log=str(self.logfile))
        data = {"version": _INDEX_VERSION, "make_args": self.make_args,
                "objects": [asdict(o) for o in objects.values()]}
        tmp = self.tree / (INDEX_FILE + ".tmp")
        tmp.write_text(json.dumps(data))
        tmp.rename(self.tree / INDEX_FILE)
        return objects

    def for_source(self, src: str) -> Optional[KernelObject]:
        return self.objects.get(src)

    def objects_including(self, header: str, jobs: int = 2) -> List[KernelObject]:
        """Every object whose preprocessing reads *header* (exact, from ``gcc -M``)."""
        if self._readers is None:
            # file -> sources that read it, once: an update asks for hundreds of files.
            self._readers = {}
            for src, files in self._dependencies(jobs).items():
                for f in files:
                    self._readers.setdefault(f, []).append(src)
        return sorted((self.objects[src] for src in self._readers.get(header, [])),
                      key=lambda o: o.obj)

    def files_read_by(self, obj: KernelObject) -> List[str]:
        """Every file the compile of *obj* reads (one ``gcc -M``; the whole index is
        not needed for one object)."""
        return self._deps_of(obj)

    def _dependencies(self, jobs: int) -> Dict[str, List[str]]:
        path = self.tree / DEPS_FILE
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            results = list(pool.map(self._deps_of, self.objects.values()))
        deps = {o.src: files for o, files in zip(self.objects.values(), results)}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(deps))
        tmp.rename(path)
        return deps

    def _deps_of(self, obj: KernelObject) -> List[str]:
        if not (self.tree / obj.src).is_file():
            return []  # generated at build time (vdso images...): nothing a patch reaches
        argv = shlex.split(obj.command)
        argv = [a for a in argv if not a.startswith("-Wp,-MMD")]
        out_at = argv.index("-o")
        argv[out_at - 1:out_at + 2] = ["-M", "-MG", "-o", "/dev/stdout"]  # drop "-c -o X.o"
        proc = subprocess.run([*self.tools, *argv], cwd=self.tree, capture_output=True, text=True)
        if proc.returncode != 0:
            raise KpatchError(f"preprocessing {obj.src} for its includes failed:\n"
                              + proc.stderr.strip()[-2000:])
        words = proc.stdout.replace("\\\n", " ").split()[1:]
        return sorted({os.path.normpath(w) for w in words})
