"""The embedding key: everything that determines an image's vector.

Two vectors are only ever compared, reused or returned together when their keys are equal: the
same model, the same weights (file identity, not just a name), the same preprocessing, the same
decode setting and the same precision. A change in any of them makes a new key, never a mix.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:
    from ..models import LoadedModel

# Bump when zeroshot's own image pipeline (decode, draft scale, crop, preprocessing split)
# changes what a vector is for the same model: every stored key becomes a new one.
PIPELINE_VERSION = 1
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
RANDOM_WEIGHTS = "random-init"


def preprocess_identity(transform: Callable) -> str:
    """The transform's ``repr`` (every step with its parameters), without memory addresses
    (a bare function prints as ``<function f at 0x7f...>``, different in every process)."""
    return _ADDRESS.sub("", repr(transform)).strip()


@dataclass(frozen=True)
class EmbeddingKey:
    """What determines a stored vector. ``pretrained`` is how the weights were named (shown to
    people); ``weights`` is their identity and is what counts. ``digest`` names the key."""

    model: str
    weights: str
    preprocess: str
    decode: str  # "fast" (reduced-scale JPEG decode) or "exact"
    precision: str
    pipeline: int = PIPELINE_VERSION
    pretrained: str = ""

    @property
    def identity(self) -> dict:
        fields = asdict(self)
        fields.pop("pretrained")  # a spelling of the weights, not their identity
        return fields

    @property
    def digest(self) -> str:
        blob = json.dumps(self.identity, ensure_ascii=False, sort_keys=True).encode("utf-8")
        return hashlib.sha256(blob).hexdigest()

    @property
    def id(self) -> str:
        """The short id shown by ``zeroshot store info`` (first 12 hex digits of the digest)."""
        return self.digest[:12]

    def describe(self) -> str:
        weights = self.pretrained or self.weights
        return f"{self.model} ({weights}), {self.decode} decode, {self.precision}"


def embedding_key(loaded: LoadedModel, fast_decode: bool) -> EmbeddingKey:
    """The key of the vectors ``loaded`` makes with this decode setting.

    Random weights (no ``--pretrained``) are refused: every load draws new ones under the same
    name, so their vectors must never be stored."""
    if loaded.weights_id == RANDOM_WEIGHTS:
        raise UsageError("the embedding store needs pretrained weights: a model with random weights (empty "
                         "--pretrained) is different at every load; pass a tag or a checkpoint file")
    return EmbeddingKey(
        model=loaded.name,
        weights=loaded.weights_id,
        preprocess=preprocess_identity(loaded.preprocess),
        decode="fast" if fast_decode else "exact",
        precision=loaded.image_numerics,
        pretrained=loaded.pretrained,
    )
