"""Debian's archive through an apt state of pykpatch's own.

The host's apt sources name the suites the host runs (a bookworm server
names bookworm), not those of the kernels it builds for: a Debian 12 host
builds for Debian 13's 6.12, a Debian 13 host for Debian 12's 6.1.  The
provider asks an apt state kept in the cache instead, with every suite of
:data:`SUITES` at the Debian mirrors the host's sources already use::

    apt/sources.list   one line per suite
    apt/lists/         the suites' package lists (``apt-get update``)
    apt/cache/         apt's binary caches

Of the host's apt configuration only its sources (the mirrors' addresses)
and its keyrings are read; nothing of it is written.
"""

import fcntl
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Set, Tuple

from pykpatch.errors import KpatchError
from pykpatch.process import require_tool, run

log = logging.getLogger("pykpatch")

# The suites kernels are looked up in.  Security updates reach the
# "-security" suites first; backports carry newer kernel lines.
SUITES = ("bookworm", "bookworm-security", "bookworm-backports",
          "trixie", "trixie-security", "trixie-backports")

# Debian replaces kernels every few weeks and removes the old .debs from the
# mirrors: lists older than this are fetched again before they are read.
LISTS_MAX_AGE = 6 * 3600

KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")

# Debian major version -> codename.
DEBIAN_CODENAMES = {11: "bullseye", 12: "bookworm", 13: "trixie", 14: "forky"}
_CODENAMES = (*DEBIAN_CODENAMES.values(), "sid")

# apt states whose lists this process fetched: every Archive of one cache
# (one per DebianKernel) shares them, and a second fetch would find the same.
_FETCHED_THIS_RUN: Set[Path] = set()


@dataclass(frozen=True)
class Mirrors:
    """Where the host's apt finds Debian: the main archive and its security archive."""

    main: str
    security: Optional[str]

    def uri_of(self, suite: str) -> Optional[str]:
        return self.security if suite.endswith("-security") else self.main


def host_mirrors(sources_dir: Path = Path("/etc/apt")) -> Mirrors:
    """The Debian mirrors the host's apt sources use (one-line and deb822 files).

    :raises KpatchError: no source serves a Debian suite.
    """
    main = security = None
    for uri, suites in apt_sources(sources_dir):
        debian = [s for s in suites if s.split("-")[0] in _CODENAMES]
        if any(s.endswith("-security") for s in debian):
            security = security or uri
        elif debian:
            main = main or uri
    if main is None:
        raise KpatchError(f"no apt source for a Debian suite ({', '.join(_CODENAMES)}) in "
                          f"{sources_dir}; the kernel packages come from a Debian mirror")
    return Mirrors(main, security)


