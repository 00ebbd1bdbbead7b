"""``--ray``: the Ray backend of the embedding loop for a command, or None for a local run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .console import status

if TYPE_CHECKING:
    from ..store.reuse import Encoder


def ray_encoder(address: str | None, actors: int | None, decode_cpus: float, actor_cpus: float | None,
                quiet: bool) -> Encoder | None:
    """Connect to the cluster ``--ray`` names (one-line UsageError without Ray or a cluster)."""
    if address is None:
        return None
    from ..scale import RayEncoder, RaySettings, connect, require_ray

    require_ray()
    with status(f"connecting to Ray ({address})", quiet):
        connect(address)
    return RayEncoder(RaySettings(actors=actors, decode_cpus=decode_cpus, actor_cpus=actor_cpus))
