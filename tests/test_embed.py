"""``zeroshot.encode.embed.embed_images``, the one image -> embedding loop, tested directly:
every input comes out exactly once, in ascending index order, whatever the batch size and
worker count; embeddings equal open_clip's own; images in memory work the same way."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import zeroshot
from zeroshot.data.discover import Source
from zeroshot.encode.embed import Embedded, EmbedSettings, embed_images
from zeroshot.errors import DECODE_ERROR, NOT_FOUND, UNREADABLE, ImageError

from conftest import make_image

TOLERANCE = 1e-5


def reference_embeddings(loaded, images: list[Image.Image]) -> torch.Tensor:
    """open_clip's own path: ``preprocess`` per image, ``encode_image``, L2-normalised."""
    pixels = torch.stack([loaded.preprocess(img) for img in images])
    with torch.inference_mode():
        features = loaded.model.encode_image(pixels).float()
    return torch.nn.functional.normalize(features, dim=-1)


def flatten(batches: list[Embedded]) -> tuple[list[int], dict[int, torch.Tensor], dict[int, str]]:
    """Check the batch contract; return every index in output order, embeddings and errors by index."""
    order: list[int] = []
    vectors: dict[int, torch.Tensor] = {}
    errors: dict[int, str] = {}
    for batch in batches:
        assert len(batch) > 0
        assert batch.indices == sorted(batch.indices)
        assert [i for i, _ in batch.errors] == sorted(i for i, _ in batch.errors)
        if batch.indices:
            assert batch.embeddings is not None and batch.embeddings.shape[0] == len(batch.indices)
            assert batch.embeddings.dtype == torch.float32 and batch.embeddings.device.type == "cpu"
            vectors.update(zip(batch.indices, batch.embeddings))
        else:
            assert batch.embeddings is None
        errors.update(batch.errors)
        order += sorted(batch.indices + [i for i, _ in batch.errors])
    return order, vectors, errors


@pytest.fixture()
def mixed(tmp_path) -> tuple[list[Source], dict[int, str], list[int]]:
    """Sources with discovery errors (first and last too), unreadable files and good files;
    returns the sources, the expected error code by index, and the good indices."""
    good = lambda name, colour: Source(str(make_image(tmp_path / name, colour)),  # noqa: E731
                                       str(tmp_path / name))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image at all")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    missing = Source("gone.jpg", "gone.jpg", ImageError(NOT_FOUND, "no such file or directory"))
    locked = Source("locked.png", "locked.png", ImageError(UNREADABLE, "Permission denied"))
    sources = [
        missing,                                    # 0 discovery error first
        good("a.png", (200, 30, 30)),               # 1
        Source(str(broken), str(broken)),           # 2 unreadable file
        good("b.jpg", (30, 200, 30)),               # 3
        locked,                                     # 4 discovery error between good files
        locked,                                     # 5 ... two in a row
        good("c.png", (30, 30, 200)),               # 6
        Source(str(empty), str(empty)),             # 7 unreadable file
        good("d.webp", (240, 240, 20)),             # 8
        missing,                                    # 9 discovery error last
    ]
    expected_errors = {0: NOT_FOUND, 2: None, 4: UNREADABLE, 5: UNREADABLE, 7: None, 9: NOT_FOUND}
    return sources, expected_errors, [1, 3, 6, 8]


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("batch_size", [1, 2, 3, 64])
def test_every_input_once_in_ascending_order(tiny_loaded, mixed, batch_size, workers):
    sources, expected_errors, good = mixed
    batches = list(embed_images(tiny_loaded, sources, EmbedSettings(batch_size=batch_size, workers=workers)))

    order, vectors, errors = flatten(batches)
    assert order == list(range(len(sources)))  # every input exactly once, ascending across batches
    assert sorted(vectors) == good
    assert sorted(errors) == sorted(expected_errors)
    for index, code in expected_errors.items():
        if code is not None:
            assert errors[index] == str(sources[index].error)
        else:
            assert errors[index].split(":")[0] in ("not_an_image", "empty", DECODE_ERROR, "truncated"), errors[index]

    images = [Image.open(sources[i].fs_path).convert("RGB") for i in good]
    reference = reference_embeddings(tiny_loaded, images)
    got = torch.stack([vectors[i] for i in good])
    torch.testing.assert_close(got, reference, atol=TOLERANCE, rtol=0)
    assert torch.allclose(got.norm(dim=-1), torch.ones(len(good)), atol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_only_errors_and_nothing(tiny_loaded, tmp_path, batch_size):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"junk")
    missing = Source("gone.jpg", "gone.jpg", ImageError(NOT_FOUND, "no such file"))
    sources = [missing, Source(str(broken), str(broken)), missing]
    order, vectors, errors = flatten(list(embed_images(tiny_loaded, sources, EmbedSettings(batch_size, 0))))
    assert order == [0, 1, 2] and not vectors and set(errors) == {0, 1, 2}

    only_known = list(embed_images(tiny_loaded, [missing, missing], EmbedSettings(batch_size, 1)))
    assert flatten(only_known)[0] == [0, 1]
    assert list(embed_images(tiny_loaded, [], EmbedSettings(batch_size, 0))) == []


@pytest.mark.parametrize("batch_size", [1, 2, 64])
def test_images_in_memory(tiny_loaded, batch_size):
    rgb = [_image(c, (70 + 9 * k, 50)) for k, c in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)])]
    grey = _image((90, 90, 90), (40, 64)).convert("L")
    array = np.asarray(_image((240, 240, 20), (48, 48)), dtype=np.uint8)  # H x W x C uint8
    inputs = [rgb[0], array, rgb[1], "not an image", grey, rgb[2]]

    order, vectors, errors = flatten(list(embed_images(tiny_loaded, inputs, EmbedSettings(batch_size, 0))))
    assert order == list(range(len(inputs)))
    assert list(errors) == [3] and errors[3].startswith(f"{DECODE_ERROR}: ")
    good = [0, 1, 2, 4, 5]
    reference = reference_embeddings(tiny_loaded, [rgb[0], Image.fromarray(array), rgb[1], grey, rgb[2]])
    torch.testing.assert_close(torch.stack([vectors[i] for i in good]), reference, atol=TOLERANCE, rtol=0)


def test_public_name():
    assert zeroshot.embed_images is embed_images and zeroshot.Embedded is Embedded


def _image(colour, size) -> Image.Image:
    img = Image.new("RGB", size, colour)
    for x in range(0, size[0], 7):
        for y in range(0, size[1], 5):
            img.putpixel((x, y), tuple(255 - c for c in colour))
    return img
