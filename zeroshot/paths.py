"""Where zeroshot keeps its caches on disk."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$ZEROSHOT_CACHE_DIR``, else the platform's user cache folder (e.g. ~/.cache/zeroshot)."""
    env = os.environ.get("ZEROSHOT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("zeroshot", appauthor=False))
