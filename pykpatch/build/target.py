"""The kernel a patch is built for, and everything about it the build reads."""

import functools
import logging
import os
import platform
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, FrozenSet, List, Optional, Set

from pykpatch.build.objindex import IncompleteTree, ObjectIndex
from pykpatch.cache import made_once
from pykpatch.errors import InputError, KpatchError
from pykpatch.kernel import kbuild
from pykpatch.kernel.livepatch import module_objname
from pykpatch.kernel.module import MODINFO_DEPENDS
from pykpatch.manage.modinfo import read_module_info
from pykpatch.process import run_pipeline
from pykpatch.provider.debian import DebianKernel

log = logging.getLogger("pykpatch")

_BACKGROUND_NICENESS = 10


# A path known later: unpacked in the background, or on first use.
PathLater = Callable[[], Optional[Path]]


def known(path: Optional[Path]) -> PathLater:
    return lambda: path


@dataclass
class Target:
    """Paths and facts of one target kernel.

    The files from the packages other than the source arrive later: each
    ``find_*`` gives its path, waiting for it if it is still being unpacked.
    *symbols* is what klp relocations are resolved against for vmlinux: the
    debug vmlinux (FILE symbols tell same-named locals apart) or a
    ``/proc/kallsyms`` copy.  *modules_dir* holds the shipped modules, whose
    own symbol tables serve for module objects.
    """

    release: str
    tree: Path
    make_args: List[str]
    config: Path
    index: ObjectIndex
    find_headers_dir: PathLater
    find_symbols: PathLater
    find_vmlinux: PathLater
    find_modules_dir: PathLater = known(None)
    debug_module: Optional[Callable[[Path], Path]] = None
    tools: List[str] = field(default_factory=list)  # before make and the compiler

    @property
    def headers_dir(self) -> Path:
        return self._required(self.find_headers_dir, "headers directory")

    @property
    def symbols(self) -> Path:
        return self._required(self.find_symbols, "symbol file")

    @property
    def vmlinux(self) -> Optional[Path]:
        return self.find_vmlinux()

    @property
    def modules_dir(self) -> Optional[Path]:
        return self.find_modules_dir()

    @property
    def symvers(self) -> Path:
        return self.headers_dir / "Module.symvers"

    def _required(self, find: PathLater, what: str) -> Path:
        path = find()
        if path is None:
            raise KpatchError(f"no {what} for {self.release}")
        return path

    def module_file(self, name: str) -> Path:
        """The shipped .ko of module *name* (``-`` and ``_`` are the same to the kernel)."""
        modules_dir = self.modules_dir
        if modules_dir is None:
            raise InputError(f"no modules directory for {self.release}: cannot patch module {name}")
        return shipped_module(modules_dir, name)

    def module_dependencies(self, name: str) -> FrozenSet[str]:
        """What module *name* loads after (see :func:`module_dependencies`)."""
        return module_dependencies(self.modules_dir, name)


def shipped_module(modules_dir: Path, name: str) -> Path:
    """The .ko of module *name* under *modules_dir*, decompressed beside the
    shipped file when that is compressed (Debian 13 ships .ko.xz)."""
    found = _shipped_modules(modules_dir).get(module_objname(name))
    if found is None:
        raise KpatchError(f"module {name} is not among the modules in {modules_dir}")
    if found.suffix == ".ko":
        return found
    return _decompressed(found)


_DECOMPRESSORS = {".xz": ["xz", "-dc"], ".zst": ["zstd", "-dcq"], ".gz": ["gzip", "-dc"]}


def _decompressed(path: Path) -> Path:
    tool = _DECOMPRESSORS.get(path.suffix)
    if tool is None:
        raise KpatchError(f"{path}: unknown module compression")

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as out:
            run_pipeline([[*tool, path]], stdout=out, what=f"decompressing {path.name}")

    return made_once(path.with_suffix(""), write)


@functools.lru_cache(maxsize=4)
def _shipped_modules(modules_dir: Path) -> Dict[str, Path]:
    # By klp object name; a walk over 4,000 files, done once.
    return {module_objname(path.name.split(".ko")[0]): path
            for path in sorted(modules_dir.rglob("*.ko*"))}


def module_dependencies(modules_dir: Path, name: str) -> FrozenSet[str]:
    """Every module that module *name* loads after: its ``depends``, transitively,
    by klp object name."""
    found: Set[str] = set()
    pending = [name]
    while pending:
        info = read_module_info(shipped_module(modules_dir, pending.pop()))
        for dep in filter(None, map(module_objname, (info.get(MODINFO_DEPENDS) or "").split(","))):
            if dep not in found:
                found.add(dep)
                pending.append(dep)
    return frozenset(found)


def running_release() -> str:
    return platform.release()


