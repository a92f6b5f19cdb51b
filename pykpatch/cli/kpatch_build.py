"""``kpatch-build``: build a livepatch module from source patches.

Options follow upstream kpatch-build where they mean the same thing, so
scripts carry over; ``-k`` picks a Debian kernel release to build for (its
packages are fetched and cached).
"""

import argparse
import hashlib
import logging
import re
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import List, Optional, Sequence

from pykpatch import __version__
from pykpatch.build.module import module_name
from pykpatch.build.pipeline import BuildOptions, Progress, build, default_logfile
from pykpatch.errors import InputError, KpatchError, Refusal
from pykpatch.kernel.livepatch import MODULE_NAME_MAX
from pykpatch.process import require_tool
from pykpatch.provider.archive import is_debian_version
from pykpatch.log import setup_logging

log = logging.getLogger("pykpatch")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kpatch-build",
        description="Build a livepatch module (.ko) that applies PATCH... to a running kernel.")
    p.add_argument("patches", nargs="*", type=Path, metavar="PATCH", help="unified diff(s) against the kernel source")
    target = p.add_argument_group("target kernel")
    target.add_argument("-k", "--kernel", metavar="RELEASE",
                        help="Debian kernel release to build for, e.g. 6.1.0-56-cloud-amd64 "
                             "(default: the running kernel)")
    target.add_argument("-s", "--sourcedir", type=Path, metavar="DIR",
                        help="a prepared kernel tree to use instead of Debian's packages")
    target.add_argument("-c", "--config", type=Path, metavar="FILE",
                        help="with -s: the kernel's .config (checked against the tree's)")
    target.add_argument("-v", "--vmlinux", type=Path, metavar="FILE",
                        help="the target's vmlinux with symbols (default: Debian's -dbg package)")
    target.add_argument("--kallsyms", type=Path, metavar="FILE",
                        help="resolve vmlinux symbols from a /proc/kallsyms copy instead")
    target.add_argument("--headers", type=Path, metavar="DIR",
                        help="with -s: the module build directory (Module.symvers, vermagic)")
    target.add_argument("--modules-dir", type=Path, metavar="DIR",
                        help="with -s: /lib/modules/RELEASE of the target, for module patches")
    update = p.add_argument_group("a Debian kernel update as one cumulative patch")
    update.add_argument("--debian-update", metavar="VERSION",
                        help="instead of PATCH: every change between the target's linux-source "
                             "and this newer Debian version of it (e.g. 6.1.192-3)")
    update.add_argument("--only", nargs="+", default=[], metavar="FILE",
                        help="with --debian-update: only these changed files (paths or patterns)")
    update.add_argument("--exclude", nargs="+", default=[], metavar="FILE",
                        help="with --debian-update: not these changed files")
    out = p.add_argument_group("output")
    out.add_argument("-n", "--name", default="", help="module name (default livepatch-<patch>)")
    out.add_argument("-o", "--output", type=Path, default=Path("."), metavar="DIR",
                     help="directory for the .ko and its report (default: .)")
    out.add_argument("-R", "--non-replace", action="store_true",
                     help="do not replace earlier patches (no atomic replace)")
    out.add_argument("--deb", action="store_true",
                     help="also write pykpatch-patch-<release>_<version>_amd64.deb; each build's "
                          "module gets a name of its own, so an upgrade replaces it atomically")
    out.add_argument("--deb-version", metavar="VERSION",
                     help="the package's version (default: the update's Debian version, or 0, "
                          "+ the build time)")
    run = p.add_argument_group("running")
    run.add_argument("-j", "--jobs", type=int, default=2, help="parallel compile jobs (default 2)")
    run.add_argument("--cache-dir", type=Path, metavar="DIR",
                     help="downloads and prepared trees (default ~/.cache/pykpatch)")
    run.add_argument("-d", "--debug", action="store_true", help="debug messages and tracebacks")
    run.add_argument("--skip-cleanup", action="store_true", help="keep the work directory")
    run.add_argument("--skip-compiler-check", "--skip-gcc-check", action="store_true",
                     help="build even if the compiler differs from the kernel's")
    p.add_argument("--version", action="version", version=f"pykpatch kpatch-build {__version__}")
    return p


def _options(args: argparse.Namespace) -> BuildOptions:
    if args.debian_update and args.patches:
        raise InputError("give either PATCH files or --debian-update, not both")
    if (args.only or args.exclude) and not args.debian_update:
        raise InputError("--only and --exclude choose files of --debian-update")
    if args.debian_update and args.sourcedir:
        raise InputError("--debian-update takes Debian's packages; it does not go with -s")
    if (args.deb or args.deb_version) and args.sourcedir:
        raise InputError("--deb packages a patch for a Debian kernel; it does not go with -s")
    if args.deb_version and not args.deb:
        raise InputError("--deb-version goes with --deb")
    if args.deb and (args.name or args.non_replace):
        # An upgrade replaces the loaded build atomically, and removes the modules
        # it replaced by their one name prefix.
        raise InputError("--deb names its module after the package version and builds it with "
                         "atomic replace: leave out -n and -R")
    if args.deb_version and not is_debian_version(args.deb_version):
        raise InputError(f"--deb-version {args.deb_version}: not a Debian version (like 1.2 or "
                         "6.1.192-3+1)")
    if args.config and not args.sourcedir:
        raise KpatchError("-c/--config goes with -s/--sourcedir; a Debian kernel brings its own config")
    if args.config and args.sourcedir:
        tree_config = args.sourcedir / ".config"
        if not tree_config.is_file() or tree_config.read_bytes() != args.config.read_bytes():
            raise KpatchError(f"{args.config} is not the config of {args.sourcedir}; "
                              "copy it there and run 'make olddefconfig modules_prepare'")
    return BuildOptions(
        patches=list(args.patches), release=args.kernel, sourcedir=args.sourcedir,
        headers=args.headers, vmlinux=args.vmlinux, kallsyms=args.kallsyms,
        modules_dir=args.modules_dir, jobs=max(1, args.jobs), name=args.name,
        output=args.output, replace=not args.non_replace, skip_cleanup=args.skip_cleanup,
        skip_compiler_check=args.skip_compiler_check, cache=args.cache_dir)


