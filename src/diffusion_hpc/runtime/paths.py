"""Where the project keeps its caches.

``DHPC_CACHE_DIR`` (default: ``$XDG_CACHE_HOME/diffusion_hpc`` or ``~/.cache/diffusion_hpc``) holds
derived, rebuildable data: the Anny model build (``anny/``, about 790 MB, built once on first use,
about 80 s on a 2-core CPU) and similar. Delete it at any time; it is rebuilt on demand.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The project cache directory (not created)."""
    env = os.environ.get("DHPC_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "diffusion_hpc"


def anny_cache_dir() -> Path:
    """Cache directory handed to Anny (``ANNY_CACHE_DIR``) unless the user set that variable."""
    env = os.environ.get("ANNY_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return cache_dir() / "anny"