def debian_target(release: Optional[str], cache: Optional[Path], jobs: int,
                  vmlinux: Optional[Path], kallsyms: Optional[Path]) -> Target:
    """A target from Debian's packages, fetched and prepared through the cache.

    The debug vmlinux and the headers are unpacked in the background, at a
    low priority, from when the source is unpacked (see
    :meth:`DebianKernel.source_tree`): they take what the mostly
    single-threaded configuration and compiles leave of the CPU, and the
    build waits for them only where it reads them.  The image package is
    unpacked only when a module is patched.
    """
    kernel = DebianKernel(release or running_release(), cache=cache)
    kernel.download_all()
    background = ThreadPoolExecutor(max_workers=1, initializer=_lower_priority)
    later: Dict[str, "Future[Path]"] = {}

    def unpack_the_rest() -> None:
        if later:  # (already started: the lean tree was unpacked again in full)
            return
        if not (vmlinux or kallsyms):
            later["dbg"] = background.submit(lambda: kernel.vmlinux)
        later["headers"] = background.submit(lambda: kernel.headers_dir)
        background.shutdown(wait=False)  # (what was submitted still runs)

    tree, index = prepared_tree(kernel, jobs, after_unpack=unpack_the_rest)
    unpack_the_rest()  # (the tree was made before)
    dbg = _waiting_for(later["dbg"], "the debug vmlinux") if "dbg" in later else known(vmlinux)
    return Target(
        release=kernel.release.release, tree=tree, make_args=kernel.make_args(),
        config=kernel.config, index=index,
        find_headers_dir=_waiting_for(later["headers"], "the kernel headers"),
        find_symbols=known(kallsyms) if kallsyms else dbg, find_vmlinux=dbg,
        find_modules_dir=lambda: kernel.modules_dir, debug_module=kernel.debug_module,
        tools=kernel.tools,
    )


def _waiting_for(unpacking: "Future[Path]", what: str) -> PathLater:
    def path() -> Path:
        if not unpacking.done():
            log.info("waiting for %s to be unpacked", what)
        return unpacking.result()
    return path


def _lower_priority() -> None:
    # Linux keeps a nice value per thread, and the programs this thread
    # starts inherit it.
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _BACKGROUND_NICENESS)


def prepared_tree(kernel: DebianKernel, jobs: int,
                  after_unpack: Optional[Callable[[], None]] = None) -> "tuple[Path, ObjectIndex]":
    """The tree and its object index; unpacked in full if the lean tree lacks a source.

    On a new tree the objects are listed while ``modules_prepare`` runs: the
    dry run reads only the config and the Makefiles.
    """
    def index_of(tree: Path) -> ObjectIndex:
        return ObjectIndex(tree, kernel.make_args(), jobs=jobs, tools=kernel.tools)

    def list_objects(tree: Path) -> None:
        index_of(tree).objects

    try:
        tree = kernel.source_tree(jobs=jobs, alongside=list_objects, after_unpack=after_unpack)
        index = index_of(tree)
        index.objects
    except IncompleteTree as missing:
        log.warning("%s; unpacking the whole source", missing)
        tree = kernel.source_tree(jobs=jobs, full=True, alongside=list_objects)
        index = index_of(tree)
    return tree, index


def custom_target(sourcedir: Path, headers: Optional[Path], vmlinux: Optional[Path],
                  kallsyms: Optional[Path], release: Optional[str],
                  modules_dir: Optional[Path]) -> Target:
    """A target from a prepared tree the user gives (``-s``), for non-Debian kernels."""
    tree = sourcedir.resolve()
    config = tree / ".config"
    objtool = config.is_file() and kbuild.config_value(config, "OBJTOOL") == "y"
    for needed in kbuild.prepared_tree_files(objtool):
        if not (tree / needed).exists():
            raise InputError(f"{tree} is not a prepared kernel tree (no {needed}); run "
                             "'make olddefconfig modules_prepare' in it first")
    symbols = kallsyms or vmlinux
    if symbols is None:
        raise InputError("with --sourcedir, give the target's symbols: -v VMLINUX or --kallsyms FILE")
    headers_dir = (headers or tree).resolve()
    if not (headers_dir / "Module.symvers").is_file():
        raise InputError(f"{headers_dir} has no Module.symvers; give --headers DIR")
    rel = release or (tree / "include/config/kernel.release").read_text().strip()
    make_args = kbuild.make_args(rel, kbuild.config_compiler(config))
    return Target(
        release=rel, tree=tree, make_args=make_args, config=config,
        index=ObjectIndex(tree, make_args), find_headers_dir=known(headers_dir),
        find_symbols=known(Path(symbols)), find_vmlinux=known(vmlinux),
        find_modules_dir=known(modules_dir),
    )

