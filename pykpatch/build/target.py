"""The kernel a patch is built for, and everything about it the build reads."""

import logging
import platform
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

from pykpatch.build.objindex import IncompleteTree, ObjectIndex
from pykpatch.errors import InputError, KpatchError
from pykpatch.kernel import kbuild
from pykpatch.provider.debian import DebianKernel

log = logging.getLogger("pykpatch")


@dataclass
class Target:
    """Paths and facts of one target kernel.

    *symbols* is what klp relocations are resolved against for vmlinux: the
    debug vmlinux (FILE symbols tell same-named locals apart) or a
    ``/proc/kallsyms`` copy.  *modules_dir* holds the shipped modules, whose
    own symbol tables serve for module objects.
    """

    release: str
    tree: Path
    make_args: List[str]
    headers_dir: Path
    symbols: Path
    modules_dir: Optional[Path]
    config: Path
    vmlinux: Optional[Path]
    index: ObjectIndex
    debug_module: Optional[Callable[[Path], Path]] = None

    @property
    def symvers(self) -> Path:
        return self.headers_dir / "Module.symvers"

    def module_file(self, name: str) -> Path:
        """The shipped .ko of module *name* (``-`` and ``_`` are the same to the kernel)."""
        if self.modules_dir is None:
            raise InputError(f"no modules directory for {self.release}: cannot patch module {name}")
        wanted = name.replace("-", "_")
        for path in self.modules_dir.rglob("*.ko*"):
            if path.name.split(".ko")[0].replace("-", "_") == wanted:
                return path
        raise KpatchError(f"module {name} is not among the modules of {self.release} "
                          f"({self.modules_dir})")


def running_release() -> str:
    return platform.release()


def debian_target(release: Optional[str], cache: Optional[Path], jobs: int,
                  vmlinux: Optional[Path], kallsyms: Optional[Path]) -> Target:
    """A target from Debian's packages, fetched and prepared through the cache."""
    kernel = DebianKernel(release or running_release(), cache=cache)
    kernel.download_all()
    with ThreadPoolExecutor(max_workers=1) as pool:
        # Unpacking the other packages is mostly one core's work (the debug
        # vmlinux is one xz stream): let it run while the source tree is made.
        image = pool.submit(lambda: kernel.image_dir)
        headers = pool.submit(lambda: kernel.headers_dir)
        dbg = None if (vmlinux or kallsyms) else pool.submit(lambda: kernel.vmlinux)
        tree, index = prepared_tree(kernel, jobs)
        image.result()
        headers_dir = headers.result()
        dbg_path = dbg.result() if dbg else None
    return Target(
        release=kernel.release.release, tree=tree, make_args=kernel.make_args(),
        headers_dir=headers_dir, symbols=Path(kallsyms or vmlinux or dbg_path),
        modules_dir=kernel.modules_dir, config=kernel.config, vmlinux=vmlinux or dbg_path,
        index=index, debug_module=kernel.debug_module,
    )


def prepared_tree(kernel: DebianKernel, jobs: int) -> "tuple[Path, ObjectIndex]":
    """The tree and its object index; unpacked in full if the lean tree lacks a source.

    On a new tree the objects are listed while ``modules_prepare`` runs: the
    dry run reads only the config and the Makefiles.
    """
    def list_objects(tree: Path) -> None:
        ObjectIndex(tree, kernel.make_args(), jobs=jobs).objects

    try:
        tree = kernel.source_tree(jobs=jobs, alongside=list_objects)
        index = ObjectIndex(tree, kernel.make_args(), jobs=jobs)
        index.objects
    except IncompleteTree as missing:
        log.warning("%s; unpacking the whole source", missing)
        tree = kernel.source_tree(jobs=jobs, full=True, alongside=list_objects)
        index = ObjectIndex(tree, kernel.make_args(), jobs=jobs)
    return tree, index


def custom_target(sourcedir: Path, headers: Optional[Path], vmlinux: Optional[Path],
                  kallsyms: Optional[Path], release: Optional[str],
                  modules_dir: Optional[Path]) -> Target:
    """A target from a prepared tree the user gives (``-s``), for non-Debian kernels."""
    tree = sourcedir.resolve()
    config = tree / ".config"
    objtool = config.is_file() and config_value(config, "OBJTOOL") == "y"
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
    # The compiler named in the config: another one would make kbuild rerun
    # kconfig and rewrite the tree's .config.
    cc = (config_value(config, "CC_VERSION_TEXT") or "gcc").split()[0]
    make_args = kbuild.make_args(rel, cc)
    return Target(
        release=rel, tree=tree, make_args=make_args, headers_dir=headers_dir,
        symbols=Path(symbols), modules_dir=modules_dir, config=config, vmlinux=vmlinux,
        index=ObjectIndex(tree, make_args),
    )


def config_value(config: Path, name: str) -> Optional[str]:
    """The value of CONFIG_<name> in a .config file, quotes removed; None if unset."""
    prefix = f"CONFIG_{name}="
    for line in config.read_text().splitlines():
        if line.startswith(prefix):
            return line[len(prefix):].strip('"')
    return None
