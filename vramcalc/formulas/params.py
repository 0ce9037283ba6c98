"""Parameter, gradient and PEFT-adapter bytes: what sits on the GPU before the first batch.

Every figure is a sum over real tensors, each rounded up to the CUDA caching allocator's
512-byte block (``alloc_block_bytes`` in ``data/constants.json``), because that is what
``torch.cuda.memory_allocated`` counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from vramcalc import catalog
from vramcalc.enums import PeftMethod, Quant
from vramcalc.errors import InvalidConfigError, closest_match
from vramcalc.formulas.counts import ParamGroup
from vramcalc.specs import ModelSpec, PeftSpec, TrainingSpec

__all__ = [
    "Adapter",
    "LoraTarget",
    "ParamPlan",
    "Stored",
    "Trainable",
    "block",
    "dtype_bytes",
    "lora_target_groups",
    "lora_targets",
    "plan_params",
]


def block(nbytes: int | float) -> int:
    """Bytes one tensor occupies in the caching allocator (rounded up to 512 B blocks).

    Source: c10/cuda/CUDACachingAllocator.cpp ``round_size`` (``kMinBlockSize`` = 512).
    """
    n = int(nbytes)
    if n <= 0:
        return 0
    size = _BLOCK[0] or _block_bytes()
    return -(-n // size) * size  # units.round_up, inlined: the walk calls this a lot


_BLOCK = [0]  # the block size once read (block() runs hundreds of times per estimate)


def _block_bytes() -> int:
    _BLOCK[0] = int(catalog.constant("alloc_block_bytes"))
    return _BLOCK[0]


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


class Stored(NamedTuple):
    """One kind of parameter tensor as a sharding engine sees it (``ParamPlan.tensors``).

    ``rows`` and ``stack`` give the stored tensor's dim 0, which FSDP2 splits
    (``sharding._fsdp2_plan``): a fused 3-D MoE parameter ``[experts, out, in]`` stacks
    ``stack = experts`` instances (one per expert, one dim-0 row each); every other tensor is
    one instance (``stack = 1``) with ``rows`` = its dim 0 in torch's layout (``out`` of a
    linear weight, the rows of an embedding, the length of a 1-D norm/bias, the packed bytes
    of 4-bit storage, ``r`` of a LoRA A). Conv1D weights (GPT-2) are stored ``(in, out)``
    but counted with ``rows = out``: the same shard whenever both divide by the shard count.
    """

    key: str
    nbytes: int
    """Bytes of one instance before block rounding."""
    instances: int
    """Instances in the model (or on this rank)."""
    elt_bytes: int
    """Bytes per element; 0 for quantized storage."""
    rows: int
    stack: int


class Trainable(NamedTuple):
    """One kind of trainable tensor.

    Elements of one instance, count, bytes per element, and the stored tensor's dim-0
    ``rows`` / ``stack`` (as in ``Stored``).
    """

    numel: int
    instances: int
    elt_bytes: int
    rows: int
    stack: int


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
    kbit_upcast: bool = False
    """``prepare_model_for_kbit_training`` cast every non-quantized parameter to fp32 (the HF
    QLoRA recipe on one device or DeepSpeed; not LitGPT/torchtune/Unsloth, not FSDP QLoRA)."""
    replicated_bytes: int = 0
    """Device bytes that go with the parameters but are no parameter (the ``QuantState`` of
    FSDP-sharded 4-bit weights): whole on every rank, never sharded or gathered. Included in
    ``param_bytes``."""
    lora_modules: set[str] = field(default_factory=set)
    lora_by_stack: dict[str, set[str]] = field(default_factory=dict)
    """LoRA-adapted module names per stack (a VLM's tower and language model may share
    module names such as ``q_proj``)."""
    trainable_elements: list[Trainable] = field(default_factory=list)
    """Every trainable tensor kind."""
    tensors: list[Stored] = field(default_factory=list)
    """Every parameter tensor kind (weights, biases, quantized weights with their state,
    adapters): what a sharding engine splits and gathers."""


@dataclass(frozen=True)
class LoraTarget:
    """One parameter group PEFT LoRA adapts, and how.

    ``param`` marks a ``target_parameters`` target (PEFT ``ParamWrapper``): a 3-D expert weight
    gets one ``lora_A`` of ``(rank * experts, in)`` and one ``lora_B`` of ``(out, rank * experts)``
    per layer; a 2-D weight (a router) gets ``(rank, in)`` and ``(out, rank)``. ``rank_mult`` is
    PEFT's rank (and alpha) multiplier for a fused weight (``gate_up_proj`` holding two
    projections).
    """

    group: ParamGroup
    param: bool = False
    rank_mult: int = 1


_ALL_LINEAR = ("all-linear", "all_linear")


def _path(group: ParamGroup) -> list[str]:
    """Return the module path of a group below its stack (self_attn, q_proj)."""
    return group.key.split("/")[1:] or [group.module]


def _suffix_match(target: str, path: list[str]) -> bool:
    """PEFT's list match: the dotted ``target`` equals the path or is a suffix of it."""
    parts = target.split(".")
    return len(parts) <= len(path) and path[-len(parts) :] == parts


