"""A Debian package of one live patch module: ``pykpatch-patch-<release>``.

The package puts the module where ``kpatch install`` would
(``/var/lib/kpatch/<release>/<file>.ko``), depends on the exact
``linux-image-<release>`` build the module was made for, and carries
maintainer scripts (``data/deb/``) that hand the module to ``kpatch``:

* ``preinst`` refuses to unpack without pykpatch's ``kpatch`` command;
* ``postinst`` registers the module for boot (``kpatch install`` of the file
  already in place) and, on the running release, loads it; the module
  replaces an older cumulative patch atomically, after which the replaced
  modules (those named ``<module_prefix>*``) are removed;
* ``prerm`` unloads the patch before a removal (never before an upgrade);
* ``postrm`` disables ``kpatch.service`` once no patch is installed.

There is one package per kernel release: each version is a cumulative patch
that replaces the previous one, so every build's module needs a name of its
own that starts with the same prefix (``kpatch load`` refuses another build
under a name that is loaded).
"""

import email.utils
import gzip
import hashlib
import os
import re
import tempfile
import textwrap
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from pykpatch.errors import InputError, Refusal
from pykpatch.kernel.livepatch import ATTR_ENABLED
from pykpatch.kernel.module import ATTR_TAINT, TAINT_LIVEPATCH, kbuild_modname
from pykpatch.manage.host import STORE, Host
from pykpatch.manage.install import UNIT_NAME
from pykpatch.manage.modinfo import (
    ModuleInfo, read_module_info, require_livepatch, require_release,
)
from pykpatch.process import require_tool, run
from pykpatch.provider.archive import is_debian_version

PACKAGE_PREFIX = "pykpatch-patch-"
ARCHITECTURE = "amd64"
# A host without a dot (localhost) is an error for lintian; .invalid is
# reserved never to resolve (RFC 2606).  Builders should give their own.
DEFAULT_MAINTAINER = "pykpatch <pykpatch@localhost.invalid>"
SCRIPTS = ("preinst", "postinst", "prerm", "postrm")
# Debian policy wants a synopsis of "about 80 characters" at most (lintian: 80).
MAX_SYNOPSIS = 80
_LINE_WIDTH = 80
_TEMPLATE_DIR = "deb"
_PLACEHOLDER = re.compile(r"@[A-Z_]+@")

# Debian policy 5.6.1: package names.
_PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")
# What goes into the shell scripts unquoted by anything but '...'.
_MODULE_FILE = re.compile(r"[A-Za-z0-9_-]+\.ko")
_MODULE_NAME = re.compile(r"[A-Za-z0-9_]+")
_MAINTAINER = re.compile(r"[^<>\n]+ <[^<>@\s]+@[^<>@\s]+>")

_COPYRIGHT = """\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: {package}
Comment: A live patch module for Linux {release},
 built by pykpatch from that kernel's source and a patch to it;
 like the kernel, it is GPL-2.

Files: *
Copyright: 1991-{year} Linus Torvalds and the other authors of Linux and of the patch
License: GPL-2
 This program is free software; you can redistribute it and/or modify it
 under the terms of the GNU General Public License version 2 as published by
 the Free Software Foundation.
 .
 On Debian systems, the full text of the GNU General Public License version 2
 can be found in the file '/usr/share/common-licenses/GPL-2'.
"""

_OVERRIDES = """\
# postrm runs systemctl itself, not deb-systemd-helper: kpatch.service is no unit
# of this package but the one 'kpatch install' (run by postinst) writes and
# enables for every installed live patch.  postrm disables it, as
# 'kpatch uninstall' does, only once no live patch is left for any kernel.
{package}: maintainer-script-calls-systemctl [postrm:*]
"""


@dataclass(frozen=True)
class PackageSpec:
    """What to package: a built livepatch module and the package's identity.

    *description* is the synopsis on its first line, then optional longer
    text (paragraphs separated by empty lines; lines that start with a space
    are shown verbatim).  *module_prefix* is the part of the module name
    every build of this patch shares (the name minus its build suffix); the
    modules of older builds it names are removed once the new one replaced
    them.  None: the module's own name.
    """

    module: Path
    release: str
    kernel_version: str
    version: str
    description: str
    maintainer: str = DEFAULT_MAINTAINER
    module_prefix: Optional[str] = None


