"""Debian kernels from Debian's package archive, fetched without installing.

For one kernel release (``6.1.0-56-cloud-amd64``) this module finds the
matching set of packages, downloads them with ``apt-get download`` into the
cache, unpacks them with ``dpkg-deb -x`` and prepares a source tree that
compiles objects byte-identical to the shipped kernel.  Nothing is installed
on the host: the headers package's absolute include of its ``-common`` half
is redirected into the cache.

Cache layout (under :func:`pykpatch.cache.cache_dir`)::

    debs/                               the downloaded .deb files
    kernels/<release>_<version>/
        config-<release>  the kernel's config, taken alone from the image package
        image/    boot/vmlinuz-*, boot/config-*, lib/modules/<release>/
        headers/  usr/src/linux-headers-*, usr/lib/linux-kbuild-*
        dbg/      vmlinux-<release> (symbols and code; DWARF left out), and
                  modules/<path>.ko debug modules, extracted when needed
        tree-<key>/  prepared source tree (key: config + compiler); tree-<key>-full/
                  when the lean one lacked a file the build wanted
"""

import hashlib
import logging
import re
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from pykpatch.cache import cache_dir, made_once
from pykpatch.errors import InputError, KpatchError
from pykpatch.kernel import kbuild
from pykpatch.process import require_tool, run, run_pipeline
from pykpatch.provider import debpart
from pykpatch.provider.archive import DEBIAN_CODENAMES, Archive, version_key
from pykpatch.provider.buildroot import BuildRoot

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # (its data/ is read by compiles)

log = logging.getLogger("pykpatch")

# The kernel the project demonstrates and tests on, with the Debian version
# we pin.  When the archive has dropped that version, the newest complete set
# is used instead; when it has dropped the release (old ABIs leave it a few
# months after a security update), the newest release of the same line and
# flavour (see default_release).  Every such choice is logged.
DEFAULT_RELEASE = "6.1.0-56-cloud-amd64"
# Debian 13's kernel, chosen the same way where it is named; the same 6.12
# built for Debian 12 (bookworm-backports and -security, gcc-12); and the
# generic flavour of Debian 12's kernel (about twice the modules).
TRIXIE_RELEASE = "6.12.118+deb13-cloud-amd64"
BOOKWORM_612_RELEASE = "6.12.118+deb12-cloud-amd64"
GENERIC_RELEASE = "6.1.0-56-amd64"
# Linux 7.x from trixie-backports (gcc-14; the image split in three packages).  Backports
# move to a new series every few months: when this one is gone, the newest 7.x.
BACKPORTS_7_RELEASE = "7.3.4+deb13-cloud-amd64"
PINNED_VERSIONS: Dict[str, str] = {
    "6.1.0-56-cloud-amd64": "6.1.192-2",
    "6.1.0-54-cloud-amd64": "6.1.190-1",
    TRIXIE_RELEASE: "6.12.118-1",
    BOOKWORM_612_RELEASE: "6.12.118-1~deb12u1",
    GENERIC_RELEASE: "6.1.192-2",
    BACKPORTS_7_RELEASE: "7.3.4-1~bpo13+1",
}

# 6.1.0-56-cloud-amd64 (Debian 12's own line: <series>.0-<abi number>) and
# 6.12.118+deb13-cloud-amd64 (from Debian 13 on, and backports: the upstream
# version and the Debian release it was built for).
_RELEASE_RE = re.compile(r"^(?P<abi>(?P<series>\d+\.\d+)\.(?:0-\d+|\d+\+deb\d+))"
                         r"-(?P<flavour>[a-z][a-z0-9-]*)$")

# Every architecture directory of the kernel source but x86's, as two tar
# patterns: tar tries each pattern on each of the 80,000 names, and one
# pattern per architecture cost 1.5 s of CPU.
_OTHER_ARCH_DIRS = ("arch/[!x]*", "arch/x[!8]*")

# Packages whose version must be exactly the kernel's.  linux-kbuild-<series>
# holds host tools (modpost, fixdep) shared by all ABIs of a series; the
# archive keeps fewer of its versions, so it may fall back (logged).
STRICT_ROLES = ("image", "headers", "headers_common", "dbg", "source")
# Since Debian's 7.x packages, linux-image-<release> is an empty package that
# depends on three: linux-base- (config, System.map), linux-binary- (vmlinuz;
# -unsigned without the Secure Boot signature) and linux-modules-<release>.
SPLIT_IMAGE_ROLES = ("base", "modules")

