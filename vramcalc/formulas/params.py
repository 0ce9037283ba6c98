"""Parameter, gradient and PEFT-adapter bytes: what sits on the GPU before the first batch.

Every figure is a sum over real tensors, each rounded up to the CUDA caching allocator's
512-byte block (``alloc_block_bytes`` in ``data/constants.json``), because that is what
``torch.cuda.memory_allocated`` counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache

from vramcalc import catalog
from vramcalc.enums import PeftMethod, Quant
from vramcalc.errors import InvalidConfigError
from vramcalc.formulas.counts import ParamGroup
from vramcalc.specs import ModelSpec, PeftSpec, TrainingSpec
from vramcalc.units import round_up

__all__ = [
    "Adapter",
    "ParamPlan",
    "block",
    "dtype_bytes",
    "lora_target_groups",
    "plan_params",
]


def block(nbytes: int | float) -> int:
    """Bytes one tensor occupies in the caching allocator (rounded up to 512 B blocks).

    Source: c10/cuda/CUDACachingAllocator.cpp ``round_size`` (``kMinBlockSize`` = 512).
    """
    n = int(nbytes)
    if n <= 0:
        return 0
    return round_up(n, _block_bytes())


@cache
def _block_bytes() -> int:
    return int(catalog.constant("alloc_block_bytes"))


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of a whole-byte dtype (``data/dtypes.json``)."""
    return catalog.dtype_bits(dtype) // 8


@dataclass(frozen=True)
class Adapter:
    """A trainable PEFT tensor group added to the model (LoRA A/B, adapters, prompts)."""

    key: str
    module: str
    shape: tuple[int, int]
    count: int
    bytes_per_elt: int
    base_key: str = ""

    @property
    def numel(self) -> int:
        """Elements over all instances."""
        return self.shape[0] * self.shape[1] * self.count

    @property
    def tensor_bytes(self) -> int:
        """Allocated bytes of all instances (512 B blocks)."""
        return block(self.shape[0] * self.shape[1] * self.bytes_per_elt) * self.count


@dataclass
class ParamPlan:
    """Where the parameters are and which of them train.

    Attributes:
        param_bytes: allocated bytes of all parameters (quantized storage included).
        details: ``params/<dtype>`` slash keys -> bytes.
        trainable_keys: inventory keys (and adapter keys) that receive gradients.
        grad_tensors: per trainable tensor kind, ``(bytes of one tensor, count)``.
        decay_bytes: trainable bytes in the weight-decay group (weights, not biases/norms) --
            the HF Trainer's first optimizer param group.
        nodecay_bytes: trainable bytes in the second group (biases and norm weights).
        largest_trainable: bytes of the largest trainable tensor.
        largest_linear_weight: elements of the largest base linear weight (dequant buffers).
        adapters: the PEFT groups.
        n_params / n_trainable: element counts.
        n_trainable_tensors: number of trainable tensors.
        quantized_linear_numel: elements of quantized base weights.

    """

    param_bytes: int = 0
    details: dict[str, int] = field(default_factory=dict)
    trainable_keys: set[str] = field(default_factory=set)
    grad_tensors: list[tuple[int, int, int]] = field(default_factory=list)
    decay_bytes: int = 0
    nodecay_bytes: int = 0
    largest_trainable: int = 0
    largest_linear_weight: int = 0
    adapters: list[Adapter] = field(default_factory=list)
    n_params: int = 0
    n_trainable: int = 0
    n_trainable_tensors: int = 0
    quantized_linear_numel: int = 0
    lora_modules: set[str] = field(default_factory=set)
    trainable_elements: list[tuple[int, int, int]] = field(default_factory=list)
    """(elements of one tensor, count, bytes per element) of every trainable tensor kind."""
    tensors: list[tuple[str, int, int, int]] = field(default_factory=list)
    """(group key, bytes of one instance before block rounding, count, bytes per element; 0
    for quantized storage) of every parameter tensor (weights, biases, quantized weights with
    their state, adapters): what a sharding engine splits and gathers."""


def lora_target_groups(
    inventory: Iterable[ParamGroup], targets: tuple[str, ...], model_type: str
) -> list[ParamGroup]:
    """Linear groups a LoRA ``target_modules`` list reaches.

    ``all-linear`` selects every ``nn.Linear`` in the blocks except the output layer, as PEFT's
    ``_maybe_include_all_linear_layers`` does; MoE expert slices are 3-D parameters that
    ``target_modules`` cannot reach.

    Source: peft 0.21 ``tuners/tuners_utils.py`` (``check_target_module_exists`` suffix match,
    ``_maybe_include_all_linear_layers``).
    """
    groups = [g for g in inventory if g.kind == "linear" and not g.expert]
    if targets in (("all-linear",), ("all_linear",)):
        return [g for g in groups if g.stack in ("encoder", "decoder")]
    wanted = set(targets)
    chosen = [g for g in groups if g.module in wanted or g.key.split("/")[-1] in wanted]
    reached = {g.module for g in chosen} | {g.key.split("/")[-1] for g in chosen}
    unknown = [t for t in targets if t not in reached]
    if unknown:
        # PEFT errors only when no target matches at all; a target that matches nothing next
        # to others that do would be dropped silently, so it is refused here
        names = sorted({g.module for g in groups})
        raise InvalidConfigError(
            f"LoRA target{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
            f"match{'' if len(unknown) > 1 else 'es'} no linear layer of {model_type}; "
            f"accepted: {', '.join(names)} or all-linear"
        )
    return chosen


