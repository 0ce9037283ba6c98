"""Vision-language models: image tokens per image and the vision tower seen as a stack.

A vision-language model is its language model (the template's ``decoder`` stack) plus an
image tower (``vision`` stack: patch/position embeddings, blocks, norms) and a ``projector``
(the layers that map the tower's features to the language model's width). Each image becomes
``patches`` tower tokens and ``tokens`` language-model tokens, which the processor inserts
into the text; so the language model's sequence is the text plus ``images * tokens``.

Token rules, from each processor (transformers v5.24):

* ``dynamic`` (Qwen2.5-VL, Qwen3-VL): ``image_processing_qwen2_vl.py`` ``smart_resize``: each
  side rounded to a multiple of ``factor = patch_size * merge_size``, then scaled so the area
  lies within ``[min_pixels, max_pixels]``; ``(h/patch) * (w/patch)`` patches, one LM token
  per ``merge_size**2`` patches (``image_processing_qwen2_vl.py`` ``_preprocess``,
  ``processing_qwen2_5_vl.py``: ``image_grid_thw.prod() // merge_size**2`` tokens).
* ``fixed`` (LLaVA-1.5 CLIP, Gemma 3 SigLIP): every image is resized (CLIP: shortest edge then
  centre crop) to ``image_size`` square: ``(image_size/patch)**2`` patches (CLIP adds a CLS
  token to the tower's sequence); LLaVA places one token per patch (576 at 336 px,
  ``processing_llava.py`` ``num_image_tokens``), Gemma 3 average-pools to
  ``mm_tokens_per_image`` (256 at 896 px, ``modeling_gemma3.py`` ``Gemma3MultiModalProjector``).
* ``tiles`` (Llama-3.2-Vision, ``mllama``): ``image_processing_mllama.py`` fits the image to
  the best canvas of up to ``max_num_tiles`` tiles of ``image_size`` px
  (``get_optimal_tiled_canvas``), splits it into tiles and pads every image to
  ``max_num_tiles`` tiles (``pad_batches_and_tiles``): the tower always runs over
  ``max_num_tiles * ((image_size/patch)**2 + 1)`` tokens per image whatever its size (unused
  tiles are masked, not dropped). The text holds one ``<|image|>`` token per image; the
  language model reads the image through its cross-attention layers
  (``processing_mllama.py``), so each image adds one language-model token.
"""

from __future__ import annotations

import math

from vramcalc.errors import InvalidConfigError
from vramcalc.specs import ModelSpec

__all__ = [
    "default_image_size",
    "image_tokens",
    "is_vlm",
    "pixel_values",
    "tiled_canvas",
    "tower_spec",
]


def is_vlm(spec: ModelSpec) -> bool:
    """Tell whether ``spec`` has an image tower (its template sets ``vision_layers``)."""
    return isinstance(spec.arch.get("vision_layers"), int)


def _int(spec: ModelSpec, key: str) -> int:
    v = spec.arch.get(key)
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) else 0


def default_image_size(spec: ModelSpec) -> tuple[int, int]:
    """Return the image size assumed without ``--image-size``.

    The tower's square input, or 448 x 448 for dynamic-resolution processors (a common
    fine-tuning size; any size is accepted).
    """
    side = _int(spec, "vision_image_size") or 448
    return side, side


