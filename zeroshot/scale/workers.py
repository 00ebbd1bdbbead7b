"""What runs on the cluster: decode tasks (a function) and encoding actors (a callable class).

A dataset row is one batch of the local run: ``{"batch": k, "payload": bytes}``. Decode tasks
turn the pickled inputs of a batch into uint8 pixels plus per-input errors with the local
decoding code (:func:`zeroshot.data.loader.decode_here`: same checks, same reason codes; any
failure is an error entry, never a failed task). Actors hold the model once and turn pixels into
normalised embeddings with the local encoding code (:func:`zeroshot.encode.vision.encode_images`).
"""

from __future__ import annotations

import copy
import os
import pickle
import signal
from dataclasses import replace
from typing import Any

import numpy as np

from ..data.loader import WORKER_NICENESS_ON_CPU, decode_here, prepare_decoder
from ..models import LoadedModel

# Test hook: the first actor that encodes a second batch kills its own process (SIGKILL) once
# per run, leaving a marker in this folder (tests/test_ray.py: a lost actor costs nothing).
FAULT_ENV = "ZEROSHOT_RAY_KILL_ONE_ACTOR"
_prepared = False


def portable(loaded: LoadedModel) -> LoadedModel:
    """What actors receive (once, through the object store): the fp32 weights on the CPU, the
    preprocessing, and the class weights for ``auto``'s first-batch check; no tokenizer."""
    import torch

    net = loaded.model
    if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in net.parameters()):
        net = copy.deepcopy(net).to("cpu", torch.float32)
    weights = loaded.check_weights.detach().float().cpu() if loaded.check_weights is not None else None
    return replace(loaded, model=net, reduced=None, tokenizer=None, device=torch.device("cpu"),
                   check_weights=weights, checked={}, notes=[], class_token_shortcut=None,
                   runtime="torch", image_runtime=None)  # an actor compiles its own (OpenVINO is not portable)


def decode_rows(rows: dict[str, np.ndarray], pre: Any, max_pixels: int | None, fast_decode: bool,
                low_priority: bool) -> dict[str, np.ndarray]:
    """Decode task: every row's inputs -> ``(good positions, uint8 pixels [n,3,H,W] | None,
    [(position, "code: detail")])``, pickled."""
    global _prepared
    if not _prepared:
        prepare_decoder(WORKER_NICENESS_ON_CPU if low_priority else 0)
        _prepared = True
    out = []
    for payload in rows["payload"]:
        batch = decode_here(pickle.loads(payload), pre, max_pixels, fast_decode)
        pixels = None if batch.pixels is None else batch.pixels.numpy()
        out.append(pickle.dumps((batch.indices, pixels, batch.errors), protocol=5))
    return {"batch": rows["batch"], "payload": np.array(out, dtype=object)}


class EncodeRows:
    """Encoding actor: the model once per actor, on its GPU or CPU, at the precision
    :func:`zeroshot.models.relocate` chooses there (the same logic as a local run)."""

    def __init__(self, shipped: list, gpu: bool, precision: str, threads: int | None) -> None:
        import ray
        import torch

        from ..data.preprocess import Preprocessor
        from ..models import relocate

        if threads or not gpu:  # a CPU actor uses the node's cores, as a local run does
            torch.set_num_threads(threads or len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                  else threads or os.cpu_count() or 1)
        self.loaded = relocate(ray.get(shipped[0]), "cuda" if gpu else "cpu", precision)
        self.pre = Preprocessor(self.loaded.preprocess)
        self.encoded = 0

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from ..encode.vision import encode_images

        out = []
        for payload in rows["payload"]:
            indices, pixels, errors = pickle.loads(payload)
            vectors, broken = None, False
            if pixels is not None:
                batch = self.pre.finish(torch.from_numpy(pixels), self.loaded.device)
                features = encode_images(self.loaded, batch).cpu()
                broken = not bool(torch.isfinite(features).all())
                vectors = features.numpy()
            self.encoded += 1
            _maybe_die(self.encoded)
            out.append(pickle.dumps((indices, vectors, errors, broken, self.loaded.precision, list(self.loaded.notes)),
                                    protocol=5))
        return {"batch": rows["batch"], "payload": np.array(out, dtype=object)}


def _maybe_die(encoded: int) -> None:
    folder = os.environ.get(FAULT_ENV)
    if not folder or encoded < 2 or not os.path.isdir(folder):
        return
    try:
        fd = os.open(os.path.join(folder, "killed"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
