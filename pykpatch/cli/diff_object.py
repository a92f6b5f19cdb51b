"""``kpatch-diff-object``: diff two builds of one object into a patch object.

Exit codes: 0 patch written, 3 nothing changed (no output), 1 refused
(reasons on stderr, no output), 2 bad input or usage.
"""

import argparse
import json
import sys
import traceback
from typing import Dict, List, NoReturn, Optional

from pykpatch.differ.driver import Outcome, diff_objects
from pykpatch.differ.state import Options
from pykpatch.elf.writer import write_elf
from pykpatch.errors import InputError, KpatchError

EXIT_NO_CHANGE = 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse prints usage over several lines; one line is our rule.
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(InputError.exit_code)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = _Parser(prog="kpatch-diff-object", description=__doc__.splitlines()[0])
    parser.add_argument("orig", help="original object (ET_REL)")
    parser.add_argument("patched", help="patched build of the same object")
    parser.add_argument("-o", "--output", required=True, help="patch object to write")
    target = parser.add_argument_group("target kernel")
    target.add_argument("--symbols", help="vmlinux/module ELF or `readelf -s --wide` text "
                        "(default: ORIG's own symbols)")
    target.add_argument("--symvers", help="Module.symvers of the target kernel")
    target.add_argument("--object", default="vmlinux", help="vmlinux (default) or a module name")
    target.add_argument("--struct-size", action="append", default=[], metavar="STRUCT=BYTES",
                        help="size of a special-section struct, e.g. jump_entry=16 (repeatable)")
    parser.add_argument("--patch-name", default="livepatch", help="name of the patch module")
    parser.add_argument("--report", help="write the per-object report as JSON here")
    parser.add_argument("--debug", action="store_true", help="show tracebacks; print the report")
    return parser


def parse_struct_sizes(pairs: List[str]) -> Dict[str, int]:
    """``NAME=BYTES`` strings to a dict.

    :raises InputError: a malformed pair.
    """
    sizes = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name or not value.isdigit() or int(value) == 0:
            raise InputError(f"--struct-size {pair!r}: expected STRUCT=BYTES, e.g. jump_entry=16")
        sizes[name] = int(value)
    return sizes


def run(args: argparse.Namespace) -> int:
    """Run one diff; return the exit code (raises KpatchError on failure)."""
    from pykpatch.kernel.livepatch import module_objname
    options = Options(symbols=args.symbols, symvers=args.symvers,
                      objname=module_objname(args.object), patch_name=args.patch_name,
                      struct_sizes=parse_struct_sizes(args.struct_size))
    result = diff_objects(args.orig, args.patched, options)
    if args.report:
        with open(args.report, "w") as fh:
            json.dump(result.report.to_dict(), fh, indent=1)
    if args.debug:
        print(result.report.to_text(), file=sys.stderr)
    for warning in result.report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if result.outcome is Outcome.NO_CHANGE:
        print(f"{args.patched}: no changes", file=sys.stderr)
        return EXIT_NO_CHANGE
    assert result.output is not None
    write_elf(result.output, args.output)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``kpatch-diff-object``."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except KpatchError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"kpatch-diff-object: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"kpatch-diff-object: {exc}", file=sys.stderr)
        return InputError.exit_code


if __name__ == "__main__":
    sys.exit(main())
