"""The test guest's disk: a small Debian root of the kernel's own release
(Debian 12 for 6.1, Debian 13 for 6.12+deb13) with the kernel in it.

Made once per kernel release and cached::

    guest/<release>_<version>/
        root/        debootstrap'd Debian with linux-image-<release> installed
        initrd.img   the initramfs Debian built for it (mounts a virtio disk)
        base-<hash>.img  ext4 image of root/ made with ``mke2fs -d`` (no mounting)

Guests never write to ``base.img``: each boot gets a qcow2 overlay.
"""

import hashlib
import logging
import shutil
import subprocess
from pathlib import Path

from pykpatch.errors import KpatchError
from pykpatch.process import require_tool, run
from pykpatch.provider.archive import host_mirrors
from pykpatch.provider.debian import DebianKernel

log = logging.getLogger("pykpatch")

GUEST_PACKAGES = [
    "python3", "python3-pip", "kmod", "systemd-sysv", "udev", "initramfs-tools",
    "linux-base", "zstd", "e2fsprogs", "procps",
]
DISK_SIZE = "2G"
AGENT_DIR = Path(__file__).parent / "guest"


def debian_mirror(sources_dir: Path = Path("/etc/apt")) -> str:
    """The Debian archive URI this host's apt already uses."""
    return host_mirrors(sources_dir).main


class GuestImage:
    """The cached disk image and initramfs of the test guest for one kernel."""

    def __init__(self, kernel: DebianKernel) -> None:
        self.kernel = kernel
        self.dir = kernel.cache / "guest" / f"{kernel.release.release}_{kernel.packages.version}"
        self.logfile = self.dir.parent / "build.log"

    @property
    def base_image(self) -> Path:
        # Named by the agent files it holds, so a changed agent gets a new image.
        return self.dir / f"base-{_guest_files_digest()}.img"

    @property
    def initrd(self) -> Path:
        return self.dir / "initrd.img"

    def ensure(self) -> "GuestImage":
        """Build whatever is missing; a half-built root is thrown away and redone."""
        if self.base_image.is_file() and self.initrd.is_file():
            return self
        for tool, package in (("debootstrap", "debootstrap"), ("mke2fs", "e2fsprogs"),
                              ("qemu-img", "qemu-utils")):
            require_tool(tool, package)
        self.dir.mkdir(parents=True, exist_ok=True)
        root = self.dir / "root"
        if not (root / ".pykpatch-complete").is_file():
            self._make_root(root)
        self._make_image(root)
        return self

    def _make_root(self, root: Path) -> None:
        if root.exists():
            shutil.rmtree(root)
        log.info("building the guest's Debian root (debootstrap, about a minute)")
        try:
            run(["debootstrap", "--variant=minbase", "--include=" + ",".join(GUEST_PACKAGES),
                 self.kernel.release.suite, root, debian_mirror()], logfile=self.logfile,
                what="debootstrap")
            self._install_kernel(root)
            self._configure(root)
        except BaseException:
            _unmount_all_below(root)
            shutil.rmtree(root, ignore_errors=True)
            raise
        (root / ".pykpatch-complete").write_text("")

    def _install_kernel(self, root: Path) -> None:
        debs = [self.kernel.deb(role) for role in self.kernel.packages.image_roles]
        for deb in debs:
            shutil.copy(deb, root / "tmp" / deb.name)
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        with _chroot_mounts(root):
            run(["chroot", root, "dpkg", "-i", *[f"/tmp/{deb.name}" for deb in debs]],
                logfile=self.logfile, what=f"installing {debs[0].name} in the guest root",
                env=env)
            if self.kernel.packages.split_image:
                # The initramfs hooks run from linux-image-<release>, which depends
                # on the signed binary; the test guest boots the unsigned one.
                run(["chroot", root, "update-initramfs", "-c", "-k", self.kernel.release.release],
                    logfile=self.logfile, what="update-initramfs in the guest root", env=env)
        for deb in debs:
            (root / "tmp" / deb.name).unlink()

    def _configure(self, root: Path) -> None:
        (root / "etc/fstab").write_text("/dev/vda / ext4 rw,relatime 0 1\n")
        (root / "etc/hostname").write_text("pykpatch-guest\n")
        sbin = root / "usr/local/sbin"
        _install_file(AGENT_DIR / "agent.py", sbin / "pykpatch-agent", 0o755)
        _install_file(AGENT_DIR / "init.sh", sbin / "pykpatch-init", 0o755)
        unit = root / "etc/systemd/system/pykpatch-agent.service"
        _install_file(AGENT_DIR / "pykpatch-agent.service", unit, 0o644)
        wants = root / "etc/systemd/system/multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        (wants / unit.name).symlink_to(f"/etc/systemd/system/{unit.name}")
        # The root password is empty so that a person can log in on the console.
        run(["chroot", root, "passwd", "-d", "root"], logfile=self.logfile, what="passwd -d root")

    def _make_image(self, root: Path) -> None:
        # Copy the agent files in anew: they may have changed since the root was made.
        sbin = root / "usr/local/sbin"
        _install_file(AGENT_DIR / "agent.py", sbin / "pykpatch-agent", 0o755)
        _install_file(AGENT_DIR / "init.sh", sbin / "pykpatch-init", 0o755)
        initrd = root / "boot" / f"initrd.img-{self.kernel.release.release}"
        if not initrd.is_file():
            raise KpatchError(f"the guest root has no {initrd.name}; see {self.logfile}")
        for stale in self.dir.glob("base-*.img"):
            stale.unlink()
        tmp = self.base_image.with_suffix(".tmp")
        run(["mke2fs", "-q", "-t", "ext4", "-d", root, "-F", tmp, DISK_SIZE],
            logfile=self.logfile, what="mke2fs of the guest disk")
        shutil.copyfile(initrd, self.initrd)
        tmp.rename(self.base_image)

    def overlay(self, path: Path) -> Path:
        """A fresh qcow2 overlay at *path* whose backing file is the base image."""
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", self.base_image, "-F", "raw", path],
            what="qemu-img create")
        return path


def _guest_files_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(AGENT_DIR.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def _install_file(src: Path, dest: Path, mode: int) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    dest.chmod(mode)


class _chroot_mounts:
    """/proc, /sys and /dev mounted in *root* for the duration of a block."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __enter__(self) -> None:
        for what, args in (("proc", ["-t", "proc", "proc"]), ("sys", ["-t", "sysfs", "sysfs"]),
                           ("dev", ["--bind", "/dev"])):
            run(["mount", *args, self.root / what], what=f"mounting {what} in the guest root")

    def __exit__(self, *exc: object) -> None:
        _unmount_all_below(self.root)


def _unmount_all_below(root: Path) -> None:
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    targets = [line.split()[1] for line in mounts]
    prefix = str(root.resolve()) + "/"
    for target in sorted((t for t in targets if t.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "-l", target], check=False)
