"""The one way pykpatch runs other programs.

Every command is logged (to the debug log and, when given, to a log file the
user can read after a failure) and run with an explicit ``cwd``; nothing
here calls ``chdir``.
"""

import logging
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import IO, Mapping, Optional, Sequence, Union

from pykpatch.errors import KpatchError

log = logging.getLogger("pykpatch")

Command = Sequence[Union[str, Path]]


def require_tool(name: str, package: str) -> str:
    """Path of program *name*, or an error naming the Debian package to install."""
    found = shutil.which(name)
    if not found:
        raise KpatchError(f"'{name}' is not installed; install the Debian package '{package}'")
    return found


def run(
    cmd: Command,
    *,
    cwd: Optional[Path] = None,
    env: Optional[Mapping[str, str]] = None,
    logfile: Optional[Path] = None,
    what: Optional[str] = None,
    check: bool = True,
    input_text: Optional[str] = None,
) -> subprocess.CompletedProcess:
    """Run *cmd*, its output captured (and appended to *logfile* when given).

    On failure raises :class:`KpatchError` saying *what* failed, with the
    last lines of output and the log path.
    """
    argv = [str(a) for a in cmd]
    log.debug("run: %s%s", shlex.join(argv), f" (in {cwd})" if cwd else "")
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update(env)
    try:
        proc = subprocess.run(
            argv, cwd=cwd, env=full_env, input=input_text,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
        )
    except FileNotFoundError:
        raise KpatchError(f"cannot run '{argv[0]}': not installed") from None
    if logfile is not None:
        _append_log(logfile, argv, cwd, proc)
    if check and proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
        raise KpatchError(
            f"{what or argv[0]} failed (exit {proc.returncode}):\n{tail}",
            log=str(logfile) if logfile else None,
        )
    return proc


def _append_log(logfile: Path, argv: Sequence[str], cwd: Optional[Path],
                proc: subprocess.CompletedProcess) -> None:
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "a") as f:
        _write_entry(f, argv, cwd, proc)


def _write_entry(f: IO[str], argv: Sequence[str], cwd: Optional[Path],
                 proc: subprocess.CompletedProcess) -> None:
    f.write(f"$ {shlex.join(argv)}" + (f"   # in {cwd}" if cwd else "") + "\n")
    f.write(proc.stdout)
    f.write(f"[exit {proc.returncode}]\n")
