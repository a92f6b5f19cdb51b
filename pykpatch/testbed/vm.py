"""Boot the target Debian kernel in QEMU and run commands in it.

The guest runs :mod:`pykpatch.testbed.guest.agent` on a virtio-serial port;
the host talks to it through QEMU's unix socket.  Two boot modes:

``fast``    the kernel starts the agent as PID 1 (``init=``): a few seconds,
            no services; enough for loading and checking modules.
``systemd`` a full Debian boot; the agent is a systemd service.  Needed
            where systemd itself is under test (``kpatch.service``).

The disk is a qcow2 overlay over the cached base image, so a guest may
write freely; :meth:`Guest.reboot` keeps the overlay, :meth:`Guest.close`
throws it away.  The QEMU process is always killed on close, on error and at
interpreter exit.
"""

import atexit
import base64
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Union

from pykpatch.errors import KpatchError
from pykpatch.process import require_tool
from pykpatch.provider.debian import DebianKernel
from pykpatch.testbed.rootfs import GuestImage

log = logging.getLogger("pykpatch")

BOOT_TIMEOUT = {"fast": 120.0, "systemd": 300.0}
_live_guests: "List[Guest]" = []


class GuestError(KpatchError):
    """The guest did not boot, died or stopped answering."""


@dataclass
class Result:
    """What a command in the guest did."""

    cmd: str
    rc: int
    out: str

    @property
    def ok(self) -> bool:
        return self.rc == 0


# From this version every livepatch transition rewrites scheduler code that the
# other CPU runs all the time (upstream e3ff7c609f39, Linux 6.4).
SCHED_REWRITING_TRANSITIONS = (6, 4)


def default_cpus(kernel: DebianKernel) -> int:
    """Two vCPUs, so that transitions meet tasks on another CPU -- but one where a
    transition rewrites scheduler code (6.4+).

    6.12 (CONFIG_PREEMPT_DYNAMIC) switches the ``cond_resched()`` static call
    to a livepatch version and back at every transition; from 7.x the kernel
    also toggles the static key ``klp_sched_try_switch_key`` in ``__schedule()``.
    Under TCG with two vCPUs the other CPU, which runs that code all the time,
    can execute the int3 of the text poke after the kernel has put the new
    instruction back, and the kernel dies of "Oops: int3": on 7.x at the first
    transition (also with a minimal livepatch module built on the kernel's API
    alone), on 6.12 at the call to ``__SCT__cond_resched`` in
    ``rcu_gp_fqs_loop()``, once in a full VM suite (docs/testbed.md, "Scheduler
    code rewritten under TCG").  6.1 has neither hook.  KVM does not work here
    to compare.
    """
    major, minor = (int(n) for n in kernel.release.series.split(".")[:2])
    return 1 if (major, minor) >= SCHED_REWRITING_TRANSITIONS else 2


