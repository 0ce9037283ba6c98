"""Vision-language models: image tokens, the frozen/idle tower, and the request options.

Oracles: transformers' own ``smart_resize`` (Qwen-VL processors), the processors' published
token counts (LLaVA-1.5: 576 per 336-px image, ``processing_llava.py``; Gemma 3: 256 per
image, ``mm_tokens_per_image``), and a real CPU backward of a tiny LLaVA (which parameters
get no gradient).
"""

from __future__ import annotations

from typing import Any

import pytest

from vramcalc import estimate
from vramcalc.errors import InvalidConfigError
from vramcalc.formulas.counts import param_inventory
from vramcalc.formulas.vision import image_tokens, is_vlm
from vramcalc.hf import resolve_model
from vramcalc.specs import EstimateRequest

SIZES = [(448, 448), (1080, 1920), (224, 224), (28, 28), (10, 10), (3000, 4000), (333, 517)]


@pytest.mark.parametrize(("h", "w"), SIZES)
def test_qwen_tokens_follow_smart_resize(h: int, w: int) -> None:
    pytest.importorskip("transformers")
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    for model, patch, lo, hi in (
        ("qwen2.5-vl-7b", 14, 56 * 56, 28 * 28 * 1280),
        ("qwen3-vl-8b", 16, 65536, 16777216),
    ):
        rh, rw = smart_resize(h, w, factor=patch * 2, min_pixels=lo, max_pixels=hi)
        patches = (rh // patch) * (rw // patch)
        assert image_tokens(resolve_model(model), h, w) == (patches, patches // 4)


def test_fixed_size_towers() -> None:
    # LLaVA-1.5: 336 px, 14-px patches: 576 image tokens (the tower also holds the CLS token)
    assert image_tokens(resolve_model("llava-1.5-7b"), 1080, 1920) == (577, 576)
    # Gemma 3: 896 px SigLIP, 14-px patches (4096), average-pooled to 256
    assert image_tokens(resolve_model("gemma-3-4b-it"), 640, 480) == (4096, 256)
    assert image_tokens(resolve_model("gemma-3-27b-it"), 896, 896) == (4096, 256)


def test_only_vlms_have_a_tower() -> None:
    assert is_vlm(resolve_model("qwen2.5-vl-7b"))
    assert not is_vlm(resolve_model("gemma-3-4b"))  # the text-only row keeps its name
    assert not is_vlm(resolve_model("llama-2-7b"))


def test_images_lengthen_the_language_model_sequence() -> None:
    base = estimate(EstimateRequest(model="llava-1.5-7b", dtype="bf16", seq_len=512))
    one = estimate(EstimateRequest(model="llava-1.5-7b", dtype="bf16", seq_len=512, images=1))
    assert one.assumptions["image_tokens_per_image"] == 576
    assert any("sequence 1088 = 512 text + 576 image" in n for n in one.notes)
    assert one.peak.allocated_bytes > base.peak.allocated_bytes
    big = estimate(EstimateRequest(model="llava-1.5-7b", dtype="bf16", seq_len=512, images=4,
                                   batch_size=8, lora={"r": 8, "targets": ["all-linear"]}))
    assert big.peak.phase.value in ("forward", "loss", "backward")
    assert big.details.get("activations/vision", 0) > 0


def _grad_bytes(req: dict[str, Any]) -> int:
    r = estimate(EstimateRequest(**req))
    return max(e.components.get("gradients", 0) for e in r.timeline)


def test_freeze_vision_drops_the_towers_gradients() -> None:
    spec = resolve_model("llava-1.5-7b")
    tower = sum(g.numel for g in param_inventory(spec) if g.stack == "vision")
    idle = sum((g.weight_numel + g.bias_numel) * g.idle for g in param_inventory(spec))
    common = {"model": "llava-1.5-7b", "dtype": "bf16", "seq_len": 64, "images": 1}
    full = _grad_bytes(common)
    frozen = _grad_bytes({**common, "freeze_vision": True})
    # bf16 gradients of the used tower weights (the idle last layer has none either way)
    assert full - frozen == pytest.approx(2 * (tower - idle), rel=1e-3)
    r = estimate(EstimateRequest(**common, freeze_vision=True))
    assert r.model.n_trainable_params == spec.n_params - tower


def test_no_images_no_tower_gradients() -> None:
    spec = resolve_model("qwen2.5-vl-7b")
    image_path = sum(g.numel for g in param_inventory(spec) if g.stack in ("vision", "projector"))
    common = {"model": "qwen2.5-vl-7b", "dtype": "bf16", "seq_len": 64}
    assert _grad_bytes(common) == pytest.approx(
        _grad_bytes({**common, "images": 1}) - 2 * image_path, rel=1e-3
    )


def test_llava_idle_layers_match_a_real_backward() -> None:
    """The parameters transformers leaves without a gradient are the template's idle ones."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from validation.grid import FAMILIES

    config = dict(FAMILIES["llava"])
    spec = resolve_model(config)
    cfg = dict(config)
    hf_config = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    torch.manual_seed(0)
    model = transformers.LlavaForConditionalGeneration(hf_config)
    side = hf_config.vision_config.image_size // hf_config.vision_config.patch_size
    ids = torch.randint(0, 1000, (1, 16 + side * side))
    ids[0, 4 : 4 + side * side] = hf_config.image_token_id
    size = hf_config.vision_config.image_size
    pixels = torch.randn(1, 3, size, size)
    model(input_ids=ids, pixel_values=pixels, labels=ids).loss.backward()
    no_grad = sum(p.numel() for p in model.parameters() if p.grad is None)
    idle = sum((g.weight_numel + g.bias_numel) * g.idle for g in param_inventory(spec))
    assert no_grad == idle > 0


def test_bad_image_options() -> None:
    with pytest.raises(InvalidConfigError, match="applies to vision-language models"):
        estimate(EstimateRequest(model="gpt2", images=1))
    with pytest.raises(InvalidConfigError, match="not HEIGHTxWIDTH"):
        estimate(EstimateRequest(model="qwen2.5-vl-7b", images=1, image_size="448x"))


def test_tower_flops_follow_its_tokens() -> None:
    """The tower's matmuls run over the tower's tokens, not the language model's."""
    from vramcalc.formulas.flops import training_flops_per_token

    spec = resolve_model("qwen2.5-vl-7b")
    inv = param_inventory(spec)
    keys = {g.key for g in inv}
    tower = sum(g.weight_numel * g.count for g in inv if g.stack == "vision" and g.kind == "linear")
    text = training_flops_per_token(spec, inv, keys, 768, stack_tokens={"vision": 0.0,
                                                                        "projector": 0.0})
    one = training_flops_per_token(spec, inv, keys, 768, stack_tokens={"vision": 1024 / 768,
                                                                       "projector": 0.0})
    # forward 2 and backward 4 FLOPs per weight and token
    assert one.total - text.total == pytest.approx(6 * tower * 1024 / 768, rel=1e-9)


# Llama-3.2-Vision (mllama): tiles of image_size px, padded to max_num_tiles per image
TILE_SIZES = [(1, 1), (100, 100), (560, 560), (561, 560), (560, 1120), (1080, 1920),
              (1920, 1080), (300, 2500), (2500, 300), (1120, 1120), (4000, 3000), (9000, 50)]


@pytest.mark.parametrize(("h", "w"), TILE_SIZES)
def test_mllama_canvas_follows_the_processor(h: int, w: int) -> None:
    pytest.importorskip("transformers")
    from transformers.models.mllama.image_processing_pil_mllama import get_optimal_tiled_canvas

    from vramcalc.formulas.vision import tiled_canvas

    expected = tuple(int(x) for x in get_optimal_tiled_canvas(h, w, 4, 560))
    assert tiled_canvas(h, w, 4, 560) == expected


@pytest.mark.parametrize(("h", "w"), [(300, 300), (1080, 1920), (2000, 500)])
def test_mllama_processor_pads_every_image_to_four_tiles(h: int, w: int) -> None:
    """The tower's input does not depend on the image size: 4 tiles of 560 px each."""
    pytest.importorskip("transformers")
    np = pytest.importorskip("numpy")
    pil = pytest.importorskip("PIL.Image")
    from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil

    from vramcalc.formulas.vision import pixel_values

    spec = resolve_model("llama-3.2-11b-vision")
    proc = MllamaImageProcessorPil(size={"height": 560, "width": 560})
    image = pil.fromarray(np.zeros((h, w, 3), dtype=np.uint8))
    out = proc(images=[[image]], return_tensors="np")
    assert out["pixel_values"].shape == (1, 1, 4, 3, 560, 560)
    assert pixel_values(spec, 0) == out["pixel_values"][0, 0].size
    # every tile's 40 x 40 patches + the class token; one <|image|> token in the text
    assert image_tokens(spec, h, w) == (4 * (40 * 40 + 1), 1)


def test_mllama_note_names_the_tiles() -> None:
    r = estimate(EstimateRequest(model="llama-3.2-11b-vision", dtype="bf16", seq_len=256,
                                 images=2, image_size="1080x1920",
                                 lora={"r": 8, "targets": ["q_proj", "v_proj"]}))
    assert any("4 of 560x560 tile(s), padded to 4" in n for n in r.notes)
    assert any("sequence 258 = 256 text + 2 image" in n for n in r.notes)
    assert r.details.get("activations/vision", 0) > 0


def test_mllama_cross_layers_idle_without_images() -> None:
    """A real backward of a tiny Llama-3.2-Vision without images: the tower, projector and
    cross-attention layers (their own weights, norms and MLP) get no gradient, as the
    estimate's --images 0 has it."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from validation.grid import FAMILIES

    config = dict(FAMILIES["mllama"])
    spec = resolve_model(config)
    cfg = {k: v for k, v in config.items() if k not in ("model_type", "architectures")}
    torch.manual_seed(0)
    model = transformers.MllamaForConditionalGeneration(transformers.MllamaConfig(**cfg))
    ids = torch.randint(0, 1000, (1, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    with_grad = sum(p.numel() for p in model.parameters() if p.grad is not None)
    r = estimate(EstimateRequest(model=config, dtype="fp32", seq_len=16))
    grads = max(e.components.get("gradients", 0) for e in r.timeline)
    assert with_grad * 4 == pytest.approx(grads, rel=2e-3)
    assert with_grad < spec.n_params


def test_mllama_fsdp_units_hold_average_layers() -> None:
    """FSDP wraps every decoder layer (self- or cross-attention) as a unit: no unit gathers the
    80 self-attention layers' weights at once (they were the root before)."""
    spec = resolve_model("llama-3.2-90b-vision")
    inv = param_inventory(spec)
    block_groups = [g for g in inv if g.stack == "decoder" and "final_norm" not in g.key]
    avg_block = 2 * sum(g.numel for g in block_groups) // spec.num_hidden_layers
    root = 2 * sum(g.numel for g in inv if g not in block_groups)
    for images in (0, 1):
        r = estimate(EstimateRequest(model="llama-3.2-90b-vision", dtype="bf16", seq_len=2048,
                                     grad_ckpt=True, gpus=8, fsdp="full_shard", images=images,
                                     freeze_vision=images > 0,
                                     lora={"r": 16, "targets": ["q_proj", "v_proj"]}))
        gathered = r.details["params/gathered"]
        assert gathered <= 3 * avg_block + root
