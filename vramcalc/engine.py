"""The estimate: resolve a request, walk one training step, report the peaks.

``estimate(request) -> MemoryReport`` is the one entry point the CLI, the REST service and the
Python API share. The walk follows a step as PyTorch executes it -- load, forward layer by
layer, loss, backward layer by layer (activations freed while gradients appear), optimizer
step (states created lazily on step 1), ``zero_grad(set_to_none=True)`` -- for the first step
and the steady state, and takes the maximum of live bytes. The three peaks are then:
allocated (live tensors, 512 B blocks), reserved (allocator segments), device (reserved + CUDA
context + workspaces + memory outside PyTorch's allocator such as paged optimizer states).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from vramcalc import __version__, catalog
from vramcalc.checks import check_global_batch, check_request
from vramcalc.enums import (
    DType,
    MixedPrecision,
    Offload,
    PeftMethod,
    Phase,
    Quant,
    Task,
    ZeroStage,
)
from vramcalc.errors import InvalidConfigError, VramcalcError
from vramcalc.formulas.activations import ActivationProfile, activation_profile
from vramcalc.formulas.counts import ParamGroup, param_inventory
from vramcalc.formulas.optimizer import OptimizerPlan, plan_optimizer
from vramcalc.formulas.params import ParamPlan, block, dtype_bytes, plan_params
from vramcalc.report import (
    Breakdown,
    CostReport,
    FitReport,
    MemoryReport,
    ModelSummary,
    Peak,
    TimelineEvent,
)
from vramcalc.specs import (
    MAX_BATCH,
    CostSpec,
    EstimateRequest,
    GpuSpec,
    HardwareSpec,
    LoraOptions,
    ModelSpec,
    ParallelSpec,
    PeftSpec,
    TrainingSpec,
)
from vramcalc.units import round_up

__all__ = ["Resolved", "estimate", "fit", "resolve"]


@dataclass(frozen=True)
class Resolved:
    """A request turned into the specs the formulas read."""

    model: ModelSpec
    training: TrainingSpec
    parallel: ParallelSpec
    hardware: HardwareSpec
    cost: CostSpec
    notes: tuple[str, ...] = ()


# ----------------------------------------------------------------------------- resolve


def _lora_spec(opts: LoraOptions, spec: ModelSpec, method: PeftMethod) -> PeftSpec:
    from vramcalc.hf import default_lora_targets

    targets = opts.targets
    if not targets:
        targets = default_lora_targets(spec.model_type)
        if not targets:
            raise InvalidConfigError(
                f"PEFT has no default LoRA targets for model_type '{spec.model_type}'; "
                "pass targets=..., e.g. targets=all-linear"
            )
    alpha = opts.alpha if opts.alpha is not None else float(catalog.constant("lora_default_alpha"))
    return PeftSpec(
        method=method, r=opts.r, alpha=alpha, dropout=opts.dropout, targets=tuple(targets)
    )


def _peft(req: EstimateRequest, spec: ModelSpec) -> PeftSpec | None:
    if req.lora is not None:
        return _lora_spec(req.lora, spec, PeftMethod.LORA)
    if req.qlora is not None:
        return _lora_spec(req.qlora, spec, PeftMethod.QLORA)
    if req.adapter is not None:
        return PeftSpec(method=PeftMethod.ADAPTER, adapter_dim=req.adapter.dim)
    if req.prefix is not None:
        return PeftSpec(method=PeftMethod.PREFIX, num_virtual_tokens=req.prefix.tokens)
    if req.prompt_tuning is not None:
        return PeftSpec(
            method=PeftMethod.PROMPT_TUNING, num_virtual_tokens=req.prompt_tuning.tokens
        )
    if req.ia3:
        targets = ia3_targets(spec)
        return PeftSpec(method=PeftMethod.IA3, targets=targets)
    return None


def ia3_targets(spec: ModelSpec) -> tuple[str, ...]:
    """PEFT's default IA3 targets: key, value and the MLP down projection (by module name).

    Source: peft 0.21 ``utils/constants.py``
    (``TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING``).
    """
    names = {g.module for g in param_inventory(spec) if g.kind == "linear"}
    candidates: tuple[str, ...] = ("k_proj", "v_proj", "down_proj", "key", "value", "c_attn")
    candidates += ("c_proj", "query_key_value", "fc2", "dense_4h_to_h", "wo", "k", "v")
    wanted = [n for n in candidates if n in names]
    return tuple(wanted) or tuple(sorted(names))


def resolve(request: EstimateRequest | Mapping[str, Any]) -> Resolved:
    """Turn a request into model, training, parallel, hardware and cost specs.

    Raises:
        UnknownNameError: unknown model, optimizer or GPU (with the closest match).
        InvalidConfigError: an impossible combination of options.

    """
    req = request if isinstance(request, EstimateRequest) else EstimateRequest(**request)
    check_request(req)  # bounds, names and flag/config contradictions (vramcalc/checks.py)
    from vramcalc.hf import resolve_model

    spec = resolve_model(req.model)
    notes: list[str] = []
    catalog.optimizer(req.optim)  # unknown names fail early with the closest match
    quant = req.quant
    if req.qlora is not None:
        if quant is not None and quant not in (Quant.NF4, Quant.FP4):
            raise InvalidConfigError(
                f"--qlora quantizes the base to 4 bit and cannot be combined with --quant "
                f"{quant.value}; accepted with --qlora: nf4, fp4 (or use --lora with --quant int8)"
            )
        quant = quant or Quant.NF4
    if (
        quant is not None
        and req.task == Task.TRAIN
        and req.lora is None
        and req.qlora is None
        and not _has_peft(req)
    ):
        raise InvalidConfigError(
            f"--quant {quant.value} freezes the base in bitsandbytes storage, which cannot be "
            "fully fine-tuned; add a PEFT method (--lora/--qlora/--ia3/...)"
        )
    peft = _peft(req, spec)
    dtype = req.dtype
    mp = req.mixed_precision
    if mp != MixedPrecision.NO and dtype != DType.FP32:
        notes.append(
            f"--mixed-precision {mp.value} over {dtype.value} weights: autocast computes in "
            f"{mp.value}; weights stay {dtype.value}"
        )
    if req.deepspeed is not None:
        from vramcalc.dsconfig import parallel_from_deepspeed

        ds = parallel_from_deepspeed(
            req.deepspeed,
            gpus_per_node=req.gpus,
            nodes=req.nodes,
            hidden_size=spec.hidden_size,
            mixed_precision=mp.value,
            batch_size=req.batch_size,
            grad_accum=req.grad_accum,
        )
        parallel = ParallelSpec(
            zero_stage=ds.zero_stage,
            offload_optimizer=ds.offload_optimizer,
            offload_param=ds.offload_param,
            gpus_per_node=req.gpus,
            nodes=req.nodes,
            reduce_bucket_size=ds.reduce_bucket_size,
            allgather_bucket_size=ds.allgather_bucket_size,
            stage3_prefetch_bucket_size=ds.stage3_prefetch_bucket_size,
            stage3_max_live_parameters=ds.stage3_max_live_parameters,
            stage3_param_persistence_threshold=ds.stage3_param_persistence_threshold,
            deepspeed_precision=ds.precision,
        )
        notes.extend(ds.notes)
    else:
        if req.offload_param != Offload.NONE and req.zero != ZeroStage.PARAMETERS:
            raise InvalidConfigError(
                f"--offload-param {req.offload_param.value} needs --zero 3 (got --zero "
                f"{int(req.zero)}); DeepSpeed offloads parameters only in stage 3"
            )
        if req.offload_optimizer != Offload.NONE and req.zero == ZeroStage.DISABLED:
            raise InvalidConfigError(
                f"--offload-optimizer {req.offload_optimizer.value} needs --zero 1, 2 or 3"
            )
        ds_prec: Any = None
        if req.zero != ZeroStage.DISABLED:
            ds_prec = {"no": "fp32", "fp16": "fp16", "bf16": "bf16"}[mp.value]
        parallel = ParallelSpec(
            zero_stage=req.zero,
            offload_optimizer=req.offload_optimizer,
            offload_param=req.offload_param,
            gpus_per_node=req.gpus,
            nodes=req.nodes,
            reduce_bucket_size=int(catalog.constant("deepspeed_reduce_bucket_size")),
            allgather_bucket_size=int(catalog.constant("deepspeed_allgather_bucket_size")),
            stage3_prefetch_bucket_size=int(
                catalog.constant("deepspeed_stage3_prefetch_bucket_size")
            ),
            stage3_max_live_parameters=int(
                catalog.constant("deepspeed_stage3_max_live_parameters")
            ),
            stage3_param_persistence_threshold=int(
                catalog.constant("deepspeed_stage3_param_persistence_threshold")
            ),
            deepspeed_precision=ds_prec,
        )
    if parallel.zero_stage != ZeroStage.DISABLED and parallel.deepspeed_precision in (
        "fp16",
        "bf16",
    ):
        # DeepSpeed's fp16/bf16 engines cast the module to 16 bit (no autocast) and keep the
        # fp32 master copy inside the optimizer.
        dtype = DType.BF16 if parallel.deepspeed_precision == "bf16" else DType.FP16
        mp = MixedPrecision.NO
    training = TrainingSpec(
        task=req.task,
        batch_size=req.batch_size,
        seq_len=req.seq_len,
        grad_accum=req.grad_accum,
        param_dtype=dtype,
        mixed_precision=mp,
        optim=req.optim,
        peft=peft,
        quant=quant,
        grad_ckpt=req.grad_ckpt,
        attn=req.attn,
    )
    if (
        spec.max_position_embeddings
        and req.seq_len > spec.max_position_embeddings
        and (spec.position_embedding == "learned")
    ):
        raise InvalidConfigError(
            f"--seq-len {req.seq_len} exceeds {spec.name}'s learned position table "
            f"(max_position_embeddings={spec.max_position_embeddings})"
        )
    gpu = catalog.gpu(req.gpu) if req.gpu else None
    cost = CostSpec(
        tokens=req.tokens,
        epochs=req.epochs,
        mfu=req.mfu,
        price_usd_per_gpu_hour=req.price_per_gpu_hour,
    )
    return Resolved(spec, training, parallel, HardwareSpec(gpu=gpu), cost, tuple(notes))


def _has_peft(req: EstimateRequest) -> bool:
    return any(x is not None for x in (req.adapter, req.prefix, req.prompt_tuning)) or req.ia3


# ----------------------------------------------------------------------------- walk


@dataclass
class _Walk:
    """Timeline under construction.

    Per-block events are buffered and only the first, the last and the largest are kept:
    within a loop over identical blocks the live bytes change linearly, so nothing between
    the ends can be a peak that those three miss.
    """

    events: list[TimelineEvent]
    pending: list[tuple[int, Phase, str, dict[str, int]]] | None = None

    @staticmethod
    def _event(step: int, phase: Phase, event: str, comps: dict[str, int]) -> TimelineEvent:
        clean = {k: int(v) for k, v in comps.items()}
        return TimelineEvent.model_construct(
            step=step,
            phase=phase,
            event=event,
            allocated_bytes=sum(clean.values()),
            components=clean,
        )

    def add(self, step: int, phase: Phase, event: str, comps: dict[str, int]) -> None:
        self.flush()
        self.events.append(self._event(step, phase, event, comps))

    def block(self, step: int, phase: Phase, event: str, comps: dict[str, int]) -> None:
        if self.pending is None:
            self.pending = []
        self.pending.append((step, phase, event, comps))

    def flush(self) -> None:
        if not self.pending:
            self.pending = None
            return
        p = self.pending
        top = max(range(len(p)), key=lambda i: sum(p[i][3].values()))
        for i in sorted({0, top, len(p) - 1}):
            self.events.append(self._event(*p[i]))
        self.pending = None


def _grad_split(
    spec: ModelSpec, inventory: tuple[ParamGroup, ...], plan: ParamPlan
) -> tuple[int, int, int, int]:
    """Gradient bytes by where backward creates them: (head, per block, embeddings, other)."""
    head = embed = blocks = 0
    for g in inventory:
        if g.key not in plan.trainable_keys:
            continue
        pb = plan.trainable_elements[0][2] if plan.trainable_elements else 4
        b = (
            block(g.weight_numel * pb) + (block(g.bias_numel * pb) if g.bias_numel else 0)
        ) * g.count
        if g.stack == "head":
            head += b
        elif g.stack == "embed":
            embed += b
        else:
            blocks += b
    for a in plan.adapters:
        blocks += a.tensor_bytes
    if (
        spec.tie_word_embeddings
        and spec.has_lm_head
        and not any(g.kind == "lm_head" for g in inventory)
    ):
        # a tied head's weight gradient is created at the LM-head backward; the embedding's
        # backward later adds a second V x H buffer that is accumulated into it
        tokens = next((g for g in inventory if g.key == "embed/tokens"), None)
        if tokens is not None and tokens.key in plan.trainable_keys:
            pb = plan.trainable_elements[0][2] if plan.trainable_elements else 4
            tb = block(tokens.weight_numel * pb)
            head += tb
            embed -= tb
    n_blocks = spec.num_hidden_layers + (spec.num_decoder_layers if spec.is_encoder_decoder else 0)
    return head, blocks // max(n_blocks, 1), embed, blocks - (blocks // max(n_blocks, 1)) * n_blocks


def _model_states(
    res: Resolved, plan: ParamPlan, opt: OptimizerPlan
) -> tuple[int, int, int, int, int, dict[str, int], list[str]]:
    """Per-GPU (params, grads, states, step temps, cpu bytes, details, notes) after ZeRO.

    DeepSpeed ZeRO with fp16/bf16 keeps 16-bit parameters and gradients on the GPU and an fp32
    master copy, the optimizer states and an fp32 gradient partition inside the optimizer;
    stage 1 partitions the optimizer side over the data-parallel group, stage 2 also the
    16-bit gradients, stage 3 also the parameters (plus live/prefetched parameters). Offload
    moves the optimizer side (and, in stage 3, parameters) to pinned CPU memory.

    Source: Rajbhandari et al. 2020 (ZeRO), Section 5 and Figure 1; DeepSpeed 0.19
    ``runtime/zero/stage_1_and_2.py`` and ``stage3.py``; its estimators
    ``estimate_zero2_model_states_mem_needs`` / ``estimate_zero3_model_states_mem_needs``.
    """
    par = res.parallel
    n = par.world_size
    details: dict[str, int] = {}
    notes: list[str] = []
    P = plan.param_bytes
    G = sum(b * c for b, c, _ in plan.grad_tensors) if opt.stores_grads else 0
    opt_b = opt.state_bytes
    temp = opt.step_temp_bytes
    cpu = 0
    stage = par.zero_stage
    if stage == ZeroStage.DISABLED:
        if n > 1:
            details["gradients/ddp_buckets"] = G
            notes.append(
                "DDP keeps a second copy of the gradients in its buckets "
                "(gradient_as_bucket_view=False, the Trainer default)"
            )
            G += G
        return P, G, opt_b, temp, 0, details, notes
    psi_t = plan.n_trainable
    sixteen = par.deepspeed_precision in ("fp16", "bf16")
    if sixteen:
        # the optimizer steps the fp32 master partition: its states and work lists are fp32
        plan32 = replace(
            plan, trainable_elements=[(n, c, 4) for n, c, _ in plan.trainable_elements]
        )
        opt32 = plan_optimizer(opt.name, plan32)
        opt_b, temp = opt32.state_bytes + opt32.paged_bytes, opt32.step_temp_bytes
    master = 4 * psi_t if sixteen else 0
    fp32_grads = 4 * psi_t if sixteen else 0
    opt_side = master + opt_b + fp32_grads
    if stage >= ZeroStage.OPTIMIZER_STATES:
        opt_side = -(-opt_side // n)
        temp = -(-temp // n)
    grads = G
    if stage >= ZeroStage.GRADIENTS:
        grads = -(-G // n)
    bucket_b = 2 if sixteen else 4
    buckets = block(par.reduce_bucket_size * bucket_b) if stage in (1, 2) else 0
    params = P
    if stage == ZeroStage.PARAMETERS:
        live = min(par.stage3_prefetch_bucket_size, plan.n_params) * bucket_b
        params = -(-P // n) + live
        buckets = block(min(par.reduce_bucket_size, psi_t) * bucket_b)
        details["params/zero3_prefetch"] = live
        if par.offload_param != Offload.NONE:
            cpu += P
            params = live
    if par.offload_optimizer != Offload.NONE:
        cpu += opt_side
        details["optimizer/offloaded_to_cpu"] = 0
        opt_side = 0
        temp = 0
        notes.append(
            f"optimizer states, fp32 master weights and fp32 gradients are in "
            f"{par.offload_optimizer.value} memory ({cpu} bytes)"
        )
    details["optimizer/master_fp32"] = (
        -(-master // n) if par.offload_optimizer == Offload.NONE else 0
    )
    details["gradients/zero_buckets"] = buckets
    return params, grads + buckets, opt_side, temp, cpu, details, notes


def _walk(
    res: Resolved,
    inventory: tuple[ParamGroup, ...],
    plan: ParamPlan,
    prof: ActivationProfile | None,
    opt: OptimizerPlan | None,
    emb_buffers: int = 1,
) -> tuple[list[TimelineEvent], int, dict[str, int], list[str]]:
    tr = res.training
    w = _Walk([])
    inputs = 2 * block(tr.batch_size * tr.seq_len * 8)
    if tr.task == Task.INFERENCE or prof is None or opt is None:
        return _inference_walk(res, plan, inputs, w)
    params, G, opt_b, temp, cpu, zdetails, notes = _model_states(res, plan, opt)
    head_g, layer_g, embed_g, other_g = _grad_split(res.model, inventory, plan)
    zero = res.parallel.zero_stage
    n = res.parallel.world_size
    grad_scale = 1.0
    if G and (head_g + layer_g * len(prof.layer_saved) + embed_g + other_g):
        base_g = head_g + layer_g * len(prof.layer_saved) + embed_g + other_g
        grad_scale = G / base_g if zero < ZeroStage.GRADIENTS else 1.0 / n
    hg, lg, eg = int(head_g * grad_scale), int(layer_g * grad_scale), int(embed_g * grad_scale)
    embed_tr = 0
    if (
        res.model.tie_word_embeddings
        and head_g
        and opt.stores_grads
        and "embed/tokens" in plan.trainable_keys
    ):
        tok = next(g for g in inventory if g.key == "embed/tokens")
        embed_tr = emb_buffers * block(tok.weight_numel * plan.trainable_elements[0][2])
    elif eg and emb_buffers > 1:
        tok = next(g for g in inventory if g.key == "embed/tokens")
        embed_tr = (emb_buffers - 1) * block(tok.weight_numel * plan.trainable_elements[0][2])
    if not opt.stores_grads:
        hg = lg = eg = 0
    accum = tr.grad_accum > 1
    L = len(prof.layer_saved)
    ckpt = tr.grad_ckpt
    for step in (1, 2):
        states = opt_b if step == 2 else 0
        g_fwd = G if (accum and step == 2) else 0

        def comps(act: int, grads: int, st: int = states, extra_opt: int = 0) -> dict[str, int]:
            return {
                "params": params + inputs,
                "activations": act,
                "gradients": grads,
                "optimizer": st + extra_opt,
            }

        if step == 1:
            w.add(1, Phase.LOAD, "model loaded", comps(0, 0))
        # forward
        act = prof.embed_saved
        amp_live = 0
        for i in range(L):
            layer = prof.ckpt_input[i] if ckpt else prof.layer_saved[i]
            transient = (prof.layer_saved[i] if ckpt else 0) + prof.layer_fwd_extra[i]
            amp_live += prof.amp_copy_per_layer[i] if prof.amp_copy_per_layer else 0
            w.block(
                step,
                Phase.FORWARD,
                f"block {i} forward",
                comps(act + amp_live + layer + transient, g_fwd),
            )
            act += layer
        act += prof.head_saved + amp_live + prof.amp_head_copy
        w.add(step, Phase.FORWARD, "final norm and LM head", comps(act, g_fwd))
        w.add(
            step,
            Phase.LOSS,
            "loss (fp32 logits, log-softmax)",
            comps(act + prof.logits_fwd + prof.loss_saved, g_fwd),
        )
        # backward
        if ckpt:  # autocast's weight cache was cleared when forward left autocast
            act -= amp_live
        w.add(
            step,
            Phase.BACKWARD,
            "loss backward",
            comps(act + prof.loss_saved + prof.loss_bwd_extra, g_fwd),
        )
        grads = hg if not accum or step == 1 else G
        if accum and step == 2:
            grads = G
        act -= prof.head_saved + prof.amp_head_copy
        w.add(
            step,
            Phase.BACKWARD,
            "LM head backward",
            comps(act + prof.head_saved + prof.head_bwd_extra, grads),
        )
        for i in reversed(range(L)):
            layer = prof.ckpt_input[i] if ckpt else prof.layer_saved[i]
            amp_i = prof.amp_copy_per_layer[i] if prof.amp_copy_per_layer else 0
            recompute = prof.layer_saved[i] + amp_i if ckpt else 0
            if not (accum and step == 2):
                grads += lg
            w.block(
                step,
                Phase.BACKWARD,
                f"block {i} backward",
                comps(act + recompute + prof.layer_bwd_extra[i], grads),
            )
            act -= layer + (0 if ckpt else amp_i)
        if not (accum and step == 2):
            grads += eg
        grads = max(grads, G) if not (accum and step == 2) else G
        w.add(step, Phase.BACKWARD, "embedding backward", comps(max(act, 0) + embed_tr, grads))
        # optimizer
        clip = block(4) * plan.n_trainable_tensors  # foreach norms in clip_grad_norm_
        w.add(
            step,
            Phase.OPTIMIZER,
            "optimizer step" + (" (states created)" if step == 1 else ""),
            comps(0, G, opt_b, temp + clip),
        )
        w.add(step, Phase.OPTIMIZER, "zero_grad", comps(0, 0, opt_b))
    details = dict(zdetails)
    return w.events, cpu, details, notes


def _inference_walk(
    res: Resolved, plan: ParamPlan, inputs: int, w: _Walk
) -> tuple[list[TimelineEvent], int, dict[str, int], list[str]]:
    """Inference: weights + KV cache + the largest transient (prefill logits).

    Source: MEMORY_MODEL (inference): KV cache 2 * layers * kv_heads * head_dim * tokens *
    batch * bytes.
    """
    spec, tr = res.model, res.training
    cb = dtype_bytes(tr.param_dtype) if tr.mixed_precision == MixedPrecision.NO else 2
    tokens = tr.batch_size * tr.seq_len
    kv = 2 * spec.num_hidden_layers * spec.num_key_value_heads * spec.head_dim * tokens * cb
    logits = block(tokens * spec.vocab_size * cb) + block(tokens * spec.vocab_size * 4)
    comps = {"params": plan.param_bytes + inputs, "activations": 0, "gradients": 0, "optimizer": 0}
    w.add(1, Phase.LOAD, "model loaded", comps)
    w.add(
        1,
        Phase.FORWARD,
        "prefill (KV cache + logits)",
        {**comps, "activations": block(kv) + logits},
    )
    return w.events, 0, {"activations/kv_cache": block(kv), "activations/logits": logits}, []


# ----------------------------------------------------------------------------- overheads


def _overheads(
    res: Resolved, tensors: int, paged: int, *, workspaces: int
) -> tuple[int, int, int, dict[str, int], dict[str, Any]]:
    """Allocated, reserved and device bytes from the live-tensor peak.

    allocated = tensors + cuBLAS workspaces (PyTorch allocates one per handle and stream
    through its caching allocator, so ``max_memory_allocated`` counts them; training uses two
    threads: forward and autograd's backward); reserved = tensors x allocator reserve factor,
    rounded to the 2 MiB segment, plus the workspaces; device = reserved + CUDA context + paged
    (unified-memory) states + other.
    Constants: per GPU family from ``data/calibration.json`` when measured, else the priors in
    ``data/constants.json`` (each with its source).
    """
    gpu = res.hardware.gpu
    cal = catalog.calibration().get("families", {})
    fam = cal.get(gpu.family) if gpu is not None else None
    src = "calibration" if fam else "prior"
    fam = fam or {}
    factor = float(
        fam.get("allocator_reserve_factor", catalog.constant("allocator_reserve_factor"))
    )
    context = int(fam.get("cuda_context_bytes", catalog.constant("cuda_context_bytes")))
    hopper = gpu is not None and gpu.family.lower() in ("hopper", "blackwell")
    ws = int(
        catalog.constant("cublas_workspace_bytes_sm90" if hopper else "cublas_workspace_bytes")
    )
    ws *= workspaces
    seg = int(catalog.constant("alloc_small_segment_bytes"))
    allocated = tensors + ws
    reserved = round_up(int(tensors * factor), seg) + ws
    other = int(catalog.constant("nvml_other_bytes"))
    device = reserved + context + paged + other
    details = {
        "base/cuda_context": context,
        "base/cublas_workspace": ws,
        "base/allocator_reserve": reserved - allocated,
    }
    if paged:
        details["optimizer/paged_unified_memory"] = paged
    assumptions = {
        "allocator_reserve_factor": factor,
        "cuda_context_bytes": context,
        "gpu_constants": src,
    }
    return allocated, reserved, device, details, assumptions


# ----------------------------------------------------------------------------- estimate


def estimate(
    request: EstimateRequest | Mapping[str, Any] | None = None, /, **kwargs: Any
) -> MemoryReport:
    """Estimate peak GPU memory (and time/cost) of one training or inference job.

    Accepts an ``EstimateRequest``, a mapping of its fields, or its fields as keywords:
    ``estimate(model="gpt2-medium", optim="adamw_8bit", lora={"r": 16})``.
    """
    if request is None:
        request = EstimateRequest(**kwargs)
    elif kwargs:
        # exclude_unset: fields the caller never gave stay unset (checks.py compares only
        # explicit flags with a DeepSpeed config)
        base = (
            request.model_dump(exclude_unset=True)
            if isinstance(request, EstimateRequest)
            else dict(request)
        )
        request = EstimateRequest(**{**base, **kwargs})
    req = request if isinstance(request, EstimateRequest) else EstimateRequest(**request)
    return _estimate(req)


def _estimate(
    req: EstimateRequest,
    *,
    optim_impl: str | None = None,
    target: str = "cuda",
    embedding_backward_buffers: int | None = None,
) -> MemoryReport:
    """Estimate one request, with switches for validation harnesses.

    Args:
        req: the request.
        optim_impl: force the optimizer implementation (``foreach``, ``fused``, ``for_loop``)
            a traced scenario pinned; users get the library default.
        target: ``cuda`` (a real GPU, the default) or ``trace`` (what a fake-tensor trace
            records: no cuBLAS workspaces, and the embedding backward's decomposition).
        embedding_backward_buffers: V x H buffers the embedding backward holds. The CUDA
            kernel (``embedding_dense_backward_cuda``) allocates one; fake-tensor traces run
            the Python decomposition (zeros + out-of-place ``index_put``), which holds two.
            Default: by ``target``.

    """
    if target not in ("cuda", "trace"):
        raise InvalidConfigError(f"target must be cuda or trace, got {target!r}")
    trace = target == "trace"
    if embedding_backward_buffers is None:
        embedding_backward_buffers = 2 if trace else 1
    res = resolve(req)
    spec, tr = res.model, res.training
    inventory = param_inventory(spec)
    plan = plan_params(spec, inventory, tr)
    prof: ActivationProfile | None = None
    opt: OptimizerPlan | None = None
    notes = list(res.notes)
    if tr.task == Task.TRAIN:
        if plan.n_trainable == 0:
            raise InvalidConfigError("nothing is trainable with these options")
        prof = activation_profile(spec, inventory, tr, plan)
        opt = plan_optimizer(tr.optim, plan, impl=optim_impl)
    events, cpu, zdetails, znotes = _walk(
        res, inventory, plan, prof, opt, embedding_backward_buffers
    )
    notes += znotes
    # the first event among equal maxima, as max_memory_allocated records it
    peak_ev = max(events, key=lambda e: e.allocated_bytes)
    tensors = peak_ev.allocated_bytes
    paged = opt.paged_bytes if opt is not None else 0
    n_ws = 0 if trace else (2 if tr.task == Task.TRAIN else 1)
    allocated, reserved, device, base_details, assumptions = _overheads(
        res, tensors, paged, workspaces=n_ws
    )
    comps = peak_ev.components
    breakdown = Breakdown(
        base=device - tensors - paged,
        params=comps.get("params", 0),
        activations=comps.get("activations", 0),
        gradients=comps.get("gradients", 0),
        optimizer=comps.get("optimizer", 0) + paged,
    )
    details: dict[str, int] = {}
    details.update({k: v for k, v in plan.details.items()})
    details["params/inputs"] = (
        comps.get("params", 0) - plan.param_bytes
        if comps.get("params", 0) > plan.param_bytes
        else 0
    )
    if prof is not None:
        details.update(prof.details)
    if opt is not None:
        details.update(opt.details)
        if opt.step_temp_bytes:
            details["optimizer/step_temporaries"] = opt.step_temp_bytes
    details.update(zdetails)
    details.update(base_details)
    if peak_ev.phase != Phase.OPTIMIZER:
        details.pop("optimizer/step_temporaries", None)
    details = _details_at_peak(details, breakdown)
    trainable = plan.n_trainable
    summary = ModelSummary(
        name=spec.name,
        hf_id=spec.hf_id,
        model_type=spec.model_type,
        n_params=spec.n_params or plan.n_params - sum(a.numel for a in plan.adapters),
        n_trainable_params=trainable,
    )
    fit_report = _fit_report(res, device) if res.hardware.gpu is not None else None
    cost_report = _cost(res, inventory, plan, notes)
    notes += _not_modelled(res)
    assumptions.update(
        {
            "param_dtype": tr.param_dtype.value,
            "mixed_precision": tr.mixed_precision.value,
            "optimizer": opt.name if opt else None,
            "optimizer_impl": optim_impl or (str(opt.row.get("temporaries")) if opt else None),
            "attention": tr.attn.value,
            "grad_ckpt": tr.grad_ckpt,
            "zero_stage": int(res.parallel.zero_stage),
            "world_size": res.parallel.world_size,
            "hf_trainer_param_groups": 2,
        }
    )
    return MemoryReport(
        version=__version__,
        model=summary,
        peak=Peak(
            allocated_bytes=allocated,
            reserved_bytes=reserved,
            device_bytes=device,
            phase=peak_ev.phase,
            event=peak_ev.event,
            step=peak_ev.step,
        ),
        breakdown=breakdown,
        details=details,
        timeline=events,
        cpu_bytes=cpu,
        fit=fit_report,
        cost=cost_report,
        assumptions=assumptions,
        notes=notes,
    )


_REST = {
    "base": "base/other",
    "params": "params/other",
    "activations": "activations/temporaries",
    "gradients": "gradients/other",
    "optimizer": "optimizer/other",
}


def _details_at_peak(details: dict[str, int], breakdown: Breakdown) -> dict[str, int]:
    """Make each component's detail rows sum exactly to that component at the peak.

    The rows are computed as totals (every saved activation, every state); at the peak part
    of a component may already be freed (backward) or not yet exist (states before step 1),
    and part may be an operation's temporaries with no row of its own. Where the rows fall
    short the rest becomes ``<component>/temporaries`` (activations) or ``<component>/other``;
    where they exceed the live bytes they are scaled to the live share (identical blocks free
    their activations at the same rate), largest row taking the integer rounding.
    """
    out: dict[str, int] = {}
    for comp in ("base", "params", "activations", "gradients", "optimizer"):
        live = int(getattr(breakdown, comp))
        rows = {k: int(v) for k, v in details.items() if k.split("/", 1)[0] == comp and v > 0}
        total = sum(rows.values())
        if total > live:
            scaled = {k: v * live // total for k, v in rows.items()} if total else {}
            if scaled:
                top = max(scaled, key=lambda k: rows[k])
                scaled[top] += live - sum(scaled.values())
            rows = scaled
        elif live > total:
            rows[_REST[comp]] = rows.get(_REST[comp], 0) + live - total
        out.update({k: v for k, v in rows.items() if v > 0})
    return out


def _not_modelled(res: Resolved) -> list[str]:
    out = []
    tr = res.training
    if (
        tr.attn == Attention_FLASH
        and tr.param_dtype == DType.FP32
        and tr.mixed_precision == MixedPrecision.NO
    ):
        out.append("flash_attention_2 needs fp16/bf16 inputs; fp32 runs use the sdpa kernels")
    if res.parallel.world_size > 1:
        out.append(
            "activation memory is per GPU (data parallel); tensor and pipeline parallelism "
            "are not modelled"
        )
    if tr.quant is not None:
        out.append(
            "the quantized base is assumed loaded through transformers' BitsAndBytesConfig "
            "(quantized layer by layer); scripts that load 16-bit weights first peak higher at load"
        )
    return out


def _cost(
    res: Resolved, inventory: tuple[ParamGroup, ...], plan: ParamPlan, notes: list[str]
) -> CostReport | None:
    if res.cost.tokens is None:
        return None
    gpu = res.hardware.gpu
    if gpu is None:
        notes.append("time and cost need --gpu (the GPU's peak TFLOPS and price)")
        return None
    from vramcalc.cost import estimate_cost

    inv = list(inventory)
    for a in plan.adapters:
        inv.append(
            ParamGroup(
                key=a.key,
                module=a.module,
                kind="linear",
                in_features=a.shape[1],
                out_features=a.shape[0],
                weight_numel=a.shape[0] * a.shape[1],
                count=a.count,
            )
        )
    return estimate_cost(
        res.model, res.training, res.parallel, gpu, res.cost, tuple(inv), plan.trainable_keys
    )


def _fit_report(
    res: Resolved, device: int, max_batch: int | None = None, accum: int | None = None
) -> FitReport:
    gpu = res.hardware.gpu
    assert gpu is not None
    return FitReport(
        gpu=gpu.name,
        gpu_memory_bytes=gpu.memory_bytes,
        usable_bytes=gpu.memory_bytes,
        fits=device <= gpu.memory_bytes,
        headroom_bytes=gpu.memory_bytes - device,
        max_batch_size=max_batch,
        suggested_grad_accum=accum,
    )


def fit(
    request: EstimateRequest | Mapping[str, Any], *, target_global_batch: int | None = None
) -> FitReport:
    """Largest micro-batch that fits ``request.gpu`` (device peak <= the GPU's memory).

    Doubling then bisection over ``batch_size`` (the device peak grows with the batch);
    ``max_batch_size`` is 0 when even batch 1 does not fit. With ``target_global_batch`` the
    suggested gradient accumulation reaches it: ceil(target / (micro-batch x GPUs)).
    """
    req = request if isinstance(request, EstimateRequest) else EstimateRequest(**request)
    check_request(req)
    check_global_batch(target_global_batch)
    if not req.gpu:
        raise InvalidConfigError("--max-batch needs --gpu NAME (see `vramcalc gpus`)")
    gpu: GpuSpec = catalog.gpu(req.gpu)

    def device_at(b: int) -> int:
        r = _estimate(req.model_copy(update={"batch_size": b, "tokens": None}))
        return r.peak.device_bytes

    if device_at(1) > gpu.memory_bytes:
        best = 0
    else:
        lo, hi = 1, 2
        while hi <= MAX_BATCH and device_at(hi) <= gpu.memory_bytes:
            lo, hi = hi, hi * 2
        hi = min(hi, MAX_BATCH + 1)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if device_at(mid) <= gpu.memory_bytes:
                lo = mid
            else:
                hi = mid
        best = lo
    report = _estimate(req.model_copy(update={"batch_size": max(best, 1), "tokens": None}))
    res = resolve(req)
    accum = None
    if target_global_batch and best:
        accum = -(-target_global_batch // (best * res.parallel.world_size))
    out = _fit_report(res, report.peak.device_bytes, best, accum)
    # the search stops at MAX_BATCH: say so instead of reporting the cap as the answer
    return out.model_copy(update={"search_cap": MAX_BATCH if best >= MAX_BATCH else None})


from vramcalc.enums import Attention as _Attention  # noqa: E402

Attention_FLASH = _Attention.FLASH_ATTENTION_2
_ = VramcalcError
