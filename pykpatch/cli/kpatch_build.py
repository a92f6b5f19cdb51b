"""``kpatch-build``: build a livepatch module from source patches.

Options follow upstream kpatch-build where they mean the same thing, so
scripts carry over; ``-k`` picks a Debian kernel release to build for (its
packages are fetched and cached).
"""

import argparse
import logging
import sys
import traceback
from pathlib import Path
from typing import Optional, Sequence

from pykpatch import __version__
from pykpatch.build.pipeline import BuildOptions, Progress, build, default_logfile
from pykpatch.errors import KpatchError
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
    out = p.add_argument_group("output")
    out.add_argument("-n", "--name", default="", help="module name (default livepatch-<patch>)")
    out.add_argument("-o", "--output", type=Path, default=Path("."), metavar="DIR",
                     help="directory for the .ko and its report (default: .)")
    out.add_argument("-R", "--non-replace", action="store_true",
                     help="do not replace earlier patches (no atomic replace)")
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging("kpatch-build", args.debug)
    logfile = default_logfile(args.cache_dir)
    try:
        opts = _options(args)
        result = build(opts, Progress(), logfile)
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
    for report in result.reports:
        for func in report.get("functions", []):
            mark = "patched" if func["patched"] else "included"
            name = func["name"] + (f" (#{func['sympos']} of that name)" if func.get("sympos") else "")
            print(f"  {report['target']}: {name} ({mark}: {func['reason']})")
    print(f"SUCCESS: {result.module} ({result.seconds:.1f} s; report {result.report_path.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