def plan_params(
    spec: ModelSpec, inventory: tuple[ParamGroup, ...], training: TrainingSpec
) -> ParamPlan:
    """Bytes of every parameter tensor and which ones train.

    * Full fine-tuning: every parameter in ``training.param_dtype`` and trainable.
    * LoRA: base frozen in its dtype; ``lora_A`` (r x in) and ``lora_B`` (out x r) per
      targeted linear, kept in fp32 (PEFT ``autocast_adapter_dtype=True``).
    * QLoRA / ``--quant``: base linear weights (not embeddings, not the LM head, not MoE expert
      slices) in bitsandbytes 4-bit blocks (nf4/fp4, ``bnb_blocksize_4bit`` values share one
      absmax, double-quantized to 8 bit with an fp32 absmax per ``bnb_nested_blocksize``) or
      int8 with an fp32 scale per row; ``prepare_model_for_kbit_training`` casts the other
      parameters to fp32.
    * IA3: one scaling vector per targeted key/value/down projection (fp32).
    * Adapters: two bottleneck linears (+bias) per block (fp32).
    * Prefix / prompt tuning: the virtual-token embeddings (prefix: key and value per layer).

    Source: peft 0.21 ``tuners/lora/layer.py`` (``update_layer``), ``utils/other.py``
    (``prepare_model_for_kbit_training``); bitsandbytes 0.50 ``functional.quantize_4bit``
    (``blocksize=64``, ``compress_statistics``), ``nn.Int8Params`` (``SCB`` per row).
    """
    peft = training.peft
    quant = training.quant
    pb = dtype_bytes(training.param_dtype)
    plan = ParamPlan()
    quantized = quant is not None
    other_bytes = 4 if quantized else pb  # prepare_model_for_kbit_training: fp32 for the rest
    full = peft is None
    lora_keys: set[str] = set()
    if peft is not None and peft.method in (PeftMethod.LORA, PeftMethod.QLORA):
        for g in lora_target_groups(inventory, peft.targets, spec.model_type):
            lora_keys.add(g.key)
            plan.lora_modules.add(g.module)
    for g in inventory:
        quant_this = quantized and g.kind == "linear" and not g.expert
        n_w, n_b = g.weight_numel, g.bias_numel
        trainable = full
        if quant_this:
            assert quant is not None
            wbytes = _quantized_weight_bytes(n_w, g.out_features, quant)
            plan.quantized_linear_numel += n_w * g.count
            key = f"params/{quant.value}"
        else:
            wbytes = block(n_w * other_bytes)
            key = f"params/{_dtype_name(other_bytes)}"
        plan.details[key] = plan.details.get(key, 0) + wbytes * g.count
        plan.param_bytes += wbytes * g.count
        one = wbytes if quant_this else n_w * other_bytes
        plan.tensors.append((g.key, one, g.count, 0 if quant_this else other_bytes))
        if n_b:
            plan.tensors.append((g.key, n_b * other_bytes, g.count, other_bytes))
            bb = block(n_b * other_bytes)
            bkey = f"params/{_dtype_name(other_bytes)}"
            plan.details[bkey] = plan.details.get(bkey, 0) + bb * g.count
            plan.param_bytes += bb * g.count
        if g.kind == "linear":
            plan.largest_linear_weight = max(plan.largest_linear_weight, n_w)
        plan.n_params += g.numel
        if trainable:
            plan.trainable_keys.add(g.key)
            wb = block(n_w * pb)
            plan.grad_tensors.append((wb, g.count, 0))
            plan.trainable_elements.append((n_w, g.count, pb))
            plan.largest_trainable = max(plan.largest_trainable, wb)
            if g.kind in ("norm", "other") and n_w <= spec.hidden_size:
                plan.nodecay_bytes += wb * g.count
            else:
                plan.decay_bytes += wb * g.count
            plan.n_trainable += n_w * g.count
            plan.n_trainable_tensors += g.count
            if n_b:
                bb = block(n_b * pb)
                plan.grad_tensors.append((bb, g.count, 0))
                plan.trainable_elements.append((n_b, g.count, pb))
                plan.nodecay_bytes += bb * g.count
                plan.n_trainable += n_b * g.count
                plan.n_trainable_tensors += g.count
    if peft is not None:
        plan.adapters = _adapters(spec, inventory, peft, lora_keys)
        for a in plan.adapters:
            plan.tensors.append(
                (a.key, a.shape[0] * a.shape[1] * a.bytes_per_elt, a.count, a.bytes_per_elt)
            )
            plan.param_bytes += a.tensor_bytes
            plan.details["params/adapters_fp32"] = (
                plan.details.get("params/adapters_fp32", 0) + a.tensor_bytes
            )
            plan.trainable_keys.add(a.key)
            one = block(a.shape[0] * a.shape[1] * a.bytes_per_elt)
            plan.grad_tensors.append((one, a.count, 1))
            plan.trainable_elements.append((a.shape[0] * a.shape[1], a.count, a.bytes_per_elt))
            plan.largest_trainable = max(plan.largest_trainable, one)
            if a.shape[1] == 1 or (a.shape[0] == 1 and a.module.endswith("bias")):
                plan.nodecay_bytes += a.tensor_bytes
            else:
                plan.decay_bytes += a.tensor_bytes
            plan.n_params += a.numel
            plan.n_trainable += a.numel
            plan.n_trainable_tensors += a.count
    return plan