# The kernel source tarball inside linux-source-<series>.
_SOURCE_TARBALL = "./usr/src/linux-source-*.tar.xz"

# Written last into a prepared source tree: a tree without it is incomplete.
_PREPARED_STAMP = ".pykpatch-prepared"


@dataclass(frozen=True)
class DebianRelease:
    """A Debian kernel release string, split into the parts package names use."""

    release: str
    series: str
    abi: str
    flavour: str

    @classmethod
    def parse(cls, release: str) -> "DebianRelease":
        m = _RELEASE_RE.match(release)
        if not m:
            raise InputError(
                f"'{release}' is not a Debian kernel release (expected something like "
                "6.1.0-56-cloud-amd64 or 6.12.118+deb13-cloud-amd64)")
        return cls(release, m["series"], m["abi"], m["flavour"])

    @property
    def suite(self) -> str:
        """The Debian release the kernel was built for (its userland: the compiler)."""
        m = re.search(r"\+deb(\d+)$", self.abi)
        return DEBIAN_CODENAMES.get(int(m.group(1)) if m else 12, "unknown")

    @property
    def per_abi_kbuild(self) -> bool:
        """Since the +debN releases, linux-kbuild is made per ABI, not per series."""
        return "+deb" in self.abi

    def package_names(self, split_image: bool = False) -> Dict[str, str]:
        """Debian package name for each role (*split_image*: see :data:`SPLIT_IMAGE_ROLES`).
        The image is the ``-unsigned`` one: the same files without Secure Boot signatures."""
        split = {"base": f"linux-base-{self.release}",
                 "modules": f"linux-modules-{self.release}"} if split_image else {}
        return {
            "image": (f"linux-binary-unsigned-{self.release}" if split_image
                      else f"linux-image-{self.release}-unsigned"),
            **split,
            "headers": f"linux-headers-{self.release}",
            "headers_common": f"linux-headers-{self.abi}-common",
            "kbuild": f"linux-kbuild-{self.abi if self.per_abi_kbuild else self.series}",
            "source": f"linux-source-{self.series}",
            "dbg": f"linux-image-{self.release}-dbg",
        }


@dataclass(frozen=True)
class PackageSet:
    """The chosen Debian version of each package of one release."""

    release: DebianRelease
    version: str
    versions: Dict[str, str]
    split_image: bool = False

    @property
    def names(self) -> Dict[str, str]:
        return self.release.package_names(self.split_image)

    @property
    def image_roles(self) -> Sequence[str]:
        """The packages that together are the installed kernel."""
        return ("image", *SPLIT_IMAGE_ROLES) if self.split_image else ("image",)

    def config_member(self) -> "tuple[str, str]":
        """(role, member) of the kernel's config in its packages."""
        release = self.release.release
        if self.split_image:
            return "base", f"./usr/lib/modules/{release}/config"
        return "image", f"./boot/config-{release}"

    def debug_vmlinux_member(self) -> str:
        """The debug vmlinux in the -dbg package (from 7.x a symlink points there from
        ``boot/``, and symlinks do not stream out of a package)."""
        release = self.release.release
        if self.split_image:
            return f"./usr/lib/debug/lib/modules/{release}/vmlinux"
        return f"./usr/lib/debug/boot/vmlinux-{release}"

    def vmlinuz(self) -> str:
        """The kernel image, relative to the unpacked image packages."""
        release = self.release.release
        if self.split_image:
            return f"usr/lib/modules/{release}/vmlinuz.unsigned"
        return f"boot/vmlinuz-{release}"

    def deb_name(self, role: str) -> str:
        name = self.names[role]
        version = self.versions[role].replace(":", "%3a")
        arch = "all" if role in ("headers_common", "source") else "amd64"
        return f"{name}_{version}_{arch}.deb"


