"""Image side: preprocessed pixels -> normalised image embeddings.

A CLIP vision transformer with class-token pooling only reads the class token after its last
block. Every token still feeds the last block's attention as keys and values, but its queries,
attention output, MLP and final norm are needed for the class token alone, so we compute them
only for that row: about 1/13 less work for ViT-B/32 (more for short grids) and exact to float
tolerance. Towers where this does not hold (average or attentional pooling, timm or ResNet
towers, cross-attention blocks) run the ordinary ``encode_image``; the first batch of every
model is checked against the ordinary forward and a disagreement switches the shortcut off.
"""

from __future__ import annotations

import torch

from ..models import LoadedModel
from ..precision import MIN_COSINE
from ..scoring import normalize


def supports_class_token_shortcut(model: torch.nn.Module) -> bool:
    """True for open_clip ``VisionTransformer`` towers pooled at the class token."""
    from open_clip.model import CLIP, CustomTextCLIP
    from open_clip.transformer import ResidualAttentionBlock, Transformer, VisionTransformer

    if type(model).encode_image not in (CLIP.encode_image, CustomTextCLIP.encode_image):
        return False
    visual = getattr(model, "visual", None)
    if type(visual) is not VisionTransformer or type(visual.transformer) is not Transformer:
        return False
    blocks = visual.transformer.resblocks
    return (
        visual.attn_pool is None
        and visual.pool_type == "tok"
        and not visual.output_tokens
        and visual.transformer.batch_first
        and len(blocks) > 0
        and type(blocks[-1]) is ResidualAttentionBlock
        and not hasattr(blocks[-1], "ln_1_kv")
    )


def _encode_image_class_token(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """``model.encode_image`` with the last block computed for the class token only."""
    visual = model.visual
    x = visual._embeds(pixels)
    *blocks, last = visual.transformer.resblocks
    for block in blocks:
        x = block(x)
    keys = last.ln_1(x)
    cls = x[:, :1] + last.ls_1(last.attention(q_x=keys[:, :1], k_x=keys, v_x=keys))
    cls = cls + last.ls_2(last.mlp(last.ln_2(cls)))
    pooled, _ = visual._pool(cls)
    return pooled @ visual.proj if visual.proj is not None else pooled


# Minimum cosine between shortcut and ordinary embeddings. Under fp16/bf16 autocast both paths
# round differently; 1e-4 is still well inside the difference between half precision and fp32.
_AGREEMENT = {"fp32": 0.99999}
_AGREEMENT_HALF = 0.9999


def _shortcut_agrees(loaded: LoadedModel, model: torch.nn.Module, pixels: torch.Tensor, fast: torch.Tensor) -> bool:
    reference = model.encode_image(pixels).float()
    cos = torch.nn.functional.cosine_similarity(reference, fast.float(), dim=-1)
    return bool((cos > _AGREEMENT.get(loaded.precision, _AGREEMENT_HALF)).all())


def encode_images(loaded: LoadedModel, pixels: torch.Tensor, shortcut: bool = True) -> torch.Tensor:
    """L2-normalised float32 image embeddings ``[N, dim]`` for a preprocessed batch (on the
    model's device). ``shortcut=False`` always runs the model's own ``encode_image``.

    An ``auto``-chosen reduced precision is checked on the first batch against fp32 (see
    :func:`check_against_fp32`); if it fails, this batch and the rest are fp32."""
    if loaded.needs_check("image"):
        return _checked(loaded, pixels, shortcut)
    return _encode(loaded, pixels, shortcut)


def _encode(loaded: LoadedModel, pixels: torch.Tensor, shortcut: bool) -> torch.Tensor:
    model = loaded.tower("image")
    verified = loaded.class_token_shortcut
    use = shortcut and verified is not False and supports_class_token_shortcut(model)
    with torch.inference_mode(), loaded.autocast("image"):
        pixels = pixels.to(loaded.device, non_blocking=True)
        if model is loaded.reduced:  # the bf16 weights take bf16 input
            pixels = pixels.to(torch.bfloat16)
        if not use:
            features = model.encode_image(pixels)
        else:
            features = _encode_image_class_token(model, pixels)
            if verified is None:
                loaded.class_token_shortcut = _shortcut_agrees(loaded, model, pixels[:2], features[:2])
                if not loaded.class_token_shortcut:
                    features = model.encode_image(pixels)
    return normalize(features.float())


def check_against_fp32(reduced: torch.Tensor, exact: torch.Tensor,
                       weights: torch.Tensor | None = None) -> tuple[bool, str]:
    """Whether normalised embeddings at reduced precision agree with the fp32 ones: every
    cosine >= :data:`~zeroshot.precision.MIN_COSINE` and, given class ``weights``, the same
    top-1 class for every row. Returns (passed, a short account for the notes)."""
    cos = torch.nn.functional.cosine_similarity(reduced.float(), exact.float(), dim=-1)
    worst = float(cos.min()) if len(cos) else 1.0
    detail = f"min cosine {worst:.5f}"
    passed = worst >= MIN_COSINE
    if weights is not None:
        weights = weights.to(exact.device, torch.float32)
        same = (reduced.float() @ weights.T).argmax(dim=1) == (exact.float() @ weights.T).argmax(dim=1)
        detail += f", same top-1 for {int(same.sum())}/{len(same)}"
        passed = passed and bool(same.all())
    return passed, detail


def _checked(loaded: LoadedModel, pixels: torch.Tensor, shortcut: bool) -> torch.Tensor:
    fast = _encode(loaded, pixels, shortcut)
    with torch.inference_mode():
        exact = normalize(loaded.model.encode_image(pixels.to(loaded.device)).float())
    passed, detail = check_against_fp32(fast, exact, loaded.check_weights)
    loaded.record_check("image", passed, detail)
    return fast if passed else exact