def write_package(spec: PackageSpec, output_dir: Path, workdir: Path) -> Path:
    """Build ``output_dir/pykpatch-patch-<release>_<version>_amd64.deb``.

    :param spec: the module and the package's identity, checked first
    :param output_dir: where the .deb goes (created if missing)
    :param workdir: where the package tree is assembled (and removed again)
    :returns: the path of the .deb
    :raises InputError: *spec* is unusable (one line saying why)
    :raises KpatchError: dpkg-deb is missing or fails
    """
    info = check_spec(spec)
    dpkg_deb = require_tool("dpkg-deb", "dpkg")
    output_dir.mkdir(parents=True, exist_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    output = output_dir / deb_file_name(spec)
    with tempfile.TemporaryDirectory(prefix="debpackage-", dir=workdir) as tmp:
        root = Path(tmp) / package_name(spec.release)
        _write_tree(root, spec, info)
        run([dpkg_deb, "--build", "--root-owner-group", root, output],
            what=f"dpkg-deb --build of {output.name}")
    return output


def package_name(release: str) -> str:
    return PACKAGE_PREFIX + release


def deb_file_name(spec: PackageSpec) -> str:
    """``<package>_<version>_<arch>.deb``, without the epoch (as dpkg-name names it)."""
    version = spec.version.partition(":")[2] or spec.version
    return f"{package_name(spec.release)}_{version}_{ARCHITECTURE}.deb"


def module_prefix(spec: PackageSpec, info: ModuleInfo) -> str:
    """The kernel's spelling of the prefix the module names of all builds share."""
    return kbuild_modname(spec.module_prefix) if spec.module_prefix else info.name


# --- checks -----------------------------------------------------------------------

def check_spec(spec: PackageSpec) -> ModuleInfo:
    """Check every field of *spec*; returns the module's info.  InputError if bad."""
    _check_package_name(spec.release)
    _check_version(spec.version, "package version")
    _check_version(spec.kernel_version, "kernel package version")
    _check_description(spec.description)
    if not _MAINTAINER.fullmatch(spec.maintainer):
        raise InputError(f"maintainer {spec.maintainer!r} is not of the form 'Name <address>'")
    info = _check_module(spec.module, spec.release)
    _check_prefix(spec, info)
    return info


def _check_version(version: str, what: str) -> None:
    if not is_debian_version(version):
        raise InputError(
            f"{what} {version!r} is not a Debian version ([epoch:]upstream[-revision]: "
            "upstream starts with a digit; letters, digits and . + ~ only)")


def _check_package_name(release: str) -> None:
    name = package_name(release)
    if not _PACKAGE_NAME.fullmatch(name):
        raise InputError(
            f"kernel release {release!r} cannot be part of a package name ({name!r}): "
            "only lower-case letters, digits and . + - are allowed")


def _check_description(description: str) -> None:
    lines = description.splitlines()
    synopsis = lines[0].strip() if lines else ""
    if not synopsis:
        raise InputError("the package description needs a synopsis on its first line")
    if len(synopsis) > MAX_SYNOPSIS:
        raise InputError(f"the description's synopsis is {len(synopsis)} characters long; "
                         f"Debian wants at most {MAX_SYNOPSIS}: move the rest to later lines")


def _check_module(path: Path, release: str) -> ModuleInfo:
    if not _MODULE_FILE.fullmatch(path.name):
        raise InputError(f"{path}: a module file name is letters, digits, '-' and '_' "
                         "followed by .ko")
    info = read_module_info(path)
    try:
        require_livepatch(info)
        require_release(info, release)
    except Refusal as err:
        raise InputError(str(err)) from None
    if not _MODULE_NAME.fullmatch(info.name):
        raise InputError(f"{path}: module name {info.name!r} is not letters, digits and '_'")
    return info


def _check_prefix(spec: PackageSpec, info: ModuleInfo) -> None:
    prefix = module_prefix(spec, info)
    if not _MODULE_NAME.fullmatch(prefix):
        raise InputError(f"module prefix {spec.module_prefix!r} is not letters, digits, "
                         "'-' and '_'")
    if not info.name.startswith(prefix):
        raise InputError(f"module prefix {prefix!r} does not begin the module's name "
                         f"{info.name!r}")


# --- the package tree ----------------------------------------------------------------

def module_destination(spec: PackageSpec, store: Path = STORE) -> Path:
    """Where the module is installed: ``kpatch install``'s place for it."""
    return store / spec.release / spec.module.name


def _write_tree(root: Path, spec: PackageSpec, info: ModuleInfo) -> None:
    """Every file of the package below *root*; DEBIAN/ last (it counts the rest)."""
    name = package_name(spec.release)
    _write_file(root, module_destination(spec), spec.module.read_bytes())
    doc = Path("/usr/share/doc") / name
    when = _build_time()
    _write_file(root, doc / "copyright", copyright_text(spec, when).encode())
    # A version without a revision is a native package's: changelog.gz (policy 12.7).
    changelog = "changelog.Debian.gz" if _has_revision(spec.version) else "changelog.gz"
    _write_file(root, doc / changelog, _gzip(changelog_text(spec, when)))
    _write_file(root, Path("/usr/share/lintian/overrides") / name,
                _OVERRIDES.format(package=name).encode())
    control = Path("/DEBIAN")
    _write_file(root, control / "md5sums", md5sums_text(root).encode())
    _write_file(root, control / "control", control_text(spec, installed_size(root)).encode())
    for script, text in maintainer_scripts(spec, info).items():
        _write_file(root, control / script, text.encode(), mode=0o755)


def _write_file(root: Path, path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write *data* at *path* (as installed) below *root*, with *mode*; directories 0755."""
    target = root / path.relative_to("/")
    for directory in reversed(target.relative_to(root).parents):
        (root / directory).mkdir(exist_ok=True)
        (root / directory).chmod(0o755)
    target.write_bytes(data)
    target.chmod(mode)


def _files(root: Path) -> Iterator[Path]:
    """Every file below *root* but DEBIAN/, in a stable order."""
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.relative_to(root).parts[0] != "DEBIAN":
            yield path


def installed_size(root: Path) -> int:
    """KiB the package takes once unpacked, counted as dpkg-gencontrol does:
    each file rounded up to a KiB, and one for each directory."""
    files = list(_files(root))
    directories = {d for f in files for d in f.relative_to(root).parents if d != Path(".")}
    return sum(-(-f.stat().st_size // 1024) for f in files) + len(directories)


def md5sums_text(root: Path) -> str:
    """DEBIAN/md5sums: what ``dpkg --verify`` and debsums check the files against."""
    return "".join(f"{_md5(f)}  {f.relative_to(root)}\n" for f in _files(root))


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def _gzip(text: str) -> bytes:
    # gzip -9n: no file name, no time stamp.
    return gzip.compress(text.encode(), compresslevel=9, mtime=0)


def _has_revision(version: str) -> bool:
    return "-" in version


def _build_time() -> float:
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    return float(epoch) if epoch.isdigit() else time.time()


# --- control and documentation --------------------------------------------------------

def control_text(spec: PackageSpec, size_kib: int) -> str:
    """The DEBIAN/control file."""
    image = f"linux-image-{spec.release}"
    fields: List[Tuple[str, str]] = [
        ("Package", package_name(spec.release)),
        ("Version", spec.version),
        ("Architecture", ARCHITECTURE),
        ("Maintainer", spec.maintainer),
        ("Installed-Size", str(size_kib)),
        ("Depends", f"{image} (= {spec.kernel_version}) | "
                    f"{image}-unsigned (= {spec.kernel_version})"),
        ("Section", "kernel"),
        ("Priority", "optional"),
        ("Description", _control_description(spec)),
    ]
    return "".join(f"{name}: {value}\n" for name, value in fields)


def _control_description(spec: PackageSpec) -> str:
    synopsis, body = _split_description(spec.description, indent=1)
    lines = body + ([""] if body else []) + _wrap(_standard_paragraph(spec), 1)
    return "\n".join([synopsis] + [_continuation(line) for line in lines])


def _continuation(line: str) -> str:
    """One line of the extended description (Debian policy 5.6.13)."""
    if not line:
        return " ."
    # " ." plus more is reserved; two spaces show the line verbatim.
    return ("  " if line.startswith(".") else " ") + line


def _standard_paragraph(spec: PackageSpec) -> str:
    return (f"A live patch for Linux {spec.release} (linux-image-{spec.release} "
            f"{spec.kernel_version}), applied to that kernel while it runs, and at each "
            "boot, by pykpatch's kpatch command.")


def _split_description(description: str, indent: int) -> Tuple[str, List[str]]:
    """The synopsis and the longer text, wrapped to fit 80 columns after *indent*.

    Empty lines (paragraph breaks) and lines that start with a space
    (verbatim) are kept as they are; leading and trailing empty lines go.
    """
    first, *rest = description.splitlines()
    body: List[str] = []
    for line in (line.rstrip().expandtabs() for line in rest):
        if not line or line[0] == " ":
            body.append(line)
        else:
            body += _wrap(line, indent)
    while body and not body[0]:
        body.pop(0)
    while body and not body[-1]:
        body.pop()
    return first.strip(), body


def _wrap(text: str, indent: int) -> List[str]:
    return textwrap.wrap(text, _LINE_WIDTH - indent,
                         break_long_words=False, break_on_hyphens=False)


def copyright_text(spec: PackageSpec, when: float) -> str:
    """A machine-readable copyright file: the module is GPL-2, as the kernel."""
    year = datetime.fromtimestamp(int(when), timezone.utc).year
    return _COPYRIGHT.format(package=package_name(spec.release), release=spec.release,
                             year=year)


def changelog_text(spec: PackageSpec, when: float) -> str:
    """One changelog entry for this version: the description, dated *when*."""
    synopsis, body = _split_description(spec.description, indent=4)
    lines = ["  * " + line if n == 0 else "    " + line
             for n, line in enumerate(_wrap(synopsis, 4))]
    lines += ["    " + line if line else "" for line in body]
    date = email.utils.format_datetime(datetime.fromtimestamp(int(when), timezone.utc))
    return (f"{package_name(spec.release)} ({spec.version}) unstable; urgency=medium\n\n"
            + "\n".join(lines)
            + f"\n\n -- {spec.maintainer}  {date}\n")


# --- maintainer scripts ----------------------------------------------------------------

def maintainer_scripts(spec: PackageSpec, info: ModuleInfo,
                       host: Optional[Host] = None) -> Dict[str, str]:
    """The preinst, postinst, prerm and postrm of *spec*'s package.

    The paths (store, sysfs, unit) are *host*'s: this machine's by default,
    those of a host under a test directory otherwise.
    """
    host = host or Host()
    values = {
        "PACKAGE": package_name(spec.release),
        "RELEASE": spec.release,
        "MODULE_FILE": str(module_destination(spec, host.store)),
        "MODULE_NAME": info.name,
        "MODULE_PREFIX": module_prefix(spec, info),
        "STORE": str(host.store),
        "UNIT_FILE": str(host.unit_dir / UNIT_NAME),
        "SYSFS_LIVEPATCH": str(host.livepatch),
        "SYSFS_MODULE": str(host.sys_module),
        "ATTR_ENABLED": ATTR_ENABLED,
        "ATTR_TAINT": ATTR_TAINT,
        "TAINT_LIVEPATCH": TAINT_LIVEPATCH,
    }
    return {name: _fill(_template(name), values) for name in SCRIPTS}


def _template(name: str) -> str:
    return resources.files("pykpatch").joinpath("data").joinpath(_TEMPLATE_DIR).joinpath(name).read_text()


def _fill(template: str, values: Dict[str, str]) -> str:
    """Replace each @NAME@; the values go between single quotes in the scripts."""
    for name, value in values.items():
        if "'" in value or "\n" in value:
            raise ValueError(f"{name} value {value!r} cannot be quoted in a script")
        template = template.replace(f"@{name}@", value)
    left = _PLACEHOLDER.search(template)
    if left:
        raise ValueError(f"maintainer script template: {left.group()} has no value")
    return template

