"""Text side: prompts -> text embeddings -> one normalised weight vector per class, cached on disk.

The CLIP text tower uses a causal mask and pools at the end-of-text token, so padding after that
token cannot change the result. We therefore run each batch only as long as its longest real
prompt (prompts sorted by length), which is exact to float tolerance and several times faster than
padding everything to the full context. Towers where this does not hold (no causal mask, other
pooling, SigLIP-style custom text towers) run the ordinary full-length forward.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from ..errors import ModelLoadError, ZeroshotError, ZeroshotWarning
from ..models import LoadedModel
from ..precision import MIN_COSINE
from ..prompts import TemplateSet, as_template_set, fill
from ..scoring import normalize
from .vision import check_against_fp32

if TYPE_CHECKING:
    from .cache import ClassWeightCache

Progress = Callable[[int, int], None]  # (done, total)


class LabelTruncatedWarning(ZeroshotWarning):
    """A prompt is longer than the text tower's context and was cut by the tokenizer."""


# --------------------------------------------------------------------------------- text tower


def supports_trimming(model: torch.nn.Module) -> bool:
    """True for open_clip ``CLIP`` text towers with a causal mask and end-of-text pooling."""
    from open_clip.model import CLIP

    return (
        isinstance(model, CLIP)
        and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", "argmax") == "argmax"
    )


