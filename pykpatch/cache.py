"""What pykpatch keeps: downloads and prepared trees between runs, and what
one run has read from a file that it would otherwise read again."""

import functools
import os
from pathlib import Path
from typing import Callable, Optional, Tuple, TypeVar, Union

T = TypeVar("T")

ENV_CACHE = "PYKPATCH_CACHE"


def cache_dir(override: Optional[Path] = None) -> Path:
    """The cache root: *override*, else ``$PYKPATCH_CACHE``, else ``~/.cache/pykpatch``."""
    if override is not None:
        root = Path(override)
    elif os.environ.get(ENV_CACHE):
        root = Path(os.environ[ENV_CACHE])
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = (Path(xdg) if xdg else Path.home() / ".cache") / "pykpatch"
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve()


def made_once(target: Path, write: Callable[[Path], None]) -> Path:
    """*target*, written by *write* unless it exists; never left half-written."""
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    try:
        write(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.rename(target)
    return target


def once_per_file_version(read: Callable[[str], T]) -> Callable[[Union[str, Path]], T]:
    """*read*(path), called again only when the file's size or modification time changed.

    The result is shared between callers: they must not modify it.  A file
    that cannot be stat'ed raises OSError, as *read* itself would.
    """
    @functools.lru_cache(maxsize=4)
    def cached(path: str, _version: Tuple[int, int]) -> T:
        return read(path)

    @functools.wraps(read)
    def call(path: Union[str, Path]) -> T:
        stat = os.stat(path)
        return cached(str(Path(path).resolve()), (stat.st_mtime_ns, stat.st_size))

    return call