@dataclass(frozen=True)
class DebBuild:
    """The package a --deb build makes, and the module name that goes with it."""

    version: str
    module_prefix: str
    module: str


# Every module of a live patch package starts with this; its postinst removes the
# modules of the builds a new one replaced by it.
DEB_MODULE_PREFIX = "livepatch-deb-"


def deb_build(args: argparse.Namespace) -> DebBuild:
    """Version and module name of a --deb build: every build's module has a name of its
    own (the version, and a digest of it, since 1.0+1 and 1.0.1 read alike), so a
    package upgrade can replace it without a gap."""
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    version = args.deb_version or f"{args.debian_update or '0'}+{stamp}"
    digest = hashlib.sha256(version.encode()).hexdigest()[:6]
    suffix = re.sub(r"[^A-Za-z0-9]+", "-", version).strip("-") + "-" + digest
    name = DEB_MODULE_PREFIX + suffix
    if len(name) > MODULE_NAME_MAX:
        raise InputError(f"--deb-version {version}: too long for a module name "
                         f"({len(name)} of at most {MODULE_NAME_MAX} characters with its prefix)")
    return DebBuild(version, DEB_MODULE_PREFIX, name)


def _base_name(args: argparse.Namespace) -> str:
    if args.name:
        return args.name
    if args.debian_update:
        return f"livepatch-{args.debian_update}"
    return module_name(args.patches)


def run_build(args: argparse.Namespace, opts: BuildOptions, logfile: Path) -> int:
    """Build (a patch or an update), print what it did, package it if asked."""
    deb = deb_build(args) if args.deb else None
    if deb is not None:
        require_tool("dpkg-deb", "dpkg")  # (before the build, not after it)
    opts = replace(opts, name=deb.module if deb else _base_name(args))
    if args.debian_update:
        from pykpatch.update.driver import UpdateOptions, build_update
        from pykpatch.update.driver import description as update_description
        from pykpatch.update.plan import Selection
        from pykpatch.update.report import summary_line, text_lines
        update = build_update(UpdateOptions(args.debian_update, opts,
                                            Selection(args.only, args.exclude)), Progress(), logfile)
        for line in text_lines(update):
            print(line)
        if update.module is None:
            raise Refusal(f"{summary_line(update)} (report: {update.report_path})")
        module = update.module
        lines: List[str] = [summary_line(update), f"report: {update.report_path}"]
        release, kernel_version = update.release, update.current
        description = (f"live patch of Debian's {update.version} kernel update\n"
                       + update_description(update))
    else:
        result = build(opts, Progress(), logfile)
        _print_functions(result.reports)
        module = result.module
        lines = [f"SUCCESS: {result.module} ({result.seconds:.1f} s; report "
                 f"{result.report_path.name})"]
        release, kernel_version = _debian_kernel(opts)
        description = (f"live patch for Linux {release}\nBuilt by pykpatch from "
                       + ", ".join(p.name for p in opts.patches) + ".")
    for line in lines:
        print(line)
    if deb is not None:
        try:
            print(f"package: {_package(module, release, kernel_version, deb, description)}")
        except KpatchError as err:
            raise type(err)(f"the module is built ({module}), but packaging it failed: {err}")
    return 0


def _print_functions(reports: List[dict]) -> None:
    for report in reports:
        for func in report.get("functions", []):
            mark = "patched" if func["patched"] else "included"
            name = func["name"] + (f" (#{func['sympos']} of that name)" if func.get("sympos") else "")
            print(f"  {report['target']}: {name} ({mark}: {func['reason']})")


def _debian_kernel(opts: BuildOptions) -> "tuple[str, str]":
    """Release and Debian version of the kernel a (non -s) build was for."""
    from pykpatch.build.target import running_release
    from pykpatch.provider.debian import DebianKernel
    kernel = DebianKernel(opts.release or running_release(), cache=opts.cache)
    return kernel.release.release, kernel.packages.version


def _package(module: Path, release: str, kernel_version: str, deb: DebBuild,
             description: str) -> Path:
    from pykpatch.build.debpackage import PackageSpec, write_package
    spec = PackageSpec(module=module, release=release, kernel_version=kernel_version,
                       version=deb.version, description=description,
                       module_prefix=deb.module_prefix)
    work = Path(tempfile.mkdtemp(prefix="kpatch-deb-"))
    try:
        return write_package(spec, module.parent, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging("kpatch-build", args.debug)
    logfile = default_logfile(args.cache_dir)
    try:
        opts = _options(args)
        return run_build(args, opts, logfile)
    except KpatchError as err:
        if args.debug:
            traceback.print_exc()
        print(f"kpatch-build: error: {err}", file=sys.stderr)
        if not err.log and logfile.exists():
            print(f"kpatch-build: full log: {logfile}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("kpatch-build: interrupted; the source tree is restored", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
