"""The Ray backend of the one embedding loop: same signature and contract as
:func:`zeroshot.encode.embed.embed_images`, so every command's downstream code is unchanged.

The driver splits the inputs into the batches a local run would make (same composition, so the
same floats), ships each batch's inputs (paths, not pixels) to a decode task, the pixels to an
encoding actor, and yields the results in input order: a batch that arrives early waits for the
ones before it, and a batch that arrives twice (an actor task retried after its actor died) is
taken once. Model weights travel once through the object store; no node reads the checkpoint
file or downloads anything.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator, Sequence
from typing import Any

from ..data.preprocess import Preprocessor
from ..encode.embed import Embedded, EmbedSettings, known_failures, with_known
from ..errors import ZeroshotError
from ..models import LoadedModel
from .cluster import RaySettings, require_ray
from .workers import EncodeRows, decode_rows, portable

# A decode process is replaced after this many batches: a decoder that leaks cannot grow forever.
DECODE_CALLS_PER_PROCESS = 1000
# Batches per decode task at most (512 images at the CPU batch size: about a second of one core).
BATCHES_PER_BLOCK = 16


class RayEncoder:
    """``embed_images`` on a Ray cluster (connect first: :func:`zeroshot.scale.connect`)."""

    def __init__(self, settings: RaySettings = RaySettings()) -> None:
        self.settings = settings
        self._shipped: dict[int, Any] = {}  # id(loaded) -> object ref of its portable copy

    def __call__(self, loaded: LoadedModel, inputs: Sequence[Any], settings: EmbedSettings = EmbedSettings(),
                 preprocessor: Preprocessor | None = None) -> Iterator[Embedded]:
        cluster = self.settings.resolved()
        known, todo = known_failures(inputs)
        size = settings.batch_size or cluster.batch_size or 32
        plan = [todo[s:s + size] for s in range(0, len(todo), size)]
        pending = sorted(known)
        for k, (positions, vectors, errors) in self._results(loaded, inputs, plan, settings, preprocessor, cluster):
            indices = [plan[k][j] for j in positions]
            errors = with_known([(plan[k][j], reason) for j, reason in errors], indices, pending, known)
            yield Embedded(indices=indices, embeddings=vectors, errors=errors)
        if pending:
            yield Embedded(errors=[(i, known[i]) for i in pending])

    # ------------------------------------------------------------------------------ helpers

    def _results(self, loaded: LoadedModel, inputs: Sequence[Any], plan: list[list[int]], settings: EmbedSettings,
                 preprocessor: Preprocessor | None, cluster: RaySettings) -> Iterator[tuple[int, tuple]]:
        """``(batch number, (positions, embeddings, errors))`` in batch order, each batch once."""
        import torch

        if not plan:
            return
        dataset = self._dataset(loaded, inputs, plan, settings, preprocessor, cluster)
        ready: dict[int, tuple] = {}
        following = 0  # the next batch to yield
        for row in _rows(dataset):
            k = int(row["batch"])
            if k < following or k in ready:
                continue  # a retried task's second copy
            positions, vectors, errors, broken, precision, notes = pickle.loads(row["payload"])
            if broken:
                from ..encode.text import NonFiniteError

                raise NonFiniteError(loaded, "the image tower")
            _adopt(loaded, precision, notes)
            ready[k] = (positions, None if vectors is None else torch.from_numpy(vectors), errors)
            while following in ready:
                yield following, ready.pop(following)
                following += 1
        if following < len(plan):
            raise ZeroshotError(f"the Ray run returned {following} of {len(plan)} batches; rerun (finished work is "
                                "kept by --resume and the embedding store)")

    def _dataset(self, loaded: LoadedModel, inputs: Sequence[Any], plan: list[list[int]], settings: EmbedSettings,
                 preprocessor: Preprocessor | None, cluster: RaySettings) -> Any:
        ray = require_ray()
        rows = [{"batch": k, "payload": pickle.dumps([inputs[i] for i in batch], protocol=5)}
                for k, batch in enumerate(plan)]
        pre = preprocessor or Preprocessor(loaded.preprocess)
        decoded = ray.data.from_items(rows, override_num_blocks=_blocks(len(rows))).map_batches(
            decode_rows, batch_size=1, batch_format="numpy", num_cpus=cluster.decode_cpus,
            fn_kwargs={"pre": pre, "max_pixels": settings.max_pixels, "fast_decode": settings.fast_decode,
                       "low_priority": not cluster.gpus},
            # Also keeps the tasks apart from the actor pool (different remote args: not fused).
            max_calls=DECODE_CALLS_PER_PROCESS)
        return decoded.map_batches(
            EncodeRows, batch_size=1, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=cluster.actors),
            num_cpus=cluster.actor_cpus, num_gpus=1 if cluster.gpus else 0,
            fn_constructor_kwargs={"shipped": [self._ship(loaded)], "gpu": bool(cluster.gpus),
                                   "precision": _actor_precision(loaded), "threads": None})
        # Ray Data's actor pools restart a lost actor and run its batch again (max_restarts and
        # max_task_retries -1 by default): _results takes each batch once.

    def _ship(self, loaded: LoadedModel) -> Any:
        """The model's weights in the object store, once per model and run."""
        ray = require_ray()
        if id(loaded) not in self._shipped:
            self._shipped[id(loaded)] = ray.put(portable(loaded))
        return self._shipped[id(loaded)]


def _blocks(batches: int) -> int:
    """Input blocks (one decode task each): at most BATCHES_PER_BLOCK batches, and at least two
    per CPU of the cluster so that every node decodes."""
    ray = require_ray()
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return min(batches, max(-(-batches // BATCHES_PER_BLOCK), 2 * cpus))


def _rows(dataset: Any) -> Iterator[dict]:
    """The dataset's rows as they finish; a failure of the Ray run is one line (finished work is
    kept by the journal and the store)."""
    ray = require_ray()
    try:
        yield from dataset.iter_rows()
    except ray.exceptions.RayError as err:
        lines = [line for line in str(err).splitlines() if line.strip() and not line.startswith(("[", " "))]
        raise ZeroshotError(f"the Ray run failed: {(lines[-1] if lines else type(err).__name__)[:300]}") from None


def _actor_precision(loaded: LoadedModel) -> str:
    """What actors are asked for: what the user asked for (chosen on each actor's device as
    locally), or fp32 once the driver decided the image tower runs fp32 (e.g. to continue an
    embedding store held at fp32)."""
    if loaded.checked.get("image") is False:
        return "fp32"
    return loaded.requested or loaded.precision


def _adopt(loaded: LoadedModel, precision: str, notes: list[str]) -> None:
    """The driver's model reports the precision the actors' image towers ran at (it names the
    embedding store's key and the run's summary)."""
    for note in notes:
        if note not in loaded.notes:
            loaded.notes.append(note)
    if precision != loaded.precision:
        loaded.text_precision = loaded.precision_of("text")
        loaded.precision = precision
    loaded.checked.setdefault("image", True)