def apt_sources(sources_dir: Path) -> Iterator[Tuple[str, List[str]]]:
    """(URI, suites) of every ``deb`` source in *sources_dir*."""
    one_line = [sources_dir / "sources.list", *sorted(sources_dir.glob("sources.list.d/*.list"))]
    for path in one_line:
        if path.is_file():
            for line in path.read_text().splitlines():
                words = re.sub(r"\[[^]]*\]", "", line).split()
                if len(words) >= 3 and words[0] == "deb":
                    yield words[1], [words[2]]
    for path in sorted(sources_dir.glob("sources.list.d/*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
            if "deb" in fields.get("Types", "").split() and fields.get("Enabled", "yes") != "no":
                for uri in fields.get("URIs", "").split():
                    yield uri, fields.get("Suites", "").split()


class Archive:
    """Package versions and downloads from every suite of :data:`SUITES`."""

    def __init__(self, cache: Path, mirrors: Optional[Mirrors] = None) -> None:
        self.dir = cache / "apt"
        self._mirrors = mirrors

    @property
    def mirrors(self) -> Mirrors:
        if self._mirrors is None:
            self._mirrors = host_mirrors()
        return self._mirrors

    def sources_list(self) -> str:
        signed = f" [signed-by={KEYRING}]" if KEYRING.is_file() else ""
        lines = [f"deb{signed} {self.mirrors.uri_of(suite)} {suite} main"
                 for suite in SUITES if self.mirrors.uri_of(suite)]
        return "\n".join(lines) + "\n"

    def options(self) -> List[str]:
        """apt options that make apt-get/apt-cache use this state and no other."""
        return ["-o", f"Dir::Etc::SourceList={self.dir / 'sources.list'}",
                "-o", "Dir::Etc::SourceParts=/dev/null",
                "-o", f"Dir::State::Lists={self.dir / 'lists'}",
                "-o", f"Dir::Cache={self.dir / 'cache'}",
                "-o", "Dir::State::status=/dev/null",
                "-o", "APT::Architecture=amd64"]

    # -- the lists ------------------------------------------------------------
    def ensure_lists(self, refetch: bool = False) -> None:
        """Fetch the package lists when they are missing, stale, or *refetch*
        (once per process: a second refetch would find the same)."""
        if self._fresh or (not refetch and not self._stale()):
            return
        require_tool("apt-get", "apt")
        for sub in ("lists/partial", "cache/archives/partial"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        with self._locked():
            sources = self.dir / "sources.list"
            if not sources.is_file() or sources.read_text() != self.sources_list():
                sources.write_text(self.sources_list())
            elif not refetch and not self._stale():
                return  # (another process fetched them while this one waited)
            log.info("fetching Debian's package lists (%s)", ", ".join(SUITES))
            run(["apt-get", *self.options(), "-q", "update"], what="apt-get update",
                logfile=self.dir / "update.log")
            (self.dir / "lists" / ".pykpatch-fetched").write_text(f"{time.time()}\n")
        _FETCHED_THIS_RUN.add(self.dir)

    @property
    def _fresh(self) -> bool:
        return self.dir in _FETCHED_THIS_RUN

    def _stale(self) -> bool:
        stamp = self.dir / "lists" / ".pykpatch-fetched"
        sources = self.dir / "sources.list"
        if not stamp.is_file() or not sources.is_file():
            return True
        return time.time() - stamp.stat().st_mtime > LISTS_MAX_AGE \
            or sources.read_text() != self.sources_list()

    def _locked(self):
        return _FileLock(self.dir / "lock")

    # -- questions -------------------------------------------------------------
    def versions(self, package: str) -> List[str]:
        """Versions of *package* in the archive, newest first ([] when none)."""
        self.ensure_lists()
        found = self._madison(package)
        if not found and not self._fresh:
            self.ensure_lists(refetch=True)  # (maybe published since the lists were fetched)
            found = self._madison(package)
        return found

    def _madison(self, package: str) -> List[str]:
        proc = run(["apt-cache", *self.options(), "madison", package], check=False)
        versions = []
        for line in proc.stdout.splitlines():
            parts = [p.strip() for p in line.split("|")]
            if len(parts) >= 2 and parts[0] == package and parts[1] not in versions:
                versions.append(parts[1])
        return sorted(versions, key=version_key, reverse=True)

    def package_names(self, prefix: str) -> List[str]:
        """Names of the packages starting with *prefix*."""
        self.ensure_lists()
        proc = run(["apt-cache", *self.options(), "pkgnames", prefix], check=False)
        return proc.stdout.split()

    def download(self, package: str, version: str, dest: Path, logfile: Path) -> None:
        """``apt-get download package=version`` into *dest*."""
        self.ensure_lists()
        log.info("downloading %s=%s", package, version)
        run(["apt-get", *self.options(), "download", "-q", f"{package}={version}"], cwd=dest,
            what=f"downloading {package} {version}", logfile=logfile)


# Debian policy 5.6.12: [epoch:]upstream[-revision].
_EPOCH = re.compile(r"[0-9]+")
_UPSTREAM = re.compile(r"[0-9][A-Za-z0-9.+~]*")
_UPSTREAM_WITH_HYPHENS = re.compile(r"[0-9][A-Za-z0-9.+~-]*")
_REVISION = re.compile(r"[A-Za-z0-9.+~]+")


def is_debian_version(text: str) -> bool:
    """Whether *text* is a version Debian policy (5.6.12) allows.

    As ``dpkg --validate-version``, but without the colons in the upstream
    part that dpkg still accepts after an epoch and policy no longer allows.
    """
    epoch, colon, rest = text.partition(":")
    if not colon:
        epoch, rest = "", text
    elif not _EPOCH.fullmatch(epoch):
        return False
    upstream, hyphen, revision = rest.rpartition("-")
    if not hyphen:
        return bool(_UPSTREAM.fullmatch(rest))
    return bool(_UPSTREAM_WITH_HYPHENS.fullmatch(upstream) and _REVISION.fullmatch(revision))


def version_key(version: str) -> tuple:
    """Sort key giving Debian's order of versions (as ``dpkg --compare-versions``):
    epoch, then upstream part, then revision; in each part, runs of digits compare
    as numbers, and other characters with ``~`` before the end before letters
    before the rest (6.12.118-1~deb12u1 < 6.12.118-1)."""
    epoch, colon, rest = version.partition(":")
    if not colon:
        epoch, rest = "0", version
    upstream, hyphen, revision = rest.rpartition("-")
    if not hyphen:
        upstream, revision = rest, ""
    return (int(epoch) if epoch.isdigit() else 0, _part_key(upstream), _part_key(revision))


def _part_key(part: str) -> List[tuple]:
    key = []
    for text, digits in re.findall(r"(\D*)(\d*)", part):
        if text or digits:
            key.append(([_char_weight(c) for c in text] + [0], int(digits or 0)))
    # The end of a part sorts like an empty non-digit run and a zero, as in dpkg.
    return key + [([0], 0)]


def _char_weight(c: str) -> int:
    if c == "~":
        return -1
    return ord(c) if c.isalpha() else ord(c) + 256


class _FileLock:
    """An exclusive flock held for a ``with`` block (two builds, one apt state)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> "_FileLock":
        self._fh = open(self.path, "w")
        fcntl.flock(self._fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fh, fcntl.LOCK_UN)
        self._fh.close()