def choose_versions(release: DebianRelease, known: Dict[str, List[str]],
                    pinned: Optional[str], split_image: bool = False) -> PackageSet:
    """Pick one Debian version for the whole set from *known* (role -> versions).

    The pinned version wins when every strict package has it; otherwise the
    newest version they all share.  Raises naming what was looked for.
    """
    names = release.package_names(split_image)
    strict = STRICT_ROLES + (SPLIT_IMAGE_ROLES if split_image else ())
    missing = [names[r] for r in strict if not known.get(r)]
    if missing:
        raise KpatchError(
            f"kernel {release.release}: Debian's archive has no {', '.join(missing)}; "
            "check the release name")
    common = set(known[strict[0]])
    for role in strict[1:]:
        common &= set(known[role])
    if not common:
        listing = "; ".join(f"{names[r]}: {', '.join(known[r])}" for r in strict)
        raise KpatchError(
            f"kernel {release.release}: no Debian version is shared by all its packages ({listing})")
    if pinned in common:
        version = pinned
    else:
        version = max(common, key=version_key)
        if pinned:
            log.warning("kernel %s: pinned Debian version %s is gone from the archive; "
                        "using %s, the newest complete set", release.release, pinned, version)
    versions = {r: version for r in strict}
    kbuild = known.get("kbuild") or []
    if version in kbuild:
        versions["kbuild"] = version
    elif kbuild:
        versions["kbuild"] = kbuild[0]
        log.warning("kernel %s: %s %s is not in the archive; using %s (host tools only)",
                    release.release, names["kbuild"], version, kbuild[0])
    else:
        raise KpatchError(f"kernel {release.release}: the archive has no {names['kbuild']}")
    log.info("kernel %s: Debian packages version %s", release.release, version)
    return PackageSet(release, version, versions, split_image)


def releases_in_archive(like: str, cache: Optional[Path] = None,
                        any_series: bool = False) -> List[str]:
    """Releases of the same line and flavour as *like* that the archive has a
    debug image of (the rarest package of a set), newest ABI first.
    *any_series*: of any series of the same major version (backports move on
    from 7.3 to 7.4)."""
    wanted = DebianRelease.parse(like)
    prefix = wanted.series.split(".")[0] if any_series else wanted.series
    found = []
    for name in Archive(cache_dir(cache)).package_names(f"linux-image-{prefix}."):
        release = name[len("linux-image-"):-len("-dbg")] if name.endswith("-dbg") else ""
        if _RELEASE_RE.match(release) and _same_line(DebianRelease.parse(release), wanted,
                                                     any_series):
            found.append(release)
    return sorted(found, key=lambda r: version_key(DebianRelease.parse(r).abi), reverse=True)


def _same_line(a: DebianRelease, b: DebianRelease, any_series: bool = False) -> bool:
    return ((a.series == b.series or any_series) and (a.flavour, a.suite) == (b.flavour, b.suite))


def newest_release(like: str = DEFAULT_RELEASE, cache: Optional[Path] = None,
                   any_series: bool = False) -> str:
    """The newest release of *like*'s line and flavour whose whole package set
    the archive has (e.g. 6.1.0-57-cloud-amd64 for 6.1.0-56-cloud-amd64)."""
    for release in releases_in_archive(like, cache, any_series):
        if DebianKernel(release, cache=cache).in_archive():
            return release
    raise KpatchError(f"Debian's archive has no complete package set of a release like {like}")


def default_release(cache: Optional[Path] = None) -> str:
    """The release the demo and the tests use by default (see :func:`preferred_release`)."""
    return preferred_release(DEFAULT_RELEASE, cache)


def preferred_release(pinned: str, cache: Optional[Path] = None,
                      any_series: bool = False) -> str:
    """*pinned* while the archive or the cache has it, else the newest release
    of its line (logged); *any_series*: see :func:`releases_in_archive`."""
    if DebianKernel(pinned, cache=cache).in_archive():
        return pinned
    newest = newest_release(pinned, cache, any_series)
    log.warning("kernel %s is gone from Debian's archive; using %s, the newest of its line",
                pinned, newest)
    return newest


