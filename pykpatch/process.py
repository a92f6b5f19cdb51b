"""The one way pykpatch runs other programs.

Every command is logged (to the debug log and, when given, to a log file the
user can read after a failure) and run with an explicit ``cwd``; nothing
here calls ``chdir``.
"""

import contextlib
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import IO, List, Mapping, Optional, Sequence, Union

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


_SIGPIPE = -13


def run_pipeline(commands: Sequence[Command], *, cwd: Optional[Path] = None,
                 what: str, stdout: Optional[IO[bytes]] = None,
                 last_stops_early: bool = False) -> None:
    """Run ``commands[0] | commands[1] | ...``; raise naming *what* unless all succeed.

    The last command's output goes to *stdout* (discarded when None).  A
    command killed by SIGPIPE is not a failure of its own: a later one
    stopped reading and is reported if it failed.  With *last_stops_early*
    the last command stops reading once it has what it wants (``tar
    --occurrence``): the others may then fail in any way (dpkg-deb exits 2),
    and only the last one's status counts.
    """
    argvs = [[str(a) for a in cmd] for cmd in commands]
    log.debug("run: %s%s", " | ".join(shlex.join(a) for a in argvs), f" (in {cwd})" if cwd else "")
    with contextlib.ExitStack() as stack:
        # Errors go to files: a full stderr pipe would stall the pipeline.
        errors = [stack.enter_context(tempfile.TemporaryFile()) for _ in argvs]
        codes = _run_connected(argvs, errors, cwd, stdout)
        judged = list(zip(argvs, codes, errors))
        if last_stops_early and codes[-1] == 0:
            judged = judged[-1:]
        for argv, code, err in judged:
            if code not in (0, _SIGPIPE):
                err.seek(0)
                tail = "\n".join(err.read().decode(errors="replace").strip().splitlines()[-15:])
                raise KpatchError(f"{what} failed ({argv[0]}: exit {code}):\n{tail}")


def _run_connected(argvs: Sequence[List[str]], errors: Sequence[IO[bytes]], cwd: Optional[Path],
                   stdout: Optional[IO[bytes]]) -> List[int]:
    """Start the commands, each reading the previous one's output; their exit codes."""
    procs: List[subprocess.Popen] = []
    try:
        for argv, err in zip(argvs, errors):
            last = len(procs) == len(argvs) - 1
            procs.append(subprocess.Popen(
                argv, cwd=cwd, stdin=procs[-1].stdout if procs else subprocess.DEVNULL,
                stdout=(stdout or subprocess.DEVNULL) if last else subprocess.PIPE, stderr=err))
            if len(procs) > 1:
                procs[-2].stdout.close()  # only the next command reads it now
    except FileNotFoundError as missing:
        for p in procs:
            p.kill()
            p.wait()
        raise KpatchError(f"cannot run '{missing.filename}': not installed") from None
    return [p.wait() for p in procs]
