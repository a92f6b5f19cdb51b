"""``kpatch``: load, unload, list and install live patches on this machine.

Subcommands come from the table :data:`COMMANDS`; each names its own
arguments and the function that runs it.  Library code raises
:class:`~pykpatch.errors.KpatchError`; :func:`main` is the one place that
prints it (one line, then any supporting lines) and picks the exit code.
"""

import argparse
import json
import logging
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, TextIO

from pykpatch import __version__
from pykpatch.errors import KpatchError
from pykpatch.log import setup_logging
from pykpatch.manage.failures import NotRoot
from pykpatch.manage.host import Host
from pykpatch.manage.inventory import Json
from pykpatch.manage.transition import DEFAULT_TIMEOUT, Progress, Timing, describe_tasks

log = logging.getLogger("pykpatch")

Handler = Callable[[argparse.Namespace, Host], Optional[int]]


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Handler
    needs_root: bool


# --- arguments -----------------------------------------------------------------

def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("the timeout must be more than 0 seconds")
    return value


def _add_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout", type=_positive_seconds, default=DEFAULT_TIMEOUT, metavar="SECONDS",
        help="give up on a transition after this long, reverse it and fail "
             f"(default {DEFAULT_TIMEOUT:.0f})")


def _args_load(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("module", nargs="?", metavar="MODULE.ko|NAME",
                       help="a livepatch module file, or the name of an installed patch")
    which.add_argument("--all", action="store_true",
                       help="every patch installed for the running kernel")
    _add_timeout(parser)


def _args_unload(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("module", nargs="?", metavar="NAME", help="a loaded livepatch")
    which.add_argument("--all", action="store_true", help="every loaded livepatch")
    _add_timeout(parser)


def _add_release(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-k", "--kernel-release", metavar="KVER",
                        help="kernel release (default: the running one, uname -r)")


def _args_install(parser: argparse.ArgumentParser) -> None:
    _add_release(parser)
    parser.add_argument("module", metavar="MODULE.ko", type=Path)


def _args_uninstall(parser: argparse.ArgumentParser) -> None:
    _add_release(parser)
    parser.add_argument("module", metavar="NAME", help="an installed patch")


def _args_list(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _args_info(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("module", metavar="NAME|MODULE.ko")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _args_force(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("module", metavar="NAME", help="the patch in transition")
    parser.add_argument("--confirm", action="store_true",
                        help="yes, force it, knowing the module can never be removed")


def _args_none(parser: argparse.ArgumentParser) -> None:
    pass


# --- handlers --------------------------------------------------------------------

def cmd_load(args: argparse.Namespace, host: Host) -> None:
    from pykpatch.manage import actions
    timing = Timing(timeout=args.timeout)
    with _progress_view() as view:
        if args.all:
            results = actions.load_all(host, timing, view.update)
        else:
            results = [actions.load(host, args.module, timing, view.update)]
    _print_lines(results)


def cmd_unload(args: argparse.Namespace, host: Host) -> None:
    from pykpatch.manage import actions
    timing = Timing(timeout=args.timeout)
    with _progress_view() as view:
        if args.all:
            results = actions.unload_all(host, timing, view.update)
        else:
            results = [actions.unload(host, args.module, timing, view.update)]
    _print_lines(results)


def cmd_install(args: argparse.Namespace, host: Host) -> None:
    from pykpatch.manage.install import Store, enable_unit, kpatch_command
    release = args.kernel_release or host.release
    entry = Store(host).install(args.module, release)
    lines = [f"installed {entry.name} as {entry.path}"]
    warnings = enable_unit(host, kpatch_command())
    if warnings:
        lines += [f"warning: {w}" for w in warnings]
    else:
        lines.append(f"kpatch.service will load it when {release} boots")
    _print_lines(lines)


def cmd_uninstall(args: argparse.Namespace, host: Host) -> None:
    from pykpatch.manage.install import Store, disable_unit
    from pykpatch.manage.sysfs import LiveKernel
    release = args.kernel_release or host.release
    store = Store(host)
    entry = store.uninstall(args.module, release)
    lines = [f"uninstalled {entry.name} ({entry.path})"]
    if store.empty():
        lines += [f"warning: {w}" for w in disable_unit(host)]
    if release == host.release and LiveKernel(host).module_loaded(entry.name):
        lines.append(f"it is still loaded; 'kpatch unload {entry.name}' removes it now")
    _print_lines(lines)


def cmd_list(args: argparse.Namespace, host: Host) -> None:
    from pykpatch.manage.describe import list_text
    from pykpatch.manage.inventory import list_report
    report = list_report(host)
    _print_report(report, list_text, args.json)


def cmd_info(args: argparse.Namespace, host: Host) -> None:
    from pykpatch.manage.describe import info_text
    from pykpatch.manage.inventory import info_report
    report = info_report(host, args.module)
    _print_report(report, info_text, args.json)


def cmd_signal(args: argparse.Namespace, host: Host) -> None:
    from pykpatch.manage import actions
    _print_lines(actions.signal(host))


def cmd_force(args: argparse.Namespace, host: Host) -> None:
    from pykpatch.manage import actions
    _print_lines([actions.force(host, args.module, args.confirm)])


def cmd_version(args: argparse.Namespace, host: Host) -> None:
    print(f"kpatch (pykpatch) {__version__}")


COMMANDS: List[Command] = [
    Command("load", "load and enable a livepatch module", _args_load, cmd_load, True),
    Command("unload", "disable a livepatch and remove its module", _args_unload, cmd_unload, True),
    Command("install", "install a livepatch module to be loaded at boot", _args_install,
            cmd_install, True),
    Command("uninstall", "remove an installed livepatch module", _args_uninstall,
            cmd_uninstall, True),
    Command("list", "show loaded and installed livepatches", _args_list, cmd_list, False),
    Command("info", "show what a livepatch module is and does", _args_info, cmd_info, False),
    Command("signal", "nudge the tasks that hold up a transition", _args_none, cmd_signal, True),
    Command("force", "end a stuck transition without checking tasks (irreversible)",
            _args_force, cmd_force, True),
    Command("version", "show the version", _args_none, cmd_version, False),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kpatch", description="Manage live patches of the running kernel.")
    parser.add_argument("--debug", action="store_true",
                        help="log every step and show tracebacks")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for command in COMMANDS:
        cmd_parser = sub.add_parser(command.name, help=command.help,
                                    description=command.help[:1].upper() + command.help[1:] + ".")
        command.arguments(cmd_parser)
        cmd_parser.set_defaults(func=command.run, command=command)
    return parser


# --- output ------------------------------------------------------------------------

def _print_lines(lines: Sequence[str]) -> None:
    for line in lines:
        print(line)


def _print_report(report: Json, render: Callable[[Json], List[str]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        _print_lines(render(report))


class _ProgressView:
    """Shows a transition as it happens: redrawn in place on a terminal,
    as plain lines (only when something changed) otherwise."""

    MAX_TASKS = 10

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._drawn = 0          # lines of the block on screen (TTY)
        self._last_key: object = None

    def __enter__(self) -> "_ProgressView":
        return self

    def __exit__(self, *exc: object) -> None:
        self._erase()

    def update(self, progress: Progress) -> None:
        lines = self._block(progress)
        if self.tty:
            self._erase()
            self.stream.write("".join(line + "\n" for line in lines))
            self._drawn = len(lines)
        else:
            # Plain output is for logs: a line when something changed, not a tick.
            key = (progress.reversing, tuple((t.tid, t.stack[:1]) for t in progress.behind))
            if key != self._last_key:
                self.stream.write("".join(line + "\n" for line in lines))
                self._last_key = key
        self.stream.flush()

    def _block(self, progress: Progress) -> List[str]:
        verb = "enabling" if progress.enabling else "disabling"
        doing = f"reversing: {verb}" if progress.reversing else verb
        lines = [f"{doing} livepatch '{progress.patch}' ... {progress.elapsed:.0f} s "
                 f"(timeout {progress.timeout:.0f} s)"]
        tasks = progress.behind
        if tasks:
            lines.append(f"  {len(tasks)} task(s) not switched yet:")
            lines += [f"    {line}" for line in describe_tasks(tasks[:self.MAX_TASKS], frames=4)]
            if len(tasks) > self.MAX_TASKS:
                lines.append(f"    ... and {len(tasks) - self.MAX_TASKS} more")
        return lines

    def _erase(self) -> None:
        if self.tty and self._drawn:
            # Cursor up over the block, then clear to the end of the screen.
            self.stream.write(f"\x1b[{self._drawn}A\r\x1b[J")
            self._drawn = 0


def _progress_view() -> _ProgressView:
    return _ProgressView(sys.stderr)


# --- main ------------------------------------------------------------------------

def _is_root() -> bool:
    return os.geteuid() == 0


def _report_error(err: KpatchError) -> None:
    first, *rest = str(err).splitlines() or [type(err).__name__]
    print(f"kpatch: error: {first}", file=sys.stderr)
    for line in rest + list(getattr(err, "details", [])):
        print(f"  {line}", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None, host: Optional[Host] = None) -> int:
    """Entry point of the ``kpatch`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    setup_logging("kpatch", args.debug)
    command: Command = args.command
    try:
        if command.needs_root and not _is_root():
            raise NotRoot(f"'kpatch {command.name}' changes the running kernel and must "
                          f"run as root (try: sudo kpatch {command.name} ...)")
        return args.func(args, host or Host()) or 0
    except KpatchError as err:
        if args.debug:
            traceback.print_exc()
        _report_error(err)
        return err.exit_code
    except KeyboardInterrupt:
        print("kpatch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