class Guest:
    """One QEMU guest running the target kernel; use as a context manager."""

    def __init__(self, kernel: Optional[DebianKernel] = None, *, mode: str = "fast",
                 memory: str = "1G", cpus: Optional[int] = None, workdir: Optional[Path] = None,
                 cmdline_extra: str = "") -> None:
        if mode not in BOOT_TIMEOUT:
            raise ValueError(f"unknown boot mode {mode!r}")
        self.kernel = kernel or DebianKernel()
        self.mode = mode
        self.memory = memory
        self.cpus = cpus or default_cpus(self.kernel)
        self.cmdline_extra = cmdline_extra
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="pykpatch-guest-"))
        self._own_workdir = workdir is None
        self.console_log = self.workdir / "console.log"
        self._proc: Optional[subprocess.Popen] = None
        self._sock: Optional[socket.socket] = None
        self._buf = b""
        self._next_id = 0
        self.boot_id = ""
        self.boot_seconds = 0.0

    # -- lifecycle -------------------------------------------------------------
    def __enter__(self) -> "Guest":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Build the image if needed, boot, and wait until the agent answers."""
        require_tool("qemu-system-x86_64", "qemu-system-x86")
        image = GuestImage(self.kernel).ensure()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.disk = image.overlay(self.workdir / "disk.qcow2")
        self.initrd = image.initrd
        _live_guests.append(self)
        try:
            self._boot()
        except GuestError as err:
            # Under TCG a boot very rarely hangs before any console output (seen once
            # in a whole suite, 6.1 with 2 vCPUs); a kernel that cannot boot fails twice.
            if not self.console_log.is_file() or self.console_log.stat().st_size or \
                    "waiting for the guest to boot" not in str(err):
                raise
            log.warning("the guest did not boot and said nothing (%s); booting it again", err)
            self._boot()

    def _boot(self) -> None:
        sock_path = self.workdir / "agent.sock"
        if sock_path.exists():
            sock_path.unlink()
        started = time.monotonic()
        with open(self.console_log, "ab") as console:
            self._proc = subprocess.Popen(self._qemu_argv(sock_path), stdin=subprocess.DEVNULL,
                                          stdout=console, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        try:
            self._connect(sock_path)
            hello = self._receive(BOOT_TIMEOUT[self.mode], waiting_for="the guest to boot")
        except BaseException:
            self._kill()
            raise
        self.boot_id = hello.get("boot_id", "")
        if self.mode == "systemd":
            # The agent is one service among many: wait for the rest of the boot.
            self.run("systemctl is-system-running --wait", timeout=BOOT_TIMEOUT["systemd"])
        self.boot_seconds = time.monotonic() - started
        log.info("guest up in %.1f s (%s boot)", self.boot_seconds, self.mode)

    def _qemu_argv(self, sock_path: Path) -> List[str]:
        append = f"console=ttyS0 root=/dev/vda rw panic=-1 quiet {self.cmdline_extra}".strip()
        if self.mode == "fast":
            append += " init=/usr/local/sbin/pykpatch-init"
        return [
            "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max",
            "-m", self.memory, "-smp", str(self.cpus),
            "-display", "none", "-no-reboot", "-nic", "none", "-monitor", "none",
            "-serial", "stdio",
            "-kernel", str(self.kernel.vmlinuz), "-initrd", str(self.initrd),
            "-append", append,
            "-drive", f"file={self.disk},if=virtio,format=qcow2",
            "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=agent,path={sock_path},server=on,wait=off",
            "-device", "virtserialport,chardev=agent,name=org.pykpatch.agent",
        ]

    def _connect(self, sock_path: Path) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self._check_alive("starting QEMU")
            if sock_path.exists():
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.connect(str(sock_path))
                    self._sock = sock
                    self._buf = b""
                    return
                except OSError:
                    sock.close()
            time.sleep(0.05)
        raise GuestError("QEMU did not open its agent socket within 30 s", log=str(self.console_log))

    def _check_alive(self, doing: str) -> None:
        if self._proc is None or self._proc.poll() is not None:
            code = None if self._proc is None else self._proc.returncode
            raise GuestError(f"QEMU exited (code {code}) while {doing}; "
                             f"last console lines:\n{self.console_tail()}",
                             log=str(self.console_log))

    def console_tail(self, lines: int = 15) -> str:
        try:
            text = self.console_log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def reboot(self) -> None:
        """Reboot the guest keeping its disk (QEMU is restarted on the same overlay)."""
        self._shutdown("b")
        self._boot()

    def close(self) -> None:
        """Power off, kill QEMU if it lingers, and remove the overlay."""
        if self._proc is not None and self._proc.poll() is None:
            try:
                self._shutdown("o")
            except KpatchError:
                pass
        self._kill()
        if self in _live_guests:
            _live_guests.remove(self)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _shutdown(self, sysrq: str) -> None:
        # sysrq acts at once; sync first so an installed file survives a reboot.
        self._send({"id": -1, "cmd": f"sync; echo {sysrq} > /proc/sysrq-trigger", "timeout": 30}, 30)
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        self._kill()

    def _kill(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()

    # -- talking to the agent --------------------------------------------------
    def _send(self, request: dict, timeout: float) -> None:
        if self._sock is None:
            raise GuestError("the guest is not running")
        # (the receive loop leaves a short timeout behind; a large put under TCG
        # takes the guest seconds to read)
        self._sock.settimeout(timeout)
        try:
            self._sock.sendall(json.dumps(request).encode() + b"\n")
        except socket.timeout:
            raise GuestError(f"timed out after {timeout:.0f} s sending a request to the guest",
                             log=str(self.console_log)) from None

    def _receive(self, timeout: float, waiting_for: str) -> dict:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            self._check_alive(f"waiting for {waiting_for}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise GuestError(f"timed out after {timeout:.0f} s waiting for {waiting_for}",
                                 log=str(self.console_log))
            self._sock.settimeout(min(left, 0.5))
            try:
                chunk = self._sock.recv(1 << 20)
            except socket.timeout:
                continue
            if not chunk:
                time.sleep(0.05)
                continue
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def _request(self, request: dict, timeout: float, what: str) -> Result:
        self._next_id += 1
        request["id"] = self._next_id
        self._send(request, timeout)
        while True:
            reply = self._receive(timeout + 30, waiting_for=what)
            if reply.get("id") == self._next_id:
                out = base64.b64decode(reply["out"]).decode(errors="replace")
                return Result(what, reply["rc"], out)

    def run(self, cmd: str, timeout: float = 120) -> Result:
        """Run *cmd* with /bin/sh in the guest; stdout and stderr together."""
        log.debug("guest$ %s", cmd)
        result = self._request({"cmd": cmd, "timeout": timeout}, timeout, cmd)
        result.cmd = cmd
        return result

    def check(self, cmd: str, timeout: float = 120) -> str:
        """Run *cmd*; its output, or :class:`GuestError` if it failed."""
        result = self.run(cmd, timeout)
        if not result.ok:
            raise GuestError(f"in the guest, '{cmd}' failed (exit {result.rc}):\n{result.out}")
        return result.out

    def put(self, local: Union[str, Path], remote: str, mode: int = 0o644) -> str:
        """Copy a host file into the guest; returns *remote*."""
        data = base64.b64encode(Path(local).read_bytes()).decode()
        result = self._request({"put": remote, "data": data, "mode": mode}, 120, f"put {remote}")
        if not result.ok:
            raise GuestError(f"copying {local} to the guest's {remote} failed: {result.out}")
        return remote

    def dmesg(self) -> str:
        return self.check("dmesg")


@atexit.register
def _kill_leftover_guests() -> None:
    for guest in list(_live_guests):
        guest._kill()