class DebianKernel:
    """Everything pykpatch needs about one Debian kernel release, cached."""

    def __init__(self, release: Optional[str] = None, cache: Optional[Path] = None,
                 version: Optional[str] = None) -> None:
        """*release* None: :func:`default_release`."""
        release = release or default_release(cache)
        self.release = DebianRelease.parse(release)
        self.cache = cache_dir(cache)
        self.archive = Archive(self.cache)
        self._pinned = version or PINNED_VERSIONS.get(release)
        self._packages: Optional[PackageSet] = None
        self._tools: Optional[List[str]] = None

    # -- package set and downloads ---------------------------------------------
    @property
    def packages(self) -> PackageSet:
        if self._packages is None:
            self._packages = self._resolve_packages()
        return self._packages

    def in_archive(self) -> bool:
        """True when a complete package set of this release can be had (cached
        or from the archive); no download."""
        try:
            self.packages
        except KpatchError:
            return False
        return True

    def _resolve_packages(self) -> PackageSet:
        cached = self._cached_set()
        if cached is not None:
            return cached
        known = {role: self.archive.versions(name)
                 for role, name in self.release.package_names().items()}
        split_names = self.release.package_names(split_image=True)
        # (a release that has neither is reported with the classic names)
        split = not known["image"] and bool(self.archive.versions(split_names["image"]))
        if split:
            known.update({role: self.archive.versions(split_names[role])
                          for role in ("image", *SPLIT_IMAGE_ROLES)})
        return choose_versions(self.release, known, self._pinned, split)

    def _cached_set(self) -> Optional[PackageSet]:
        """The pinned set, when all of its .debs are already downloaded (works offline)."""
        if not self._pinned:
            return None
        for kbuild_version in self._cached_kbuild_versions():
            for split in (False, True):
                roles = STRICT_ROLES + (SPLIT_IMAGE_ROLES if split else ())
                versions = {r: self._pinned for r in roles}
                versions["kbuild"] = kbuild_version
                candidate = PackageSet(self.release, self._pinned, versions, split)
                if all((self.debs_dir / candidate.deb_name(r)).is_file() for r in versions):
                    return candidate
        return None

    def _cached_kbuild_versions(self) -> List[str]:
        prefix = f"{self.release.package_names()['kbuild']}_"
        found = [p.name[len(prefix):].split("_")[0].replace("%3a", ":")
                 for p in self.debs_dir.glob(prefix + "*.deb")]
        return sorted(found, key=lambda v: v != self._pinned)

    @property
    def debs_dir(self) -> Path:
        d = self.cache / "debs"
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def kernel_dir(self) -> Path:
        d = self.cache / "kernels" / f"{self.release.release}_{self.packages.version}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def deb(self, role: str) -> Path:
        """The downloaded .deb of *role*, fetching it first if needed."""
        path = self.debs_dir / self.packages.deb_name(role)
        if not path.is_file():
            self._download(role)
        if not path.is_file():
            raise KpatchError(f"apt-get download did not produce {path.name} in {self.debs_dir}")
        return path

    def _download(self, role: str) -> None:
        self.archive.download(self.packages.names[role], self.packages.versions[role],
                              self.debs_dir, self.cache / "logs" / "download.log")

    def download_all(self) -> None:
        for role in self.packages.names:
            self.deb(role)

    # -- unpacked pieces -------------------------------------------------------
    def _unpacked(self, name: str, roles: Sequence[str]) -> Path:
        """``kernel_dir/name`` holding the given packages unpacked (done once)."""
        target = self.kernel_dir / name
        if target.is_dir():
            return target
        tmp = self._fresh_tmp(target)
        for role in roles:
            run(["dpkg-deb", "-x", self.deb(role), tmp], what=f"unpacking {self.deb(role).name}")
        self._after_unpack(name, tmp)
        tmp.rename(target)
        return target

    def _fresh_tmp(self, target: Path) -> Path:
        tmp = target.with_name(target.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        return tmp

    def _after_unpack(self, name: str, tmp: Path) -> None:
        if name == "headers":
            self._redirect_headers_include(tmp)

    def _redirect_headers_include(self, root: Path) -> None:
        # The flavour Makefile includes the -common Makefile by absolute path
        # (/usr/src/...); point it at our unpacked copy instead of installing.
        makefile = root / "usr/src" / f"linux-headers-{self.release.release}" / "Makefile"
        common = self.kernel_dir / "headers/usr/src" / f"linux-headers-{self.release.abi}-common"
        text = makefile.read_text()
        fixed = re.sub(r"^include /usr/src/(\S+)/Makefile$", f"include {common}/Makefile",
                       text, flags=re.M)
        if fixed == text:
            raise KpatchError(f"unexpected headers Makefile layout in {makefile}")
        # From 7.x it also names itself as the output directory, by absolute path.
        own = self.kernel_dir / "headers/usr/src" / f"linux-headers-{self.release.release}"
        fixed = re.sub(r"^KBUILD_OUTPUT=/usr/src/\S+$", f"KBUILD_OUTPUT={own}", fixed, flags=re.M)
        makefile.write_text(fixed)

    @property
    def image_dir(self) -> Path:
        return self._unpacked("image", self.packages.image_roles)

    @property
    def vmlinuz(self) -> Path:
        return self.image_dir / self.packages.vmlinuz()

    @property
    def config(self) -> Path:
        """The kernel's config, taken alone from its package (it comes first there)."""
        target = self.kernel_dir / f"config-{self.release.release}"
        return self._extract_member(*self.packages.config_member(), target)

    @property
    def modules_dir(self) -> Path:
        # /usr/lib/modules from Debian 13 on (merged /usr), /lib/modules before.
        for lib in ("usr/lib", "lib"):
            found = self.image_dir / lib / "modules" / self.release.release
            if found.is_dir():
                return found
        raise KpatchError(f"{self.deb('image').name} has no lib/modules/{self.release.release}")

    @property
    def headers_dir(self) -> Path:
        """The out-of-tree module build directory (``make -C`` it)."""
        root = self._unpacked("headers", ["headers", "headers_common", "kbuild"])
        return root / "usr/src" / f"linux-headers-{self.release.release}"

    @property
    def vmlinux(self) -> Path:
        """The debug vmlinux: full symbol table with FILE symbols, and the code.

        Its DWARF and relocation sections, 90% of the file, nothing here
        reads: when the package allows it they are not decompressed, and
        read as zeros (see :mod:`pykpatch.provider.debpart`).
        """
        target = self.kernel_dir / "dbg" / f"vmlinux-{self.release.release}"
        member = self.packages.debug_vmlinux_member()

        def write(tmp: Path) -> None:
            deb = self.deb("dbg")
            try:
                debpart.extract_elf_without_debug(deb, member, tmp)
            except (debpart.NotSeekable, FileNotFoundError) as why:
                log.info("%s: %s; unpacking %s whole", deb.name, why, member.lstrip("./"))
                self._write_member(deb, member, tmp)

        return made_once(target, write)

    def debug_module(self, module: Path) -> Path:
        """The debug counterpart of shipped module *module* (a path under
        :attr:`modules_dir`): its symbol table keeps the FILE symbols that
        the shipped one lost, with the same addresses."""
        rel = module.relative_to(self.modules_dir).with_suffix(".ko")  # (shipped as .ko.xz)
        target = self.kernel_dir / "dbg" / "modules" / rel
        member = f"./usr/lib/debug/lib/modules/{self.release.release}/{rel}"
        return self._extract_member("dbg", member, target)

    def _extract_member(self, role: str, member: str, target: Path) -> Path:
        """*member* of the package of *role*, extracted once to *target*."""
        return made_once(target, lambda tmp: self._write_member(self.deb(role), member, tmp))

    @staticmethod
    def _write_member(deb: Path, member: str, path: Path) -> None:
        log.info("extracting %s from %s", member.lstrip("./"), deb.name)
        # tar stops at the first match: one file of the dbg package's 2.5 GB
        # is read only up to where it ends.
        with open(path, "wb") as out:
            run_pipeline([["dpkg-deb", "--fsys-tarfile", deb],
                          ["tar", "-xO", "--occurrence=1", member]],
                         stdout=out, what=f"extracting {member} from {deb.name}",
                         last_stops_early=True)
        if path.stat().st_size == 0:
            raise KpatchError(f"{deb.name} has no {member}")

    # -- where compiles run ----------------------------------------------------
    @property
    def tools(self) -> List[str]:
        """What goes before each command that builds for this kernel: nothing
        on a host of the kernel's own Debian release, else the entry into a
        build root of that release (see :mod:`pykpatch.provider.buildroot`):
        its compiler and its packaged host tools need that release."""
        if self._tools is None:
            suite = self.release.suite
            if host_suite() == suite:
                self._tools = []
            else:
                root = BuildRoot(self.cache, suite, compiler_package(self.compiler()))
                self._tools = root.ensure().prefix([self.cache, Path(tempfile.gettempdir()),
                                                     PACKAGE_DIR])
        return self._tools

    # -- prepared source tree --------------------------------------------------
    def compiler(self) -> str:
        """The compiler the kernel was built with, from its config (e.g. gcc-12)."""
        return kbuild.config_compiler(self.config)

    def make_args(self) -> List[str]:
        """Arguments every ``make`` in the source tree gets (see :func:`kbuild.make_args`)."""
        return kbuild.make_args(self.release.release, self.compiler())

    def compiler_version(self) -> str:
        """First line of ``<compiler> --version`` where compiles run."""
        cc = self.compiler()
        if not self.tools:
            require_tool(cc, compiler_package(cc))
        return run([*self.tools, cc, "--version"], what=f"{cc} --version").stdout.splitlines()[0]

    def tree_key(self) -> str:
        material = self.config.read_bytes() + self.compiler_version().encode()
        # What the prepared files depend on (utsrelease.h, the config's compiler).
        material += f"KERNELRELEASE={self.release.release} CC={self.compiler()}".encode()
        return hashlib.sha256(material).hexdigest()[:12]

    def source_tree(self, jobs: int = 2, full: bool = False,
                    alongside: Optional[Callable[[Path], None]] = None,
                    after_unpack: Optional[Callable[[], None]] = None) -> Path:
        """The prepared source tree (``olddefconfig`` + ``modules_prepare``), made once.

        By default parts an x86 build of this config never reads are left
        packed (see :meth:`source_exclusions`); ``full`` unpacks everything.
        *alongside*, when the tree has to be made, is called with it while
        ``modules_prepare`` runs, once the config is final: work that reads
        only the config and the Makefiles overlaps the preparation.
        *after_unpack* is called once the source is unpacked, which keeps
        every core busy until then: work started there overlaps the mostly
        single-threaded configuration.  The
        stamp file is written last: a tree without it is a leftover of an
        interrupted run and is made again from scratch.
        """
        key = self.tree_key()
        whole = self.kernel_dir / f"tree-{key}-full"
        if (whole / _PREPARED_STAMP).is_file():
            return whole  # made before because the lean tree lacked something
        target = whole if full else self.kernel_dir / f"tree-{key}"
        stamp = target / _PREPARED_STAMP
        if stamp.is_file():
            return target
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        logfile = self.kernel_dir / "prepare.log"
        try:
            self._unpack_source(target, [] if full else self.source_exclusions())
            if after_unpack is not None:
                after_unpack()
            self._configure(target, jobs, logfile)
            self._prepare_modules(target, jobs, logfile, alongside)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        stamp.write_text(self.packages.version + "\n")
        return target

    def source_exclusions(self) -> List[str]:
        """tar patterns for what an x86-64 build of this config never reads
        (see :func:`source_exclusions`)."""
        return source_exclusions(self.config.read_text())

    def _unpack_source(self, dest: Path, exclude: Sequence[str] = ()) -> None:
        """The source tarball, streamed out of its package into *dest*.

        Debian's tarball is xz in 55 blocks, which xz 5.4 decompresses on
        every core, also from a pipe.  --anchored: each pattern (all start
        with "*/") is matched once per name, not again after every "/": 5 s
        less CPU.
        """
        deb = self.deb("source")
        run_pipeline([
            ["dpkg-deb", "--fsys-tarfile", deb],
            ["tar", "-xO", "--wildcards", "--occurrence=1", _SOURCE_TARBALL],
            ["tar", "-I", "xz -T0", "-xf", "-", "-C", dest, "--strip-components=1", "--anchored",
             *[f"--exclude={p}" for p in exclude]],
        ], what=f"unpacking the kernel source from {deb.name}")

    def _configure(self, tree: Path, jobs: int, logfile: Path) -> None:
        """The kernel's config, completed, and what kbuild needs to list the objects.

        ``archprepare`` is the part of ``modules_prepare`` that ``make -n``
        depends on (see :mod:`pykpatch.kernel.kbuild`); done on its own, the
        rest of the preparation and the listing can run side by side.
        """
        shutil.copyfile(self.config, tree / ".config")
        make = [*self.tools, "make", f"-j{jobs}", *self.make_args()]
        run(make + ["olddefconfig"], cwd=tree, logfile=logfile, what="make olddefconfig")
        run(make + [kbuild.CONFIG_AND_HOST_TOOLS_GOAL], cwd=tree, logfile=logfile,
            what=f"make {kbuild.CONFIG_AND_HOST_TOOLS_GOAL}")

    def _install_packaged_objtool(self, tree: Path) -> bool:
        """Put linux-kbuild's objtool where kbuild runs it from, if it is this kernel's own.

        Building objtool is 7.5 s of CPU, a sixth of a cold build.  The
        package's binary is built from this very source when its version is
        the kernel's (objects come out byte-identical), but it may not run
        on a host with an older C library: then kbuild builds it as usual.
        """
        if kbuild.config_value(self.config, "OBJTOOL") != "y":
            return False
        if self.packages.versions["kbuild"] != self.packages.version:
            return False
        binary = tree / kbuild.OBJTOOL_BINARY
        kbuild_dir = self.release.package_names()["kbuild"]
        # Since the +debN packages, tools/objtool/objtool is a wrapper that
        # runs objtool.real-<arch>.
        suffix = ".real-x86" if self.release.per_abi_kbuild else ""
        member = f"./usr/lib/{kbuild_dir}/{kbuild.OBJTOOL_BINARY}{suffix}"
        self._extract_member("kbuild", member, binary)
        binary.chmod(0o755)
        if _runs([*self.tools, binary]):
            return True
        log.info("%s from %s does not run here; building objtool", kbuild.OBJTOOL_BINARY,
                 self.deb("kbuild").name)
        binary.unlink()
        return False

    def _prepare_modules(self, tree: Path, jobs: int, logfile: Path,
                         alongside: Optional[Callable[[Path], None]]) -> None:
        """``make modules_prepare``, with *alongside* run at the same time.

        Either way make has finished when this returns or raises (the caller
        removes the tree on failure).  When both fail, the failure of
        ``modules_prepare`` is raised: the listing depends on it.
        """
        make = [*self.tools, "make", f"-j{jobs}", *self.make_args(), "modules_prepare"]
        if self._install_packaged_objtool(tree):
            make[-1:-1] = kbuild.not_remade(kbuild.OBJTOOL_GOAL)
        with ThreadPoolExecutor(max_workers=1) as pool:
            preparing = pool.submit(run, make, cwd=tree, logfile=logfile,
                                    what="make modules_prepare")
            try:
                if alongside is not None:
                    alongside(tree)
            except Exception as listing_failed:
                failed = preparing.exception()  # (waits for make)
                if failed is not None:
                    raise failed from listing_failed
                raise
            preparing.result()


def host_suite(os_release: Path = Path("/etc/os-release")) -> str:
    """The codename of the host's Debian release ("" elsewhere)."""
    try:
        text = os_release.read_text()
    except OSError:
        return ""
    m = re.search(r"^VERSION_CODENAME=\"?([a-z]+)", text, re.M)
    return m.group(1) if m else ""


def compiler_package(compiler: str) -> str:
    """The Debian package of a kernel's compiler (x86_64-linux-gnu-gcc-14: gcc-14)."""
    return compiler.rsplit("-linux-gnu-", 1)[-1]


def source_exclusions(config: str) -> List[str]:
    """tar patterns (``--anchored``) for what an x86-64 build of *config* never reads.

    Writing the 1.3 GB tree is most of a cold build's time, so these stay
    packed: the code of other architectures (kbuild compiles only arch/x86;
    kconfig still reads every arch's Kconfig files, so those stay), the
    documentation below its top Kconfig, perf and the selftests, and, when
    the config has no DRM, the C sources and headers of the graphics drivers
    (460 MB; their Kconfig files and Makefiles are kept, kconfig reads them
    all).  Should a build still want an excluded file, the object index
    notices and the tree is unpacked in full.
    """
    top = "*/"
    patterns = [f"{top}Documentation/*/*", f"{top}tools/perf", f"{top}tools/testing"]
    patterns += [f"{top}{arch}/*.{ext}" for arch in _OTHER_ARCH_DIRS
                 for ext in ("[chS]", "dts", "dtsi")]
    if not re.search(r"^CONFIG_DRM=[ym]$", config, re.M):
        patterns += [f"{top}drivers/gpu/drm/*/*.[ch]"]
    return patterns


def _runs(program: Sequence[object]) -> bool:
    """True if *program* starts (its usage message is enough)."""
    try:
        proc = run([*program, "--help"], check=False)
    except (KpatchError, OSError):  # (not found; not an executable for this machine)
        return False
    return proc.returncode not in (126, 127) and proc.returncode >= 0