def _smart_resize(h: int, w: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """``smart_resize`` of transformers v5.24 ``image_processing_qwen2_vl.py`` (same rounding).

    ``round`` is Python's (banker's) rounding, as in the processor.
    """
    h_bar = round(h / factor) * factor
    w_bar = round(w / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((h * w) / max_pixels)
        h_bar = max(factor, math.floor(h / beta / factor) * factor)
        w_bar = max(factor, math.floor(w / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        h_bar = math.ceil(h * beta / factor) * factor
        w_bar = math.ceil(w * beta / factor) * factor
    return h_bar, w_bar


def _tile_arrangements(max_tiles: int) -> list[tuple[int, int]]:
    """``get_all_supported_aspect_ratios``: (width, height) tile grids of at most ``max_tiles``."""
    return [
        (w, h)
        for w in range(1, max_tiles + 1)
        for h in range(1, max_tiles + 1)
        if w * h <= max_tiles
    ]


def tiled_canvas(height: int, width: int, max_tiles: int, tile: int) -> tuple[int, int]:
    """Return the canvas (height, width) Llama-3.2-Vision's processor fits an image to.

    ``get_optimal_tiled_canvas`` of transformers v5.24 ``image_processing_mllama.py``: for
    each tile grid (as ``(width, height)`` pairs read as ``(rows, cols)``, as the processor
    does), the scale that fits the image inside it; the smallest upscale if any is >= 1,
    else the largest downscale; ties go to the smallest area. Its tiles are
    ``(h / tile) * (w / tile)``.
    """
    canvases = [(a * tile, b * tile) for a, b in _tile_arrangements(max_tiles)]
    scales = [min(ch / height, cw / width) for ch, cw in canvases]
    ups = [s for s in scales if s >= 1]
    chosen = min(ups) if ups else max(s for s in scales if s < 1)
    picks = [c for c, s in zip(canvases, scales, strict=True) if s == chosen]
    return min(picks, key=lambda c: c[0] * c[1])


def image_tokens(spec: ModelSpec, height: int, width: int) -> tuple[int, int]:
    """(tower tokens, language-model tokens) of one ``height`` x ``width`` image.

    Source: see the module docstring (processor files of transformers v5.24).
    """
    patch = _int(spec, "vision_patch_size")
    if spec.arch.get("vision_resize") == "dynamic":
        ratio = max(height, width) / min(height, width)
        if ratio > 200:  # smart_resize refuses it (ValueError in the processor)
            raise InvalidConfigError(
                f"image size {height}x{width}: aspect ratio {ratio:.1f} is refused by "
                f"{spec.model_type}'s processor; accepted: at most 200"
            )
        merge = _int(spec, "vision_merge") or 1
        h, w = _smart_resize(
            height, width, patch * merge,
            _int(spec, "vision_min_pixels"), _int(spec, "vision_max_pixels"),
        )  # fmt: skip
        patches = (h // patch) * (w // patch)
        return patches, patches // (merge * merge)
    if spec.arch.get("vision_resize") == "tiles":
        # every image is padded to max_num_tiles tiles (see the module docstring)
        return _int(spec, "vision_max_num_tiles") * _int(spec, "vision_positions"), 1
    side = _int(spec, "vision_image_size") // patch
    patches = side * side
    tokens = _int(spec, "vision_tokens_per_image") or patches
    return patches + (1 if spec.arch.get("vision_cls") else 0), tokens


def pixel_values(spec: ModelSpec, patches: int) -> int:
    """Elements of one image's ``pixel_values`` as the processor returns them (fp32).

    Qwen-VL: one row of ``channels * temporal_patch_size * patch**2`` values per patch (the
    image repeated over the temporal patch); CLIP/SigLIP: ``channels * image_size**2``;
    Llama-3.2-Vision: ``max_num_tiles`` such tiles.
    Source: ``image_processing_qwen2_vl.py`` ``_preprocess``, ``image_processing_clip.py``.
    """
    c = _int(spec, "vision_in_channels") or 3
    p = _int(spec, "vision_patch_size")
    if spec.arch.get("vision_resize") == "dynamic":
        return patches * c * max(1, _int(spec, "vision_temporal_patch")) * p * p
    side = _int(spec, "vision_image_size")
    # Llama-3.2-Vision: (max_num_tiles, C, tile, tile) per image (pad_batches_and_tiles)
    return max(1, _int(spec, "vision_max_num_tiles")) * c * side * side


def tower_spec(spec: ModelSpec) -> ModelSpec:
    """Return the image tower as a ``ModelSpec`` the block ledgers read.

    Its width, heads, norm, MLP kind and activation; bidirectional attention without a
    mask, no dropout.
    """
    hidden = _int(spec, "vision_hidden_size")
    heads = _int(spec, "vision_heads")
    return spec.model_copy(
        update={
            "hidden_size": hidden,
            "num_attention_heads": heads,
            "num_key_value_heads": heads,
            "head_dim": hidden // heads,
            "intermediate_size": _int(spec, "vision_intermediate_size"),
            "num_hidden_layers": _int(spec, "vision_layers"),
            "norm": spec.arch.get("vision_norm") or "layernorm",
            "mlp": spec.arch.get("vision_mlp") or "plain",
            "hidden_act": str(spec.arch.get("vision_act") or "gelu"),
            "position_embedding": "rotary" if spec.arch.get("vision_rope") else "learned",
            "attention_dropout": 0.0,
            "hidden_dropout": 0.0,
            "embedding_dropout": 0.0,
            "num_local_experts": 0,
            "num_experts_per_tok": 0,
            # Qwen-VL towers: a fused qkv whose v is a view (SDPA keeps the whole qkv output)
            # and attention run per window/image, its outputs concatenated
            "arch": {"qkv_view_saved": True, "attn_out_cat": True}
            if spec.arch.get("vision_resize") == "dynamic"
            else {},
        }
    )