def _encode_text_trimmed(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``CLIP.encode_text`` on tokens cut to their longest real length (no padding computed)."""
    from open_clip.transformer import text_global_pool

    length = tokens.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type)
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection
    return x


def encode_prompts(
    loaded: LoadedModel,
    prompts: Sequence[str],
    batch_size: int = 256,
    progress: Progress | None = None,
    trim: bool = True,
) -> torch.Tensor:
    """L2-normalised text embeddings ``[len(prompts), dim]`` (float32, on CPU), in input order.

    An ``auto``-chosen reduced precision is checked on the first batch against fp32 (every
    cosine >= :data:`~zeroshot.precision.MIN_COSINE`); if it fails, the rest is fp32."""
    tokens = loaded.tokenizer(list(prompts))
    trim = trim and supports_trimming(loaded.model)
    lengths = (tokens != 0).sum(dim=1) if trim else torch.full((len(prompts),), tokens.shape[1])
    order = torch.argsort(lengths, descending=True, stable=True)
    out: torch.Tensor | None = None
    checked = not trim
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            index = order[start:start + batch_size]
            batch = tokens[index].to(loaded.device)
            if trim:
                batch = batch[:, : int(lengths[index].max())]
            model = loaded.tower("text")
            with loaded.autocast("text"):
                features = _encode_text(model, batch, trim)
                if not checked:
                    trim = _trimming_agrees(model, tokens[index[:4]].to(loaded.device), features[:4],
                                            0.9999 if model is loaded.model else MIN_COSINE)
                    checked = True
                    if not trim:
                        batch = tokens[index].to(loaded.device)
                        features = model.encode_text(batch)
            features = normalize(features.float())
            if loaded.needs_check("text"):
                exact = normalize(_encode_text(loaded.model, batch, trim).float())
                passed, detail = check_against_fp32(features, exact)
                loaded.record_check("text", passed, detail)
                features = features if passed else exact
            features = features.cpu()
            if out is None:
                out = torch.empty(len(prompts), features.shape[1])
            out[index] = features
            if progress:
                progress(min(start + batch_size, len(prompts)), len(prompts))
    if out is None:
        raise ZeroshotError("no prompts to encode")
    return out


def _encode_text(model: torch.nn.Module, tokens: torch.Tensor, trimmed: bool) -> torch.Tensor:
    return _encode_text_trimmed(model, tokens) if trimmed else model.encode_text(tokens)


def _trimming_agrees(model: torch.nn.Module, full_tokens: torch.Tensor, trimmed: torch.Tensor,
                     limit: float) -> bool:
    """Safety net: the trimmed forward must match the full-context forward on a few prompts
    (bf16 weights round the two lengths differently, hence a looser ``limit`` for them)."""
    reference = model.encode_text(full_tokens).float()
    cos = torch.nn.functional.cosine_similarity(reference, trimmed.float(), dim=-1)
    return bool((cos > limit).all())


# -------------------------------------------------------------------------------- class weights


def build_prompts(labels: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Every template filled with every label, label-major (label 0 x all templates, ...)."""
    return [fill(t, label) for label in labels for t in templates]


def build_class_weights(
    loaded: LoadedModel,
    labels: Sequence[str],
    templates: TemplateSet | str | Sequence[str],
    batch_size: int = 256,
    progress: Progress | None = None,
    cache: ClassWeightCache | None = None,
) -> torch.Tensor:
    """Class weights ``[classes, dim]``: normalise each prompt embedding, average over the
    templates of a class, normalise again (the CLIP paper's prompt ensemble).

    ``templates`` is a :class:`~zeroshot.prompts.TemplateSet` (e.g. from ``resolve_templates``),
    a set name (``"openai-7"``) or a list of template strings."""
    templates = as_template_set(templates).templates
    check_finite_scale(loaded)
    key = cache.key(loaded, labels, templates) if cache else None
    if cache and key:
        hit = cache.get(key, labels)
        if hit is not None:
            return hit
    warn_truncated(loaded, labels, templates)
    features = encode_prompts(loaded, build_prompts(labels, templates), batch_size, progress)
    weights = normalize(features.view(len(labels), len(templates), -1).mean(dim=1))
    if not torch.isfinite(weights).all():
        raise NonFiniteError(loaded, "the text tower")
    if cache and key:  # keyed by the precision the weights were made at (after the check)
        cache.put(cache.key(loaded, labels, templates), labels, weights)
    return weights


class NonFiniteError(ModelLoadError):
    """The model computes NaN or infinite values: its weights are broken (a damaged or
    diverged checkpoint). Every score would be ``nan``, so the run stops instead."""

    def __init__(self, loaded: LoadedModel, where: str) -> None:
        weights = loaded.pretrained or "random weights"
        super().__init__(
            f"{where} of {loaded.name} ({weights}) produces NaN or infinite values: the checkpoint's weights "
            "are broken (damaged file or diverged training); use another checkpoint"
        )


def check_finite_scale(loaded: LoadedModel) -> None:
    """The learned temperature (and SigLIP's bias) must be finite numbers."""
    bias = loaded.logit_bias
    if not torch.isfinite(loaded.logit_scale).all() or (bias is not None and not torch.isfinite(bias).all()):
        raise NonFiniteError(loaded, "the logit scale (temperature)")


def token_count(tokenizer, text: str) -> int | None:
    """Tokens a prompt needs including start/end markers (None if the tokenizer cannot say)."""
    if hasattr(tokenizer, "encode") and hasattr(tokenizer, "sot_token_id"):
        return len(tokenizer.encode(text)) + 2
    inner = getattr(tokenizer, "tokenizer", None)
    if inner is not None and callable(inner):
        try:
            return len(inner(text)["input_ids"])
        except Exception:  # noqa: BLE001
            return None
    return None


def warn_truncated(loaded: LoadedModel, labels: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Warn once per label whose longest prompt exceeds the context length; return those labels."""
    limit = loaded.context_length
    longest = max(templates, key=len)
    cut = []
    for label in labels:
        count = token_count(loaded.tokenizer, fill(longest, label))
        if count is not None and count > limit:
            cut.append(label)
    if cut:
        shown = ", ".join(repr(c[:40]) for c in cut[:3]) + (f" and {len(cut) - 3} more" if len(cut) > 3 else "")
        warnings.warn(
            f"{len(cut)} label(s) are longer than the model's {limit}-token context and will be "
            f"cut: {shown}; shorten them",
            LabelTruncatedWarning,
            stacklevel=3,
        )
    return cut
