"""Two versions of Debian's ``linux-source`` and the files that differ.

The kernel source is a tarball inside the ``linux-source-<series>`` package.
Each tarball is hashed member by member once (one streaming pass, nothing
unpacked; the hashes are cached beside it), and only the members that differ
are extracted.  Cache layout (under the pykpatch cache)::

    sources/linux-source-6.1_6.1.192-2.tar.xz        taken out of the .deb once
    sources/linux-source-6.1_6.1.192-2.tar.sha1.json  its members' hashes
    sources/linux-source-6.1_6.1.192-2.changelog.gz   the package's changelog.Debian.gz
"""

import gzip
import hashlib
import json
import logging
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from pykpatch.errors import KpatchError
from pykpatch.process import require_tool, run
from pykpatch.provider.debian import DebianKernel

log = logging.getLogger("pykpatch")


@dataclass(frozen=True)
class SourceVersion:
    """One version of ``linux-source-<series>``, as a cached tarball."""

    package: str
    version: str
    deb: Path
    dir: Path

    @property
    def stem(self) -> str:
        return f"{self.package}_{self.version}"

    @property
    def tarball(self) -> Path:
        return self.dir / f"{self.stem}.tar.xz"

    @property
    def changelog_path(self) -> Path:
        return self.dir / f"{self.stem}.changelog.gz"


@dataclass
class ChangedFiles:
    """Paths (relative to the tree's top) that differ between two versions."""

    modified: List[str] = field(default_factory=list)
    added: List[str] = field(default_factory=list)
    deleted: List[str] = field(default_factory=list)


def sources_dir(kernel: DebianKernel) -> Path:
    d = kernel.cache / "sources"
    d.mkdir(parents=True, exist_ok=True)
    return d


def source_version(kernel: DebianKernel, version: str) -> SourceVersion:
    """*version* of the kernel's ``linux-source`` package, downloaded if needed."""
    for tool, package in (("dpkg-deb", "dpkg"), ("xz", "xz-utils"), ("tar", "tar"),
                          ("diff", "diffutils")):
        require_tool(tool, package)
    package = kernel.release.package_names()["source"]
    if version == kernel.packages.versions["source"]:
        deb = kernel.deb("source")
    else:
        deb = kernel.debs_dir / f"{package}_{version.replace(':', '%3a')}_all.deb"
        if not deb.is_file():
            kernel.archive.download(package, version, kernel.debs_dir,
                                    kernel.cache / "logs" / "download.log")
        if not deb.is_file():
            raise KpatchError(f"apt-get download did not produce {deb.name}")
    return SourceVersion(package, version, deb, sources_dir(kernel))


def ensure_tarball(source: SourceVersion) -> Path:
    """The kernel tarball of *source*, taken out of its .deb once."""
    dest = source.tarball
    if not dest.is_file():
        member = f"./usr/src/{source.package}.tar.xz"
        _extract_from_deb(source.deb, member, dest)
    return dest


def changelog_text(source: SourceVersion) -> str:
    """The package's ``changelog.Debian.gz``, decompressed."""
    dest = source.changelog_path
    if not dest.is_file():
        _extract_from_deb(source.deb, f"./usr/share/doc/{source.package}/changelog.Debian.gz", dest)
    return gzip.decompress(dest.read_bytes()).decode("utf-8", errors="replace")


def _extract_from_deb(deb: Path, member: str, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    with open(tmp, "wb") as out:
        fsys = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
        tar = subprocess.run(["tar", "-xO", member], stdin=fsys.stdout, stdout=out,
                             stderr=subprocess.DEVNULL)
        assert fsys.stdout is not None
        fsys.stdout.close()
        unpacked = fsys.wait()
    if unpacked != 0 or tar.returncode != 0:
        tmp.unlink()
        if unpacked != 0 and tar.returncode != 0:
            raise KpatchError(f"{deb} cannot be read (a damaged download? delete it to fetch "
                              "it again)")
        raise KpatchError(f"{deb.name} has no {member}")
    tmp.rename(dest)


def member_hashes(source: SourceVersion) -> Dict[str, str]:
    """sha1 of every regular file of the tarball, by path below its top directory."""
    cached = source.dir / f"{source.stem}.tar.sha1.json"
    try:
        return json.loads(cached.read_text())
    except (OSError, ValueError):
        pass
    tarball = ensure_tarball(source)
    log.info("hashing the files of %s (once)", tarball.name)
    hashes = {}
    xz = subprocess.Popen(["xz", "-dc", str(tarball)], stdout=subprocess.PIPE)
    try:
        with tarfile.open(fileobj=xz.stdout, mode="r|") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                f = tar.extractfile(info)
                assert f is not None
                hashes[info.name.split("/", 1)[1]] = hashlib.sha1(f.read()).hexdigest()
    except tarfile.TarError as err:
        xz.kill()
        xz.wait()
        tarball.unlink()
        raise KpatchError(f"{tarball.name} is damaged ({err}); removed, run again") from None
    if xz.wait() != 0:
        tarball.unlink()
        raise KpatchError(f"xz could not decompress {tarball.name}; removed, run again")
    tmp = cached.with_name(cached.name + ".tmp")
    tmp.write_text(json.dumps(hashes, sort_keys=True))
    tmp.replace(cached)
    return hashes


def changed_files(old: Dict[str, str], new: Dict[str, str]) -> ChangedFiles:
    return ChangedFiles(
        modified=sorted(p for p in old if p in new and old[p] != new[p]),
        added=sorted(p for p in new if p not in old),
        deleted=sorted(p for p in old if p not in new),
    )


def extract_members(source: SourceVersion, paths: List[str], dest: Path) -> Path:
    """Extract *paths* (below the top directory) of *source* into *dest*, once."""
    stamp = dest / ".complete"
    wanted = "\n".join(sorted(paths))
    if stamp.is_file() and stamp.read_text() == wanted:
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    if paths:
        top = source.package  # the tarball's top directory: linux-source-6.1/
        listing = dest.parent / (dest.name + ".members")
        listing.write_text("".join(f"{top}/{p}\n" for p in sorted(paths)))
        run(["tar", "-xJf", ensure_tarball(source), "-C", dest, "--strip-components=1",
             "-T", listing], what=f"extracting the changed files of {source.stem}")
        listing.unlink()
    stamp.write_text(wanted)
    return dest


def unified_diff(path: str, old_root: Path, new_root: Path, header: str = "") -> Optional[str]:
    """``diff -u`` of one file as a -p1 patch (None when the two are the same)."""
    old, new = old_root / path, new_root / path
    proc = subprocess.run(["diff", "-u", "--label", f"a/{path}", "--label", f"b/{path}",
                           str(old) if old.is_file() else "/dev/null",
                           str(new) if new.is_file() else "/dev/null"],
                          capture_output=True, text=True, errors="replace")
    if proc.returncode == 0:
        return None
    if proc.returncode != 1:
        raise KpatchError(f"diff of {path} failed: {proc.stderr.strip()}")
    return header + proc.stdout
