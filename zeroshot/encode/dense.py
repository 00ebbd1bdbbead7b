"""Dense image features: one embedding per patch token, in the joint image-text space.

A CLIP ViT's patch tokens after the last block carry little local meaning: its attention mixes
every token with global context and the class token is the only output trained against text.
The training-free dense methods (MaskCLIP, SCLIP, ClearCLIP, NACLIP) change only the last block
so that the patch tokens become usable for open-vocabulary segmentation. We use key-key
attention (NACLIP's, without its Gaussian window) in ClearCLIP's stripped block:

    x      = blocks[:-1](embed(pixels))                 # unchanged
    y      = ln_1(x)
    k, v   = y W_k + b_k,  y W_v + b_v                  # per head
    tokens = out_proj(softmax(s k k^T / sqrt(d)) v)     # k-k attention, no residual, no MLP (s = 1)
    dense  = normalise(ln_post(tokens[1:]) @ proj)      # patch tokens -> joint space

Why this one: one changed block, no new parameters, one forward pass, like MaskCLIP and
ClearCLIP; dropping the residual and the MLP is ClearCLIP's finding (it helps on every
published benchmark). Between the attention variants we measured on the shapes benchmark's
tuning scenes (``benchmarks/locate_quality.py``, a seed apart from the reported one), objects
found with IoU >= 0.5 on 100 scenes at a 96 px input, each variant at its best scoring and box
threshold: q-q (ClearCLIP) 52%, q-q + k-k (SCLIP's, no residual) 60%, v-v 49%, identity (MaskCLIP)
51%, k-k 70%, k-k with NACLIP's Gaussian window (sigma 1-3 patches) 56-64%; keeping the
residual and MLP roughly halves every variant. Inputs larger than the model's native size get
bicubically interpolated position embeddings, so one pass at e.g. 448 px gives a 28x28 grid
from a ViT-B/16.

Only open_clip ``VisionTransformer`` towers with standard blocks qualify; ResNet (ModifiedResNet)
and timm towers raise :class:`DenseUnsupported` (use the ``crops`` method for those).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UsageError
from ..models import LoadedModel
from ..scoring import normalize


class DenseUnsupported(UsageError):
    """The model's image tower is not a ViT the dense method can change."""


def dense_unsupported_reason(model: torch.nn.Module) -> str | None:
    """Why the dense method cannot run on ``model`` (None when it can)."""
    from open_clip.transformer import ResidualAttentionBlock, Transformer, VisionTransformer

    visual = getattr(model, "visual", None)
    if type(visual) is not VisionTransformer:
        kind = type(visual).__name__ if visual is not None else "no image tower"
        return f"its image tower is a {kind}, not an open_clip VisionTransformer"
    if type(visual.transformer) is not Transformer or not visual.transformer.batch_first:
        return "its vision transformer is not open_clip's standard Transformer"
    last = visual.transformer.resblocks[-1]
    attn = getattr(last, "attn", None)
    if (type(last) is not ResidualAttentionBlock or hasattr(last, "ln_1_kv")
            or not isinstance(attn, torch.nn.MultiheadAttention) or not attn._qkv_same_embed_dim):
        return "its last block is not a standard attention block"
    if visual.attn_pool is not None:
        return "it pools with attention (CoCa-style), so patch tokens are not in the joint space"
    return None


def check_dense(loaded: LoadedModel, method: str = "dense") -> None:
    """Raise :class:`DenseUnsupported` (one line, suggesting ``--method crops``) when needed."""
    reason = dense_unsupported_reason(loaded.model)
    if reason is not None:
        raise DenseUnsupported(f"--method {method} does not apply to {loaded.name}: {reason}; use --method crops")


def interpolate_positions(visual: torch.nn.Module, grid: tuple[int, int]) -> torch.Tensor:
    """Position embeddings ``[1 + gh * gw, width]`` for a ``grid`` of patches: the class
    position unchanged, the patch positions resized bicubically from the native grid (the
    native embeddings themselves when ``grid`` is native)."""
    pos = visual.positional_embedding
    native = tuple(visual.grid_size)
    if tuple(grid) == native:
        return pos
    return resize_positions(pos, native, grid)


def resize_positions(pos: torch.Tensor, native: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of the patch part of ``pos`` from ``native`` to ``grid`` (always resamples)."""
    cls, patches = pos[:1], pos[1:]
    width = pos.shape[-1]
    patches = patches.reshape(1, native[0], native[1], width).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=tuple(grid), mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(-1, width).to(pos.dtype)
    return torch.cat([cls, patches], dim=0)


def embed_patches(visual: torch.nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """``VisionTransformer._embeds`` for any input size a multiple of the patch size: tokens
    ``[B, 1 + gh * gw, width]`` and the grid ``(gh, gw)``."""
    x = visual.conv1(pixels)
    grid = (x.shape[2], x.shape[3])
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
    x = torch.cat([cls, x], dim=1)
    x = x + interpolate_positions(visual, grid).to(x.dtype)
    x = visual.patch_dropout(x)
    return visual.ln_pre(x), grid


def dense_block(block: torch.nn.Module, x: torch.Tensor, sharpness: float = 1.0) -> torch.Tensor:
    """The changed last block: k-k attention on ``ln_1(x)`` (logits times ``sharpness``),
    output projection, layer scale; no residual, no MLP."""
    attn = block.attn
    y = block.ln_1(x)
    _, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    batch, tokens, width = k.shape
    heads = attn.num_heads
    k = k.reshape(batch, tokens, heads, width // heads).transpose(1, 2)
    v = v.reshape(batch, tokens, heads, width // heads).transpose(1, 2)
    scale = sharpness / (width // heads) ** 0.5
    out = F.scaled_dot_product_attention(k, k, v, scale=scale)  # softmax(sharpness * k k^T / sqrt(d)) v
    out = out.transpose(1, 2).reshape(batch, tokens, width)
    return block.ls_1(attn.out_proj(out))


def dense_features(loaded: LoadedModel, pixels: torch.Tensor, sharpness: float = 1.0) -> torch.Tensor:
    """L2-normalised float32 patch embeddings ``[B, gh, gw, dim]`` (on the CPU) for normalised
    ``pixels`` ``[B, 3, H, W]`` whose sides are multiples of the patch size; ``sharpness``
    multiplies the last block's k-k attention logits (1: the formula above; larger: each patch
    pools over fewer, more similar patches)."""
    check_dense(loaded)
    visual = loaded.model.visual
    with torch.inference_mode(), loaded.autocast():
        x, grid = embed_patches(visual, pixels.to(loaded.device))
        *blocks, last = visual.transformer.resblocks
        for block in blocks:
            x = block(x)
        x = visual.ln_post(dense_block(last, x, sharpness)[:, 1:])
        if visual.proj is not None:
            x = x @ visual.proj
    return normalize(x.float()).reshape(x.shape[0], grid[0], grid[1], -1).cpu()