def _param_path(group: ParamGroup) -> list[str]:
    """Parameter path: an expert group is itself a parameter; others own a ``weight``."""
    return _path(group) if group.expert else [*_path(group), "weight"]


def lora_targets(
    inventory: Iterable[ParamGroup],
    targets: tuple[str, ...],
    model_type: str,
    *,
    target_parameters: tuple[str, ...] = (),
    has_lm_head: bool = False,
    dropout: float = 0.0,
) -> list[LoraTarget]:
    """Return the groups PEFT 0.21 LoRA adapts for ``target_modules`` and ``target_parameters``.

    * ``all-linear``: every ``nn.Linear``/``Conv1D`` (kind ``linear``, not a 3-D expert slice),
      wherever it sits (OPT ``project_in``/``project_out``, BERT pooler, a Llama 4 or PhiMoE
      router, shared experts, Mamba projections), except the output layer.
    * names: PEFT's suffix match on module paths (``q_proj``, ``self_attn.q_proj``); linears,
      embeddings and the LM head (also a tied one, which PEFT wraps as an ``nn.Linear``) can be
      named. A name that matches nothing, or only something LoRA cannot wrap (a norm, a router
      that is a bare parameter, a 3-D expert weight), is an error listing what can be named.
    * MoE models that transformers 5 re-laid out (template ``peft_moe_conversion``: Mixtral,
      Qwen3-MoE, DeepSeek-V2/V3, OLMoE): PEFT first rewrites the v4 names into
      ``target_parameters`` (``gate`` -> ``gate.weight``, ``w1``/``w3`` or ``gate_proj``/``up_proj``
      -> ``gate_up_proj`` with doubled rank, ``w2``/``down_proj`` -> ``down_proj``) and drops them
      from the module targets, so with ``all-linear`` the router and every routed expert train but
      nn.Linear layers named like the old expert projections (shared experts, dense layers) do not.
    * ``target_parameters``: suffix match on parameter paths (``mlp.experts.gate_up_proj``,
      ``gate_up_proj``, ``mlp.gate.weight``); PEFT's ``ParamWrapper`` refuses ``lora_dropout > 0``.

    Source: peft 0.21 ``tuners/tuners_utils.py`` (``check_target_module_exists``,
    ``_maybe_include_all_linear_layers``, ``_inject_parameters``), ``utils/transformers_weight_
    conversion.py`` (``_convert_peft_config_moe``, ``_MOE_TARGET_MODULE_MAPPING``),
    ``tuners/lora/layer.py`` (``ParamWrapper.update_layer``); checked against ``get_peft_model``
    trainable counts on meta-device models (``tests/test_params.py``).
    """
    groups = list(inventory)
    template = catalog.architecture(model_type)
    conversion = template.get("peft_moe_conversion")
    modules: set[str]
    all_linear = tuple(t.lower() for t in targets) in tuple((a,) for a in _ALL_LINEAR)
    linear = [g for g in groups if g.kind == "linear" and not g.expert]
    nameable = [g for g in groups if g.kind in ("linear", "embedding", "lm_head") and not g.expert]
    if has_lm_head and not any(g.kind == "lm_head" for g in groups):
        emb = next((g for g in groups if g.key == "embed/tokens"), None)
        if emb is not None:  # tied head: still an nn.Linear module PEFT can wrap when named
            nameable.append(
                ParamGroup(
                    key="head/lm_head",
                    # the output layer's own name (ModernBertForMaskedLM: ``decoder``)
                    module=str(template.get("tied_head_module", "lm_head")),
                    kind="lm_head",
                    in_features=emb.out_features,
                    out_features=emb.in_features,
                    weight_numel=emb.weight_numel,
                    stack="head",
                    role="vocab",
                )
            )
    if all_linear:
        modules = {g.module for g in linear}
        if conversion:
            modules |= set(conversion["mapping"])
    else:
        modules = set(targets)
    params = set(target_parameters)
    mult: dict[str, int] = {}
    if conversion and modules:
        seen: dict[str, set[str]] = {}
        remaining: set[str] = set()
        for t in sorted(modules):
            old = next((o for o in conversion["mapping"] if t == o or t.endswith("." + o)), None)
            if old is None:
                remaining.add(t)
                continue
            new = conversion["mapping"][old]
            params.add(new)
            seen.setdefault(new, set()).add(old)
        for new, olds in conversion["fused"].items():
            present = seen.get(new, set())
            if 0 < len(present) < len(olds):
                raise InvalidConfigError(
                    f"LoRA targets {', '.join(sorted(present))} of {model_type} are fused with "
                    f"{', '.join(sorted(set(olds) - present))} into one {new} parameter "
                    "(transformers 5); target all of them (PEFT refuses a part)"
                )
            if len(present) == len(olds) > 1:
                mult[new] = len(olds)
        modules = remaining
    chosen: list[LoraTarget] = []
    if all_linear:
        chosen += [LoraTarget(g) for g in linear if g.module in modules]
    else:
        for t in sorted(modules):
            hits = [g for g in nameable if g.module == t or _suffix_match(t, _path(g))]
            if not hits:
                names = sorted({g.module for g in nameable})
                near = closest_match(t, names)
                hint = f" (did you mean '{near}'?)" if near else ""
                raise InvalidConfigError(
                    f"LoRA target '{t}' names no linear or embedding module of {model_type}"
                    f"{hint}; accepted: {', '.join(names)} or all-linear"
                    + (
                        "; MoE expert weights need target_parameters"
                        if any(g.expert for g in groups)
                        else ""
                    )
                )
            chosen += [LoraTarget(g) for g in hits if all(c.group.key != g.key for c in chosen)]
    for t in sorted(params):
        hits = [g for g in groups if _suffix_match(t, _param_path(g))]
        if not hits:
            names = sorted({".".join(_param_path(g)[-2:]) for g in groups if g.expert})
            raise InvalidConfigError(
                f"LoRA target_parameters '{t}' names no parameter of {model_type}; accepted: "
                + (", ".join(names) if names else "a module's weight, e.g. self_attn.q_proj.weight")
            )
        for g in hits:
            if all(c.group.key != g.key for c in chosen):
                chosen.append(LoraTarget(g, param=True, rank_mult=mult.get(t, 1)))
    refused = set(template.get("peft_incompatible_modules", ()))
    bad = sorted({c.group.module for c in chosen} & refused)
    if bad:
        raise InvalidConfigError(
            f"LoRA on {', '.join(bad)} of {model_type} is refused by PEFT (incompatible with "
            "Mamba-based models); name the other linear layers instead of "
            + ("all-linear" if all_linear else ", ".join(bad))
        )
    if dropout > 0 and any(c.param for c in chosen):
        raise InvalidConfigError(
            f"LoRA dropout {dropout} with target_parameters ({model_type} MoE weights): PEFT's "
            "ParamWrapper does not support lora_dropout; accepted: dropout=0"
        )
    return chosen


