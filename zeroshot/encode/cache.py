"""Class weights on disk, keyed by everything that determines them.

An entry is a small torch file (``weights`` tensor and the label list) written atomically; a
damaged or unreadable entry is rebuilt, never fatal, and a full disk only costs a warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from .._version import __version__
from ..errors import ZeroshotWarning
from ..models import LoadedModel
from ..paths import default_cache_dir

CACHE_FORMAT = 1


class ClassWeightCache:
    """Class weights on disk, keyed by everything that determines them."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = Path(directory) if directory else default_cache_dir() / "class-weights"

    def key(self, loaded: LoadedModel, labels: Sequence[str], templates: Sequence[str]) -> str:
        import open_clip

        identity = {
            "format": CACHE_FORMAT,
            "model": loaded.name,
            "weights": loaded.weights_id,
            "labels": list(labels),
            "templates": list(templates),
            "precision": loaded.precision_of("text"),
            "device": loaded.device.type,
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
            "zeroshot": __version__,
        }
        blob = json.dumps(identity, ensure_ascii=False, sort_keys=True).encode("utf-8")
        return hashlib.sha256(blob).hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.pt"

    def get(self, key: str, labels: Sequence[str]) -> torch.Tensor | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            weights = entry["weights"]
            if list(entry["labels"]) != list(labels) or weights.shape[0] != len(labels):
                return None
            return weights
        except Exception:  # noqa: BLE001 - a damaged cache entry is rebuilt, never fatal
            return None

    def put(self, key: str, labels: Sequence[str], weights: torch.Tensor) -> None:
        """Store an entry atomically. Failing to (a full disk, a read-only folder) only costs a
        warning: the run goes on and no temporary file is left behind."""
        tmp = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".", suffix=".tmp")
            with os.fdopen(fd, "wb") as handle:
                torch.save({"weights": weights.contiguous(), "labels": list(labels)}, handle)
            os.replace(tmp, self.path(key))
        except (OSError, RuntimeError) as err:  # torch.save reports write failures as RuntimeError
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            reason = getattr(err, "strerror", None) or str(err).splitlines()[0]
            warnings.warn(f"could not write the class-weight cache in {self.directory} ({reason}); "
                          "continuing without caching", CacheWarning, stacklevel=2)


class CacheWarning(ZeroshotWarning):
    """The class-weight cache could not be written (the run is not affected)."""
