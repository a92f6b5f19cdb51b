"""Where pykpatch keeps downloads and prepared trees between runs."""

import os
from pathlib import Path
from typing import Optional

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
