"""Scale-out on a Ray cluster (optional extra ``zeroshot[ray]``): the same commands, outputs and
guarantees as a local run, with decoding in Ray tasks and encoding in a Ray actor pool.

    from zeroshot.scale import RaySettings, connect, RayEncoder
    connect("auto")                                  # RAY_ADDRESS, a `ray start` cluster here, or a local Ray
    clf = ZeroShotClassifier(labels, model=loaded, encoder=RayEncoder(RaySettings()))

:class:`RayEncoder` has the signature and contract of :func:`zeroshot.encode.embed.embed_images`
(batches in input order, every input once, errors at their place), so classify, eval, index,
the embedding store and ``--resume`` run unchanged on top of it. The library never imports this
package; nothing here imports Ray before it is used.
"""

from __future__ import annotations

from .cluster import RaySettings, connect, require_ray
from .encoder import RayEncoder

__all__ = ["RayEncoder", "RaySettings", "connect", "require_ray"]
