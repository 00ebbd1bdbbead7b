"""The model's inference transform, split at the CPU/device boundary.

Decode workers run the PIL steps (resize, crop) and ship uint8 pixels; ``ToTensor``'s /255 and
``Normalize`` run in the main process on the model's device. This is also where the decode-size
setting (``fast_decode``) turns into a JPEG draft size.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

MAX_ASPECT = 4


class Preprocessor:
    """The model's own inference transform, split so workers ship uint8 pixels and the
    normalisation runs in the main process (on the GPU when there is one)."""

    def __init__(self, transform: Callable) -> None:
        from torchvision.transforms import Normalize, ToTensor

        steps = list(getattr(transform, "transforms", []))
        to_tensor = [i for i, s in enumerate(steps) if isinstance(s, ToTensor)]
        self.transform = transform
        # A transform already split in two (e.g. zeroshot.hf's): uint8_pixels, then normalize.
        self.presplit = callable(getattr(transform, "uint8_pixels", None)) and callable(
            getattr(transform, "normalize", None))
        self.split = bool(to_tensor) and to_tensor[0] == len(steps) - 2 and isinstance(steps[-1], Normalize)
        if self.split:
            self.pil_steps = steps[: to_tensor[0]]
            self.mean = torch.tensor(steps[-1].mean, dtype=torch.float32).view(1, -1, 1, 1)
            self.std = torch.tensor(steps[-1].std, dtype=torch.float32).view(1, -1, 1, 1)
        self.input_size = getattr(transform, "input_size", None) if self.presplit else _input_size(steps)
        # Resize(shorter side) then CenterCrop keeps only the central square, so a strip like
        # 20x100000 may be cut to a bounded aspect before resizing: same pixels, bounded memory.
        self.crop_extremes = (
            len(steps) >= 2
            and type(steps[0]).__name__ == "Resize"
            and isinstance(getattr(steps[0], "size", None), (int, list, tuple))
            and (isinstance(steps[0].size, int) or len(steps[0].size) == 1)
            and type(steps[1]).__name__ == "CenterCrop"
        )

    def pixels(self, img: Image.Image) -> torch.Tensor:
        """Worker side: uint8 ``[3, H, W]`` after resize/crop (or the full float transform)."""
        if self.presplit:
            return self.transform.uint8_pixels(img)
        if self.crop_extremes:
            img = crop_extreme_aspect(img)
        if not self.split:
            return self.transform(img)
        for step in self.pil_steps:
            img = step(img)
        return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()

    def finish(self, batch: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Main side: to the device, then exactly ToTensor's /255 and Normalize."""
        batch = batch.to(device, non_blocking=True)
        if self.presplit:
            return self.transform.normalize(batch)
        if not self.split:
            return batch
        mean, std = self.mean.to(device), self.std.to(device)
        return batch.float().div_(255).sub_(mean).div_(std)


    def draft_size(self, fast_decode: bool) -> int | None:
        """Smallest side a JPEG may be DCT-decoded to: twice the model input with
        ``fast_decode`` (so the final resize still sees enough pixels), None for exact decoding."""
        return 2 * self.input_size if fast_decode and self.input_size else None


def crop_extreme_aspect(img: Image.Image, max_aspect: int = MAX_ASPECT) -> Image.Image:
    """Central part of an image longer than ``max_aspect`` times its width (or the reverse).

    Only used before "resize the shorter side, then centre-crop", which discards everything
    outside the central square anyway; without it a 1x100000 strip is upscaled to gigabytes.
    """
    width, height = img.size
    short, long = min(width, height), max(width, height)
    if long <= max_aspect * short:
        return img
    keep = max_aspect * short
    start = (long - keep) // 2
    box = (start, 0, start + keep, height) if width > height else (0, start, width, start + keep)
    return img.crop(box)


def _input_size(steps: list) -> int | None:
    for step in reversed(steps):
        size = getattr(step, "size", None)
        if isinstance(size, int):
            return size
        if isinstance(size, (tuple, list)) and size:
            return int(max(size))
    return None