def _dtype_name(nbytes: int) -> str:
    return {4: "fp32", 2: "16bit", 1: "int8"}.get(nbytes, f"{nbytes}B")


def _quantized_weight_bytes(numel: int, out_features: int, quant: Quant) -> int:
    """Allocated bytes of one bitsandbytes-quantized weight and its quantization state.

    4-bit: packed uint8 (2 values per byte), 8-bit absmax per ``bnb_blocksize_4bit`` values,
    fp32 absmax per ``bnb_nested_blocksize`` absmax values, plus the small code/offset tensors.
    int8: one byte per value plus an fp32 scale per output row (``SCB``).

    Source: bitsandbytes 0.50 ``functional.quantize_4bit`` and ``QuantState``;
    ``nn.modules.Int8Params``.
    """
    if quant == Quant.INT8:
        row_bits = int(catalog.constant("bnb_int8_row_scale_bits"))
        return block(numel) + block(out_features * row_bits // 8)
    bs = int(catalog.constant("bnb_blocksize_4bit"))
    nested = int(catalog.constant("bnb_nested_blocksize"))
    n_abs = -(-numel // bs)
    n_nested = -(-n_abs // nested)
    packed = block(-(-numel // 2))
    # absmax (uint8), nested absmax (fp32), nested code (256 fp32), offset (fp32), code (16 fp32)
    return packed + block(n_abs) + block(n_nested * 4) + block(256 * 4) + block(4) + block(16 * 4)


def _adapters(
    spec: ModelSpec, inventory: tuple[ParamGroup, ...], peft: PeftSpec, lora_keys: set[str]
) -> list[Adapter]:
    """List the trainable groups a PEFT method adds (fp32, PEFT's default)."""
    out: list[Adapter] = []
    if peft.method in (PeftMethod.LORA, PeftMethod.QLORA):
        for g in inventory:
            if g.key in lora_keys:
                out.append(
                    Adapter(f"{g.key}/lora_A", g.module, (peft.r, g.in_features), g.count, 4, g.key)
                )
                out.append(
                    Adapter(
                        f"{g.key}/lora_B", g.module, (g.out_features, peft.r), g.count, 4, g.key
                    )
                )
    elif peft.method == PeftMethod.IA3:
        for g in lora_target_groups(inventory, peft.targets, spec.model_type):
            is_ff = "mlp" in g.key or (g.out_features == spec.hidden_size and "attn" not in g.key)
            width = g.in_features if is_ff else g.out_features
            out.append(Adapter(f"{g.key}/ia3_l", g.module, (width, 1), g.count, 4, g.key))
    elif peft.method == PeftMethod.ADAPTER:
        layers = spec.num_hidden_layers + spec.num_decoder_layers
        d, h = peft.adapter_dim, spec.hidden_size
        for name in ("attn", "mlp"):
            out.append(Adapter(f"adapter/{name}/down", "down", (d, h), layers, 4))
            out.append(Adapter(f"adapter/{name}/down_bias", "down_bias", (d, 1), layers, 4))
            out.append(Adapter(f"adapter/{name}/up", "up", (h, d), layers, 4))
            out.append(Adapter(f"adapter/{name}/up_bias", "up_bias", (h, 1), layers, 4))
    elif peft.method == PeftMethod.PROMPT_TUNING:
        out.append(
            Adapter(
                "prompt/embeddings", "prompt", (peft.num_virtual_tokens, spec.hidden_size), 1, 4
            )
        )
    elif peft.method == PeftMethod.PREFIX:
        layers = spec.num_hidden_layers + spec.num_decoder_layers
        width = 2 * layers * spec.num_key_value_heads * spec.head_dim
        out.append(Adapter("prefix/embeddings", "prefix", (peft.num_virtual_tokens, width), 1, 4))
    return out