def lora_target_groups(
    inventory: Iterable[ParamGroup], targets: tuple[str, ...], model_type: str
) -> list[ParamGroup]:
    """Return the groups a LoRA ``target_modules`` list reaches (see ``lora_targets``)."""
    return [t.group for t in lora_targets(inventory, targets, model_type)]


def plan_params(
    spec: ModelSpec,
    inventory: tuple[ParamGroup, ...],
    training: TrainingSpec,
    *,
    sharded_quant: bool = False,
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
    * ``sharded_quant`` (4-bit QLoRA under FSDP, PEFT's FSDP+QLoRA recipe): the packed
      weights are stored in the compute dtype (``bnb_4bit_quant_storage``) so FSDP flattens
      and shards them like any parameter, ``prepare_model_for_kbit_training`` is not called
      (TRL skips it for sharded QLoRA; it would upcast and break FSDP's uniform dtypes), so
      the other parameters keep ``param_dtype``; each quantized weight's ``QuantState``
      (absmax, nested absmax, codes, offset) is not a parameter: it stays whole on every
      rank (``ParamPlan.replicated_bytes``) and only the packed storage is in ``tensors``.
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
    recipe = training.recipe
    sharded_quant = sharded_quant and quantized and quant != Quant.INT8
    # prepare_model_for_kbit_training: fp32 for the rest (not in LitGPT/torchtune/Unsloth, and
    # not called for FSDP-sharded QLoRA)
    plan.kbit_upcast = quantized and recipe.kbit_upcast and not sharded_quant
    other_bytes = 4 if plan.kbit_upcast else pb
    full = peft is None
    lora: list[LoraTarget] = []
    if peft is not None and peft.method in (PeftMethod.LORA, PeftMethod.QLORA):
        lora = lora_targets(
            inventory,
            peft.targets,
            spec.model_type,
            target_parameters=peft.target_parameters,
            has_lm_head=spec.has_lm_head,
            dropout=peft.dropout,
        )
        if training.vision is not None and training.vision.freeze:
            # --freeze-vision with LoRA: no adapters in the tower (PEFT target_modules
            # restricted to the language model, e.g. a regex over language_model)
            lora = [t for t in lora if t.group.stack != "vision"]
        for t in lora:
            plan.lora_modules.add(t.group.module)
            plan.lora_by_stack.setdefault(t.group.stack, set()).add(t.group.module)
    other_key = f"params/{_dtype_name(other_bytes)}"
    vision = training.vision
    for g in inventory:
        head_q = g.kind == "lm_head" and recipe.quant_lm_head
        quant_this = quantized and (g.kind == "linear" or head_q) and not g.expert
        n_w, n_b = g.weight_numel, g.bias_numel
        # --freeze-vision: the tower's weights do not train (the projector still does)
        trainable = full and not (vision is not None and vision.freeze and g.stack == "vision")
        # instances that get no gradient although they train: outputs that never reach the
        # loss (ParamGroup.idle), or the whole image path of a batch without images; their
        # .grad stays None, so torch.optim keeps no state for them either
        # (torch/optim/adamw.py _init_group skips ``p.grad is None``)
        no_image = vision is not None and vision.images == 0 and g.stack in ("vision", "projector")
        gc = 0 if no_image else g.count - g.idle
        if vision is not None and vision.images == 0 and g.stack == "decoder":
            # Llama-3.2-Vision skips its cross-attention layers without images
            # (MllamaTextModel.forward): their own weights and their share of the per-layer
            # norms and MLP get no gradient
            n_cross = int(spec.arch.get("cross_layers") or 0)
            if n_cross and "cross_attn" in g.key:
                gc = 0
            elif n_cross and g.count == spec.num_hidden_layers:
                gc = g.count - n_cross
        if quant_this:
            assert quant is not None
            wbytes = _quantized_weight_bytes(
                n_w, g.out_features, quant, double_quant=recipe.double_quant
            )
            plan.quantized_linear_numel += n_w * g.count
            key = f"params/{quant.value}"
        else:
            wbytes = block(n_w * other_bytes)
            key = other_key
        plan.details[key] = plan.details.get(key, 0) + wbytes * g.count
        plan.param_bytes += wbytes * g.count
        one = wbytes if quant_this else n_w * other_bytes
        if quant_this and sharded_quant:
            one = _packed_4bit_bytes(n_w)
            plan.replicated_bytes += (wbytes - block(one)) * g.count
        stack = g.experts if g.expert else 1
        if stack > 1:
            rows = b_rows = stack
        else:
            rows = g.in_features if g.kind == "embedding" else g.out_features or n_w
            b_rows = n_b
        if quant_this:
            rows = one  # bitsandbytes packs 4-bit storage as a [numel / 2, 1] uint8 tensor
        plan.tensors.append(
            Stored(g.key, one, g.count, 0 if quant_this else other_bytes, rows, stack)
        )
        if n_b:
            bias = Stored(g.key, n_b * other_bytes, g.count, other_bytes, b_rows, stack)
            plan.tensors.append(bias)
            bb = block(n_b * other_bytes)
            plan.details[other_key] = plan.details.get(other_key, 0) + bb * g.count
            plan.param_bytes += bb * g.count
        if g.kind == "linear":
            plan.largest_linear_weight = max(plan.largest_linear_weight, n_w)
        plan.n_params += g.numel
        if trainable:
            plan.trainable_keys.add(g.key)
            plan.n_trainable += (n_w + n_b) * g.count
        if trainable and gc:
            wb = wbytes if pb == other_bytes and not quant_this else block(n_w * pb)
            plan.grad_tensors.append((wb, gc, 0))
            plan.trainable_elements.append(Trainable(n_w, gc, pb, rows, stack))
            plan.largest_trainable = max(plan.largest_trainable, wb)
            if g.kind in ("norm", "other") and n_w <= spec.hidden_size:
                plan.nodecay_bytes += wb * gc
            else:
                plan.decay_bytes += wb * gc
            plan.n_trainable_tensors += gc
            if n_b:
                bb = block(n_b * pb)
                plan.grad_tensors.append((bb, gc, 0))
                plan.trainable_elements.append(Trainable(n_b, gc, pb, b_rows, stack))
                plan.nodecay_bytes += bb * gc
                plan.n_trainable_tensors += gc
    if peft is not None:
        ab = pb if recipe.adapter_dtype == "base" else 4
        plan.adapters = _adapters(spec, inventory, peft, lora, ab)
        for a in plan.adapters:
            numel = a.shape[0] * a.shape[1]
            plan.tensors.append(
                Stored(a.key, numel * a.bytes_per_elt, a.count, a.bytes_per_elt, a.shape[0], 1)
            )
            plan.param_bytes += a.tensor_bytes
            akey = f"params/adapters_{_dtype_name(a.bytes_per_elt)}"
            plan.details[akey] = plan.details.get(akey, 0) + a.tensor_bytes
            plan.trainable_keys.add(a.key)
            one = block(a.shape[0] * a.shape[1] * a.bytes_per_elt)
            plan.grad_tensors.append((one, a.count, 1))
            tr = Trainable(numel, a.count, a.bytes_per_elt, a.shape[0], 1)
            plan.trainable_elements.append(tr)
            plan.largest_trainable = max(plan.largest_trainable, one)
            if a.shape[1] == 1 or (a.shape[0] == 1 and a.module.endswith("bias")):
                plan.nodecay_bytes += a.tensor_bytes
            else:
                plan.decay_bytes += a.tensor_bytes
            plan.n_params += a.numel
            plan.n_trainable += a.numel
            plan.n_trainable_tensors += a.count
    return plan


_DTYPE_NAMES = {4: "fp32", 2: "16bit", 1: "int8"}


def _dtype_name(nbytes: int) -> str:
    return _DTYPE_NAMES.get(nbytes, f"{nbytes}B")


def _quantized_weight_bytes(
    numel: int, out_features: int, quant: Quant, *, double_quant: bool = True
) -> int:
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
    packed = block(_packed_4bit_bytes(numel))
    if not double_quant:  # compress_statistics=False: one fp32 absmax per block, the code
        return packed + block(n_abs * 4) + block(16 * 4)
    # absmax (uint8), nested absmax (fp32), nested code (256 fp32), offset (fp32), code (16 fp32)
    return packed + block(n_abs) + block(n_nested * 4) + block(256 * 4) + block(4) + block(16 * 4)


def _packed_4bit_bytes(numel: int) -> int:
    """Bytes of a 4-bit packed weight (two values per byte), before block rounding.

    Source: bitsandbytes 0.50 ``_ops.py`` (``quantize_4bit``: ``(numel + 1) // (2 *
    itemsize)`` elements of ``quant_storage``).
    """
    return -(-numel // 2)


def _adapters(
    spec: ModelSpec,
    inventory: tuple[ParamGroup, ...],
    peft: PeftSpec,
    lora: list[LoraTarget],
    ab: int = 4,
) -> list[Adapter]:
    """List the trainable groups a PEFT method adds (``ab`` bytes: fp32, PEFT's default)."""
    out: list[Adapter] = []
    if peft.method in (PeftMethod.LORA, PeftMethod.QLORA):
        for t in lora:
            g = t.group
            rank = peft.r * t.rank_mult
            experts = g.experts if t.param and g.expert else 1
            width, count = rank * experts, g.count // experts
            out.append(
                Adapter(f"{g.key}/lora_A", g.module, (width, g.in_features), count, ab, g.key)
            )
            out.append(
                Adapter(f"{g.key}/lora_B", g.module, (g.out_features, width), count, ab, g.key)
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
