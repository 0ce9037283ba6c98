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
from dataclasses import dataclass
from itertools import accumulate
from operator import add
from typing import TYPE_CHECKING, Any

from vramcalc import __version__, catalog
from vramcalc.checks import check_global_batch, check_request
from vramcalc.enums import (
    DType,
    MixedPrecision,
    PeftMethod,
    Phase,
    Quant,
    ServeEngine,
    Task,
    Trainer,
    ZeroStage,
)
from vramcalc.errors import InvalidConfigError, VramcalcError
from vramcalc.formulas.activations import ActivationProfile, activation_profile, attention_kernels
from vramcalc.formulas.counts import ParamGroup, param_inventory
from vramcalc.formulas.gradients import grad_split
from vramcalc.formulas.layout import (
    Stage,
    rank_inventory,
    rank_spec,
    resolve_parallel,
    stages,
    tp_logits_gather_bytes,
)
from vramcalc.formulas.optimizer import OptimizerPlan, plan_optimizer
from vramcalc.formulas.overhead import overheads
from vramcalc.formulas.params import ParamPlan, block, dtype_bytes, plan_params
from vramcalc.formulas.sharding import RankStates, rank_states
from vramcalc.report import (
    Breakdown,
    CostReport,
    FitReport,
    Layout,
    MemoryReport,
    ModelSummary,
    Peak,
    ServingReport,
)
from vramcalc.specs import (
    MAX_BATCH,
    CostSpec,
    EstimateRequest,
    GpuSpec,
    HardwareSpec,
    InferenceSpec,
    LoraOptions,
    ModelSpec,
    ParallelSpec,
    PeftSpec,
    TrainerSpec,
    TrainingSpec,
    VisionSpec,
    rl_batch_size,
)

if TYPE_CHECKING:  # the trainers' module is imported when a --trainer other than sft runs
    from vramcalc.formulas.trainers import TrainerPlan, TrainerWalk

__all__ = ["Resolved", "estimate", "fit", "resolve"]

INT64_BYTES = 8  # token ids and labels


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
    if not targets and not opts.target_parameters:
        # PEFT allows target_parameters alone; with neither it takes its per-type defaults
        targets = default_lora_targets(spec.model_type)
        if not targets:
            # PEFT refuses all-linear where it refuses some linears (Mamba's out_proj)
            refused = catalog.architecture(spec.model_type).get("peft_incompatible_modules")
            example = "targets=in_proj" if refused else "targets=all-linear"
            raise InvalidConfigError(
                f"PEFT has no default LoRA targets for model_type '{spec.model_type}'; "
                f"pass targets=..., e.g. {example}"
            )
    alpha = opts.alpha if opts.alpha is not None else float(catalog.constant("lora_default_alpha"))
    return PeftSpec(
        method=method,
        r=opts.r,
        alpha=alpha,
        dropout=opts.dropout,
        targets=tuple(targets or ()),
        target_parameters=tuple(opts.target_parameters),
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
    config_notes: list[str] = []
    accelerate_notes: list[str] = []
    # the two readers (and their pydantic models) are imported only when a file is given
    if req.config is not None:
        from vramcalc.trainer_config import apply_config

        req, config_notes = apply_config(req)  # a trainer's config file fills unset fields
    if req.accelerate_config is not None:
        from vramcalc.accelerate_config import apply_accelerate

        req, accelerate_notes = apply_accelerate(req)  # an accelerate YAML fills unset fields
    from vramcalc.hf import model_notes, resolve_model

    spec = resolve_model(req.model)
    notes: list[str] = [*model_notes(req.model), *config_notes, *accelerate_notes]
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
    from vramcalc.kernels import resolve_attention

    attn, attn_notes = resolve_attention(spec.model_type, req.attn)
    notes.extend(attn_notes)
    dtype = req.dtype
    mp = req.mixed_precision
    if mp != MixedPrecision.NO and dtype != DType.FP32:
        notes.append(
            f"--mixed-precision {mp.value} over {dtype.value} weights: autocast computes in "
            f"{mp.value}; weights stay {dtype.value}"
        )
    ds_spec = None
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
        ds_spec = ds.spec()
        notes.extend(ds.notes)
    parallel = resolve_parallel(req, spec, ds_spec)
    zp = parallel.zero.precision if parallel.zero is not None else None
    if parallel.zero_stage != ZeroStage.DISABLED and zp in ("fp16", "bf16"):
        # DeepSpeed's fp16/bf16 engines cast the module to 16 bit (no autocast) and keep the
        # fp32 master copy inside the optimizer.
        dtype = DType.BF16 if zp == "bf16" else DType.FP16
        mp = MixedPrecision.NO
    from vramcalc.frameworks import profile

    fw = profile(req.framework)
    recipe = fw.recipe(req)
    notes.extend(fw.notes(req, recipe))
    tspec = TrainerSpec.from_request(req)
    # GRPOConfig/RLOOConfig default gradient_checkpointing=True (trl 1.16.0 grpo_config.py)
    rl_default_ckpt = req.grad_ckpt or tspec.name in (Trainer.GRPO, Trainer.RLOO)
    seq_len = req.seq_len
    if tspec.max_prompt_length and tspec.max_completion_length:
        # GRPO/RLOO/PPO: a training row is a prompt and its completion
        seq_len = tspec.max_prompt_length + tspec.max_completion_length
    vision, image_tokens = _vision(req, spec)
    if vision is not None and vision.images:
        seq_len += image_tokens
        side = spec.arch.get("vision_image_size")
        fixed = spec.arch.get("vision_resize") == "fixed"
        resized = f" (resized to {side}x{side})" if fixed else ""
        if vision.tiles:
            resized = (
                f" ({vision.used_tiles} of {side}x{side} tile(s), padded to {vision.tiles})"
            )
        notes.append(
            f"{vision.images} image(s) of {vision.height}x{vision.width}{resized} per row: "
            f"{vision.patches} vision-tower tokens and {vision.tokens} language-model tokens "
            f"each; sequence {seq_len} = {seq_len - image_tokens} text + {image_tokens} image"
            + ("; vision tower frozen" if vision.freeze else "")
        )
    training = TrainingSpec(
        task=req.task,
        batch_size=rl_batch_size(req),
        seq_len=seq_len,
        target_len=req.target_len,
        grad_accum=req.grad_accum,
        param_dtype=dtype,
        mixed_precision=mp,
        optim=req.optim,
        peft=peft,
        quant=quant,
        grad_ckpt=req.grad_ckpt if "grad_ckpt" in req.model_fields_set else rl_default_ckpt,
        attn=attn,
        inference=InferenceSpec.from_request(req),
        trainer=tspec,
        recipe=recipe,
        vision=vision,
    )
    if req.target_len is not None and not spec.is_encoder_decoder:
        raise InvalidConfigError(
            f"--target-len applies to encoder-decoder models only (t5, mt5); {spec.name} is "
            f"{'a decoder' if spec.is_causal_lm else 'an encoder'}: use --seq-len"
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


def _vision(req: EstimateRequest, spec: ModelSpec) -> tuple[VisionSpec | None, int]:
    """Images of a vision-language model's row, and the LM tokens they add per row."""
    from vramcalc.checks import check_vision, parse_image_size
    from vramcalc.formulas.vision import (
        default_image_size,
        image_tokens,
        is_vlm,
        pixel_values,
        tiled_canvas,
    )

    check_vision(req, spec)
    if not is_vlm(spec):
        return None, 0
    h, w = parse_image_size(req.image_size) if req.image_size else default_image_size(spec)
    patches, tokens = image_tokens(spec, h, w)
    tiles = used = 0
    if spec.arch.get("vision_resize") == "tiles":
        tiles = int(spec.arch.get("vision_max_num_tiles") or 1)
        side = int(spec.arch.get("vision_image_size") or 1)
        ch, cw = tiled_canvas(h, w, tiles, side)
        used = (ch // side) * (cw // side)
    vision = VisionSpec(
        images=req.images, height=h, width=w, freeze=req.freeze_vision,
        patches=patches, tokens=tokens, pixels=pixel_values(spec, patches),
        grid=spec.arch.get("vision_resize") == "dynamic",
        token_types=spec.arch.get("vision_token_types") is True,
        tiles=tiles, used_tiles=used,
    )  # fmt: skip
    return vision, req.images * tokens


def _has_peft(req: EstimateRequest) -> bool:
    return any(x is not None for x in (req.adapter, req.prefix, req.prompt_tuning)) or req.ia3


# ----------------------------------------------------------------------------- walk


_RawEvent = tuple[int, Phase, str, dict[str, int], int]
"""(step, phase, event, components, allocated bytes): a timeline event before it becomes a
``TimelineEvent`` (only the reported stage's events do)."""


@dataclass
class _Walk:
    """Timeline under construction.

    Per-block events are buffered and only the first, the last and the largest are kept:
    within a loop over identical blocks the live bytes change linearly, so nothing between
    the ends can be a peak that those three miss.
    """

    events: list[_RawEvent]
    pending: list[tuple[int, Phase, str, dict[str, int]]] | None = None

    @staticmethod
    def _event(step: int, phase: Phase, event: str, comps: dict[str, int]) -> _RawEvent:
        clean = dict(comps)
        for k, v in clean.items():  # bytes are integers (int() of the rare float)
            if type(v) is not int:
                clean[k] = int(v)
        return step, phase, event, clean, sum(clean.values())

    def add(self, step: int, phase: Phase, event: str, comps: dict[str, int]) -> None:
        self.flush()
        self.events.append(self._event(step, phase, event, comps))

    def block(self, step: int, phase: Phase, event: str, comps: dict[str, int]) -> None:
        if self.pending is None:
            self.pending = []
        self.pending.append((step, phase, event, comps))

    def flush(self) -> None:
        p = self.pending
        self.pending = None
        if not p:
            return
        if len(p) <= 2:
            keep: list[int] | range = range(len(p))
        else:
            totals = [sum(x[3].values()) for x in p]
            top = totals.index(max(totals))  # the first of equal maxima
            keep = sorted({0, top, len(p) - 1})
        for i in keep:
            self.events.append(self._event(*p[i]))


def _timeline(raw: list[_RawEvent]) -> list[dict[str, Any]]:
    """Return the fields of the report's ``TimelineEvent`` objects of one walk.

    ``MemoryReport`` validates them into ``TimelineEvent`` all at once (pydantic-core builds
    them faster than one ``model_construct`` call each).
    """
    return [
        {"step": step, "phase": phase, "event": event, "allocated_bytes": total,
         "components": comps}
        for step, phase, event, comps, total in raw
    ]  # fmt: skip


@dataclass(frozen=True)
class _Rank:
    """One rank's slice of the job: what the walk of its step reads."""

    stage: Stage
    spec: ModelSpec
    inventory: tuple[ParamGroup, ...]
    plan: ParamPlan
    prof: ActivationProfile | None
    opt: OptimizerPlan | None
    states: RankStates | None
    extra_act: int = 0
    """Per-block transient of the layout (context-parallel K/V exchange, expert all-to-all)."""
    head_extra: int = 0
    """Transient of the LM head's forward under the layout (the gathered TP logits)."""
    trainer: TrainerWalk | None = None
    """What a preference/RL trainer adds: resident models, extra events (trainers.py)."""


def _walk(
    res: Resolved, rank: _Rank, emb_buffers: int = 1
) -> tuple[list[_RawEvent], int, dict[str, int], list[str]]:
    """Walk one rank's training step (first step and steady state) and record live bytes.

    The sharding engine's buffers come from ``rank.states`` (``formulas/sharding.py``): the
    running block's gathered parameters (and the prefetched next one in backward), the
    root's gathered parameters (FSDP: from the forward to the end of backward; ZeRO-3: around
    the embedding and LM-head uses), a block's full gradients until its reduce-scatter. A
    pipeline stage holding ``in_flight`` micro-batches keeps the saved activations of the
    ``in_flight - 1`` earlier ones throughout.
    """
    tr = res.training
    w = _Walk([])
    inputs = _input_bytes(tr)
    prof, opt, rs, plan, inventory = rank.prof, rank.opt, rank.states, rank.plan, rank.inventory
    if tr.task == Task.INFERENCE or prof is None or opt is None or rs is None:
        return _inference_walk(res, rank, w)
    spec = rank.spec
    stage = rank.stage
    params, G, opt_b, temp, cpu = rs.params, rs.gradients, rs.optimizer, rs.step_temps, rs.cpu
    tw = rank.trainer
    params += tw.resident_bytes if tw is not None else 0
    # a second trained model (PPO's value model): its states from the first optimizer step,
    # its gradients at the step; bytes alive from the loss to the step's end (PPO's logits)
    opt_b += tw.extra_states if tw is not None else 0
    xg = tw.extra_grads if tw is not None else 0
    late_b = tw.after_loss if tw is not None else 0
    late = [0]
    zdetails, notes = dict(rs.details), list(rs.notes)
    split = grad_split(spec, inventory, plan)
    head_g, layer_g, embed_g, other_g = split.head, split.per_block, split.embed, split.other
    L = len(prof.layer_saved)
    base_g = split.total(L)
    grad_scale = 0.0
    if G and base_g:
        zero2 = res.parallel.zero_stage >= ZeroStage.GRADIENTS
        grad_scale = 1.0 / res.parallel.dp_shard if zero2 else G / base_g
    hg, lg, eg = int(head_g * grad_scale), int(layer_g * grad_scale), int(embed_g * grad_scale)
    embed_tr = 0
    if (
        spec.tie_word_embeddings
        and head_g
        and opt.stores_grads
        and "embed/tokens" in plan.trainable_keys
    ):
        tok = next(g for g in inventory if g.key == "embed/tokens")
        embed_tr = emb_buffers * block(tok.weight_numel * split.grad_bytes_per_elt)
    elif eg and emb_buffers > 1:
        tok = next(g for g in inventory if g.key == "embed/tokens")
        embed_tr = (emb_buffers - 1) * block(tok.weight_numel * split.grad_bytes_per_elt)
    if not opt.stores_grads:
        hg = lg = eg = 0
    # gradients stay alive across micro-batches (accumulation, or a pipeline's micro-batches)
    accum = tr.grad_accum > 1
    ckpt = tr.grad_ckpt
    fsdp = res.parallel.fsdp
    # FSDP1's root unit and the rest of FSDP2's root stay gathered from forward to the end of
    # backward; ZeRO-3 gathers the embedding and LM head around each use; FSDP2 (as accelerate
    # wraps it) gathers the embedding around its forward and backward and the [final norm,
    # LM head] unit from its forward to its backward
    held_root = rs.gather_root if rs.root_held else 0
    zero_root = rs.gather_root if not rs.root_held else 0
    head_unit = rs.gather_head
    keep_gathered = fsdp is not None and not fsdp.reshard_after_forward and rs.sharded
    # every block stays gathered: blocks that differ (layer schedules) add their average
    kept_block = rs.gather_block_avg or rs.gather_block
    earlier = (stage.in_flight - 1) * prof.forward_total
    # Blocks with identical ledgers change the live bytes linearly, so within a run of them
    # only the run's ends can hold a maximum: walk those, and sum the rest (bounded work for
    # any depth).
    reps = _run_ends(prof)
    saved = prof.ckpt_input if ckpt else prof.layer_saved
    rc = tr.recipe
    # activation offloading moves each block's saved tensors (or, with offloaded
    # checkpointing, its checkpointed input) to CPU memory as the forward moves on and brings
    # them back one block ahead in backward: on the GPU only the running block's (forward)
    # or the running and the prefetched block's (backward) remain
    offload = rc.activation_offload or (ckpt and rc.checkpoint_offload)
    fwd_extra = list(prof.layer_fwd_extra)
    bwd_extra = list(prof.layer_bwd_extra)
    if offload:
        fwd_extra = [x + s for x, s in zip(fwd_extra, saved, strict=True)]
        bwd_extra = [x + 2 * s for x, s in zip(bwd_extra, saved, strict=True)]
        saved = [0] * L
    amp_per = prof.amp_copy_per_layer or [0] * L
    # logits a training loop keeps referenced (LitGPT): alive from the loss to the end of the
    # step and through the next step's forward, until the new logits replace them
    hl = prof.held_logits
    held = [0]
    # per-block running sums, the same in both steps
    cum_act = list(accumulate(saved, initial=0))
    cum_amp = list(accumulate(amp_per, initial=0))
    freed = list(accumulate(saved[:L] if ckpt else map(add, saved[:L], amp_per), initial=0))
    # FSDP under accelerate's no_sync accumulation: a later micro-batch runs with every
    # unit's unsharded gradients alive (sharding.RankStates.grad_unsharded), reduced only by
    # the last micro-batch of the step
    G_acc = G
    if accum and fsdp is not None and not fsdp.sync_each_batch and rs.grad_unsharded:
        G_acc = rs.grad_unsharded
        zdetails["gradients/unsharded_accumulated"] = G_acc
        notes.append(
            "FSDP with gradient accumulation: the micro-batches before the last run under "
            f"no_sync (accelerate's default), so each rank holds the unsharded gradients "
            f"({G_acc} bytes, not {G}); fsdp_sync_each_batch true reduces them every "
            "micro-batch instead"
        )
    for step in (1, 2):
        states = opt_b if step == 2 else 0
        g_fwd = G_acc if (accum and step == 2) else 0
        held[0] = hl if step == 2 else 0

        def comps(
            act: int, grads: int, st: int = states, extra_opt: int = 0, gathered: int = 0
        ) -> dict[str, int]:
            return {
                "params": params + inputs + gathered,
                "activations": act + earlier + held[0] + late[0],
                "gradients": grads,
                "optimizer": st + extra_opt,
            }

        if step == 1:
            w.add(1, Phase.LOAD, "model loaded", comps(0, 0, gathered=_load_transient(res, rank)))
        for tev in tw.before_forward if tw is not None else ():
            w.add(step, tev.phase, tev.event, comps(tev.bytes, g_fwd))
        # forward
        act0 = prof.embed_saved
        if rs.gather_embed:
            w.add(
                step,
                Phase.FORWARD,
                "embedding forward",
                comps(act0, g_fwd, gathered=held_root + rs.gather_embed),
            )
        for i in reps:
            act = act0 + cum_act[i]
            layer = saved[i]
            transient = (prof.ckpt_fwd.get(i, prof.layer_saved[i]) if ckpt else 0) + fwd_extra[i]
            ck = prof.layer_ckpt[i] if ckpt and prof.layer_ckpt else None
            if ck is not None:  # checkpointed: the block's working set (activations._block)
                transient += ck[0]
            amp_live = cum_amp[i + 1]
            before = kept_block * (i if keep_gathered else 0) + held_root
            if rs.gather_buffer:
                w.block(
                    step,
                    Phase.FORWARD,
                    f"block {i} all-gather",
                    comps(
                        act + amp_live, g_fwd, gathered=before + rs.gather_block + rs.gather_buffer
                    ),
                )
            cache = prof.output_cache if prof.output_cache and i >= prof.output_cache_from else 0
            w.block(
                step,
                Phase.FORWARD,
                f"block {i} forward",
                comps(
                    act + amp_live + layer + transient + rank.extra_act + cache,
                    g_fwd,
                    gathered=before
                    + rs.gather_block
                    + rs.gather_prefetch * (rs.gather_buffer == 0),
                ),
            )
        act = act0 + cum_act[L]
        amp_live = cum_amp[L]
        # not resharded after forward: every block (and FSDP2's embedding unit) stays gathered
        kept = (kept_block * L + rs.gather_embed) if keep_gathered else 0
        fwd_gathered = held_root + kept + head_unit
        # on a (dp, tp) mesh FSDP2's embedding stays gathered until the head's forward ends
        head_fwd_gathered = fwd_gathered + (rs.gather_embed if rs.embed_held else 0)
        act += prof.head_saved + amp_live + prof.amp_head_copy
        w.add(
            step,
            Phase.FORWARD,
            "final norm and LM head",
            comps(
                act + rank.head_extra + hl + prof.output_cache,
                g_fwd,
                gathered=head_fwd_gathered + zero_root,
            ),
        )
        held[0] = hl
        for tev in tw.after_forward if tw is not None else ():
            w.add(
                step,
                tev.phase,
                tev.event,
                comps(act + prof.loss_saved + tev.bytes, g_fwd, gathered=fwd_gathered + zero_root),
            )
        late[0] = late_b
        w.add(
            step,
            Phase.LOSS,
            tw.plan.loss_event if tw is not None else "loss (fp32 logits, log-softmax)",
            comps(
                act + prof.logits_fwd + prof.loss_saved + prof.output_cache,
                g_fwd,
                gathered=fwd_gathered + zero_root,
            ),
        )
        # backward: the root's pre-backward hook prefetches the last block
        if ckpt:  # autocast's weight cache was cleared when forward left autocast
            act -= amp_live
        # FSDP1 (backward_pre) and ZeRO-3 prefetch the last block when backward starts; FSDP2
        # gathers it at its own pre-backward, after the LM head's backward (rank-0 traces)
        prefetch_at_loss = rs.sharded and not keep_gathered and not (fsdp and fsdp.version == 2)
        if fsdp is not None and fsdp.version == 1 and fsdp.backward_prefetch != "backward_pre":
            prefetch_at_loss = False
        bwd_pref = rs.gather_block if prefetch_at_loss else 0
        w.add(
            step,
            Phase.BACKWARD,
            "loss backward",
            comps(
                act + prof.loss_saved + prof.loss_bwd_extra,
                g_fwd,
                gathered=fwd_gathered + zero_root + bwd_pref,
            ),
        )
        grads = hg if not accum or step == 1 else G_acc
        root_full = rs.grad_root_full if rs.sharded and fsdp is not None else 0
        fsdp2 = fsdp is not None and fsdp.version == 2
        # FSDP1 keeps the root's full gradients until the root's reduce at the end of backward;
        # FSDP2 reduces the [final norm, LM head] unit right after its backward (next event)
        head_full = 0 if fsdp2 else root_full * head_g // max(head_g + embed_g + other_g, 1)
        act -= prof.head_saved + prof.amp_head_copy
        w.add(
            step,
            Phase.BACKWARD,
            "LM head backward",
            comps(
                # the head's backward, then the final norm's (its temporaries once the
                # head's saved input is freed; activations._rmsnorm_backward)
                act + max(prof.head_saved + prof.head_bwd_extra, prof.fnorm_bwd),
                grads + head_full,
                gathered=fwd_gathered + zero_root + bwd_pref,
            ),
        )
        if fsdp2 and rs.grad_head_full:
            w.add(
                step,
                Phase.BACKWARD,
                "LM head reduce-scatter",
                # post-backward reshards the unit first, then reduces its gradients
                comps(act, grads + rs.grad_head_full, gathered=fwd_gathered - head_unit),
            )
        act_top = act  # saved activations when the blocks' backward starts
        # gradients created by blocks i .. L-1; a vision tower's blocks (at the front) hold
        # the tower's and projector's share, the language model's blocks the rest
        blk_g = [lg] * L
        tb = prof.tower_blocks
        if tb and split.tower and tb < L and lg:
            t_g = int(split.tower * grad_scale)
            blk_g = [t_g // tb] * tb + [(lg * L - t_g) // (L - tb)] * (L - tb)
        cum_lg = list(accumulate(reversed(blk_g), initial=0))[::-1][:L]
        for i in reversed(reps):
            # blocks i+1 .. L-1 have run their backward: their activations are freed and
            # their gradients are in place
            act = act_top - (freed[L] - freed[i + 1])
            amp_i = amp_per[i]
            recompute = prof.layer_saved[i] + amp_i if ckpt else 0
            if keep_gathered:
                gathered = held_root + kept_block * (i + 1)
            else:
                nxt = rs.gather_prefetch if i > 0 else rs.gather_embed
                gathered = held_root + rs.gather_block + nxt
            grads_i = grads + (cum_lg[i] if not (accum and step == 2) else 0)
            b_act = recompute + bwd_extra[i]
            ck = prof.layer_ckpt[i] if ckpt and prof.layer_ckpt else None
            if ck is not None:
                # checkpointed: the larger of the MLP's and the attention's backward moments,
                # the MLP's with only down_proj's gradient of this block (activations._block)
                own = blk_g[i]
                pending = own - int(own * ck[2]) if not (accum and step == 2) else 0
                if ck[1] - pending > ck[3]:
                    b_act, grads_i = b_act + ck[1], grads_i - pending
                else:
                    b_act += ck[3]
            w.block(
                step,
                Phase.BACKWARD,
                f"block {i} backward",
                comps(
                    act + b_act + rank.extra_act,
                    grads_i + (0 if rs.gather_head else head_full) + rs.grad_block_full,
                    gathered=gathered,
                ),
            )
        act = act_top - freed[L]
        if not (accum and step == 2):
            grads += cum_lg[0] + eg
        grads = max(grads, G) if not (accum and step == 2) else G_acc
        w.add(
            step,
            Phase.BACKWARD,
            "embedding backward",
            comps(
                max(act, 0) + embed_tr,
                grads + root_full,
                gathered=held_root + zero_root + rs.gather_embed,
            ),
        )
        if rs.grad_embed_full:
            # FSDP2 reshards the embedding unit, then reduce-scatters its full gradient:
            # autograd's gradient and the reduce-scatter input are alive together
            w.add(
                step,
                Phase.BACKWARD,
                "embedding reduce-scatter",
                comps(0, grads + rs.grad_embed_full, gathered=held_root),
            )
        # optimizer
        clip = block(4) * plan.n_trainable_tensors  # foreach norms in clip_grad_norm_
        w.add(
            step,
            Phase.OPTIMIZER,
            "optimizer step" + (" (states created)" if step == 1 else ""),
            comps(0, G + xg, opt_b, temp + clip),
        )
        w.add(step, Phase.OPTIMIZER, "zero_grad", comps(0, 0, opt_b))
        for tev in tw.after_step if tw is not None else ():
            w.add(step, tev.phase, tev.event, comps(tev.bytes, 0, opt_b))
        late[0] = 0
    return w.events, cpu, zdetails, notes


def _load_transient(res: Resolved, rank: _Rank) -> int:
    """Bytes above the loaded model while its last weight is quantized, if the peak counts it.

    A framework that loads 16-bit weights and quantizes them one linear at a time and never
    resets the peak counter before training (LitGPT: ``BitsandbytesPrecision``'s
    ``_Linear4bit.quantize`` copies each weight to the GPU as fp16 first) reports the largest
    linear's fp16 copy on top of the quantized model. Source: lightning 2.6.6
    ``fabric/plugins/precision/bitsandbytes.py``; litgpt 0.5.13 ``finetune/lora.py``.
    """
    rc = res.training.recipe
    if res.training.quant is None or rc.peak_reset != "never":
        return 0
    if rc.quant_load != "after_16bit_load":
        return 0
    kinds = ("linear", "lm_head") if rc.quant_lm_head else ("linear",)
    largest = max((g.weight_numel for g in rank.inventory if g.kind in kinds), default=0)
    return max(block(largest * 2) - _input_bytes(res.training), 0)


def _input_bytes(tr: TrainingSpec) -> int:
    """Return the batch's bytes on the GPU: ``input_ids`` and ``labels`` (int64, B x S).

    A vision-language batch adds its fp32 ``pixel_values`` and, per model, the int64
    ``image_grid_thw`` (images x 3) or ``token_type_ids`` (B x S), or Llama-3.2-Vision's
    ``aspect_ratio_ids``, ``aspect_ratio_mask`` and ``cross_attention_mask`` (B x S x images x
    tiles; ``processing_mllama.py`` ``convert_sparse_cross_attention_mask_to_dense``).
    """
    n = 2 * block(tr.batch_size * tr.seq_len * INT64_BYTES)
    vis = tr.vision
    if vis is not None and vis.images:
        images = tr.batch_size * vis.images
        n += block(images * vis.pixels * 4)
        if vis.grid:
            n += block(images * 3 * INT64_BYTES)
        if vis.token_types:
            n += block(tr.batch_size * tr.seq_len * INT64_BYTES)
        if vis.tiles:  # aspect_ratio_ids, aspect_ratio_mask, cross_attention_mask (int64)
            n += block(images * INT64_BYTES) + block(images * vis.tiles * INT64_BYTES)
            n += block(tr.batch_size * tr.seq_len * vis.images * vis.tiles * INT64_BYTES)
    return n


def _run_ends(prof: ActivationProfile) -> list[int]:
    """List the first and last block of each run of blocks with identical ledgers."""
    keys = list(
        zip(
            prof.layer_saved,
            prof.layer_fwd_extra,
            prof.layer_bwd_extra,
            prof.amp_copy_per_layer or [0] * len(prof.layer_saved),
            prof.ckpt_input or [0] * len(prof.layer_saved),
            prof.layer_ckpt or [None] * len(prof.layer_saved),
            strict=True,
        )
    )
    ends: set[int] = set()
    for i, k in enumerate(keys):
        if i == 0 or keys[i - 1] != k:
            ends.add(i)
            if i:
                ends.add(i - 1)
    if keys:
        ends.add(len(keys) - 1)
    return sorted(ends)


def _rank(
    res: Resolved,
    stage: Stage,
    inventory: tuple[ParamGroup, ...],
    optim_impl: str | None,
) -> _Rank:
    """Build one rank's slice: local model, parameters, activations, optimizer, states."""
    par, tr = res.parallel, res.training
    spec = rank_spec(res.model, par, stage)
    sliced = par.tp > 1 or par.pp > 1 or par.ep > 1
    inv = rank_inventory(inventory, res.model, par, stage) if sliced else inventory
    plan = plan_params(spec, inv, tr, sharded_quant=par.fsdp is not None)
    if tr.task != Task.TRAIN:
        return _Rank(stage, spec, inv, plan, None, None, None)
    if plan.n_trainable == 0:
        raise InvalidConfigError("nothing is trainable with these options")
    act_tr = tr if par.cp == 1 else tr.model_copy(update={"seq_len": tr.seq_len // par.cp})
    if par.fsdp is not None and tr.mixed_precision != MixedPrecision.NO:
        # FSDP's MixedPrecision(Policy) gathers the parameters in the 16-bit param_dtype, so
        # the forward runs in 16 bit on 16-bit weights: no autocast weight copies (accelerate
        # 1.15: fsdp2_prepare_model sets MixedPrecisionPolicy and no autocast; FSDP1 keeps
        # autocast, which has nothing to cast)
        act_tr = act_tr.model_copy(
            update={
                "param_dtype": DType(tr.mixed_precision.value),
                "mixed_precision": MixedPrecision.NO,
            }
        )
    tplan = None
    if tr.trainer.name != Trainer.SFT:
        from vramcalc.formulas.trainers import trainer_plan

        tplan = trainer_plan(tr.trainer, tr.peft, tr.batch_size)
        act_tr = act_tr.model_copy(update={"batch_size": tplan.forward_rows})
    in_blocks = par.fsdp is not None and par.fsdp.version == 1 and par.fsdp.lora_in_blocks
    prof = activation_profile(
        spec,
        inv,
        act_tr,
        plan,
        seq_shard=par.tp if par.sequence_parallel else 1,
        blocks_trainable=in_blocks,
    )
    opt = plan_optimizer(tr.optim, plan, impl=optim_impl)
    # the framework's own module implementations and memory features (frameworks/<name>.py)
    from vramcalc.frameworks import profile as framework_profile

    plan, prof, opt = framework_profile(tr.recipe.framework).adjust(spec, act_tr, plan, prof, opt)
    cb = 2 if tr.mixed_precision != MixedPrecision.NO else dtype_bytes(tr.param_dtype)
    tw = None
    if tplan is not None and tplan.generation:
        tw = _rl_walk(res, spec, inv, plan, prof, tplan, act_tr, cb)
    elif tplan is not None:
        tw = _trainer_walk(res, spec, inv, plan, prof, tplan, act_tr, cb)
    states = rank_states(
        spec, inv, plan, opt, par, compute_bytes=cb,
        # the language model's blocks are the sharding units; a vision tower's parameters
        # (other block count) go with the root unit
        n_blocks=len(prof.layer_saved) - prof.tower_blocks
        # Llama-3.2-Vision: every decoder layer is a unit, also the cross-attention layers a
        # text-only batch skips
        if not spec.arch.get("cross_layers")
        else spec.num_hidden_layers,
    )
    extra = 0
    tokens = tr.batch_size * act_tr.seq_len
    if par.cp > 1:
        # ring attention: the K/V chunk being sent and the one being received, for k and v
        # Source: torch 2.13 distributed/tensor/experimental/_attention.py (_RingRotater)
        kv = tokens * spec.num_key_value_heads * spec.head_dim * cb
        extra += 2 * 2 * block(kv)
    if par.ep > 1 and spec.num_experts_per_tok:
        # all-to-all dispatch: routed token copies sent and received (top-k per token)
        # Source: Megatron-core transformer/moe/token_dispatcher.py (MoEAlltoAllTokenDispatcher)
        extra += 2 * block(tokens * spec.num_experts_per_tok * spec.hidden_size * cb)
    head_extra = 0
    if par.tp > 1 and spec.has_lm_head and stage.last:
        head_extra = tp_logits_gather_bytes(tokens, spec.vocab_size, par.tp, cb)
    return _Rank(stage, spec, inv, plan, prof, opt, states, extra, head_extra, tw)


def _trainer_walk(
    res: Resolved,
    spec: ModelSpec,
    inv: tuple[ParamGroup, ...],
    plan: ParamPlan,
    prof: ActivationProfile,
    tplan: TrainerPlan,
    act_tr: TrainingSpec,
    cb: int,
) -> TrainerWalk:
    """Apply a trainer's head to the policy's profile; build its resident models and events.

    The reference copy is loaded in the policy's dtype and quantization (TRL passes the same
    ``model_init_kwargs``); it is sharded over the data-parallel ranks under ZeRO-3 and FSDP
    and replicated otherwise (``trl/models/utils.py`` ``prepare_deepspeed``/``prepare_fsdp``).
    """
    from vramcalc.formulas.inference import _layer_temporaries
    from vramcalc.formulas.trainers import apply_head, trainer_walk

    par, tr = res.parallel, res.training
    amp = act_tr.mixed_precision != MixedPrecision.NO
    pb = dtype_bytes(act_tr.param_dtype)
    # the final norm's output: fp32 under autocast over fp32 weights, else the weights' dtype
    hb = 4 if amp else pb
    apply_head(
        prof, tplan, spec=spec, rows=act_tr.batch_size, seq_len=act_tr.seq_len,
        compute_bytes=cb, hidden_bytes=hb, param_bytes=pb,
        head_trainable=tr.peft is None,
    )  # fmt: skip
    ref_bytes = 0
    if tplan.reference_kind == "copy":
        ref_plan = plan_params(spec, inv, tr.model_copy(update={"peft": None}))
        ref_bytes = ref_plan.param_bytes
        if par.zero_stage == ZeroStage.PARAMETERS or (par.fsdp is not None and par.dp_shard > 1):
            ref_bytes = -(-ref_bytes // par.dp_shard)
    rows = max(tplan.reference_rows, tplan.kl_rows, 1)
    tokens = rows * act_tr.seq_len
    layer_tmp = _layer_temporaries(spec, tokens, rows, act_tr.seq_len, cb, act_tr.attn)
    return trainer_walk(
        tplan, spec=spec, tokens_per_row=act_tr.seq_len, compute_bytes=cb, hidden_bytes=hb,
        reference_bytes=ref_bytes, layer_temporaries=layer_tmp,
    )  # fmt: skip


def _rl_walk(
    res: Resolved,
    spec: ModelSpec,
    inv: tuple[ParamGroup, ...],
    plan: ParamPlan,
    prof: ActivationProfile,
    tplan: TrainerPlan,
    act_tr: TrainingSpec,
    cb: int,
) -> TrainerWalk:
    """GRPO/RLOO/PPO: rollout generation, no-grad log-prob passes, resident models and buffers.

    See ``formulas/rl.py``. Generation runs outside autocast, so it computes (and caches K/V)
    in the weights' dtype (the bitsandbytes compute dtype for a quantized base). The
    reference copy is held as ``_trainer_walk`` holds it; PPO's reward and value models are
    sequence classifiers of the same backbone (no LM head) in the weights' dtype, the value
    model trained in full: its saved activations next to the policy's, its gradients at the
    optimizer step, its AdamW states from the first step (trl 1.12.0
    ``trl/experimental/ppo/ppo_trainer.py`` ``PolicyAndValueWrapper``, ``PPOTrainer.train``).
    """
    from dataclasses import replace

    from vramcalc.formulas.inference import kv_heads_per_rank
    from vramcalc.formulas.rl import (
        generation_rows,
        logprob_forward_bytes,
        policy_head,
        ppo_head,
        ppo_logprob_bytes,
        ppo_rollout_buffer_bytes,
        ppo_scores_bytes,
        rollout,
        rollout_buffer_bytes,
    )
    from vramcalc.formulas.trainers import TrainerEvent, TrainerWalk
    from vramcalc.serving import budget

    par, tr = res.parallel, res.training
    ro = rollout(tr.trainer, tr.batch_size, tr.grad_accum)
    amp = act_tr.mixed_precision != MixedPrecision.NO
    pb = dtype_bytes(act_tr.param_dtype)
    hb = 4 if amp else pb
    H, V = spec.hidden_size, spec.vocab_size
    ppo = tplan.name == Trainer.PPO
    if not ppo and spec.has_lm_head:
        saved, fwd, outs, bwd = policy_head(
            ro, hidden=H, vocab=V, compute=cb, hidden_bytes=hb, param_bytes=pb,
            head_trainable=tr.peft is None,
        )  # fmt: skip
        prof.amp_weight_copies -= prof.amp_head_copy
        prof.amp_head_copy = 0
        prof.details.pop("activations/amp_weight_copies", None)
        if prof.amp_weight_copies:
            prof.details["activations/amp_weight_copies"] = prof.amp_weight_copies
        prof.details.pop("activations/logits", None)
        prof.head_saved += saved
        prof.logits_fwd = fwd
        prof.loss_saved = outs
        prof.loss_bwd_extra = 0
        prof.head_bwd_extra = bwd
        prof.details["activations/logprob_buffers"] = saved + outs
    ph = None
    if ppo and spec.has_lm_head:
        ph = ppo_head(ro, hidden=H, vocab=V, compute=cb, layers=spec.num_hidden_layers)
        prof.details.pop("activations/logits", None)
        prof.logits_fwd = ph.loss_fwd
        prof.loss_saved = 0
        prof.loss_bwd_extra = ph.loss_bwd
        prof.head_bwd_extra = ph.head_bwd
        prof.held_logits = 0
        prof.details["activations/logits"] = ph.logits + ph.loss_fwd
        prof.details["activations/output_hidden_states"] = ph.hidden_states
    sharded = par.zero_stage == ZeroStage.PARAMETERS or (par.fsdp is not None and par.dp_shard > 1)

    def per_rank(n: int) -> int:
        return -(-n // par.dp_shard) if sharded else n

    resident: dict[str, int] = {}
    full_plan = plan_params(spec, inv, tr.model_copy(update={"peft": None}))
    if tplan.reference_kind == "copy":
        resident["params/reference"] = per_rank(full_plan.param_bytes)
    value_b = 0
    if ppo:
        # value and reward: AutoModelForSequenceClassification(num_labels=1) of the policy's
        # backbone, a bias-free score Linear(H, 1) in place of the LM head. A quantized
        # policy's value model cannot be trained in full in bitsandbytes storage: both are
        # taken as the unquantized backbone in the compute dtype (as PPO scripts load them,
        # `from_pretrained(..., dtype=...)` without a quantization config)
        v_tr = act_tr.model_copy(update={"peft": None})
        v_plan = full_plan
        vb = pb
        if tr.quant is not None:
            vdt = (
                act_tr.param_dtype
                if dtype_bytes(act_tr.param_dtype) == cb
                else DType(act_tr.mixed_precision.value)
            )
            v_tr = v_tr.model_copy(
                update={"quant": None, "param_dtype": vdt, "mixed_precision": MixedPrecision.NO}
            )
            v_plan = plan_params(spec, inv, v_tr)
            vb = dtype_bytes(vdt)
            tplan = replace(
                tplan,
                notes=(
                    *tplan.notes,
                    f"PPO with a quantized policy: the value and reward models are counted "
                    f"unquantized in {vdt.value} (a value model is trained in full)",
                ),
            )
        head_b = 0 if spec.tie_word_embeddings else block(V * H * vb)
        value_b = max(v_plan.param_bytes - head_b, 0) + block(H * vb)
        resident["params/reward"] = per_rank(value_b)
        resident["params/value"] = per_rank(value_b)
        # PolicyAndValueWrapper trains the value model in full next to the policy: its saved
        # activations are a full fine-tune's of the same backbone (the critic runs first and
        # is backpropagated last), its gradients and AdamW states join the policy's
        from vramcalc.formulas.activations import activation_profile

        vprof = activation_profile(spec, inv, v_tr, v_plan)
        value_act = vprof.embed_saved + sum(vprof.layer_saved) + vprof.head_saved
        prof.embed_saved += value_act
        prof.details["activations/value_model"] = value_act
    if ro.vllm == "colocate":
        gpu = res.hardware.gpu
        if gpu is None:
            raise InvalidConfigError(
                "--vllm colocate reserves a share of the GPU's memory: add --gpu NAME "
                "(see `vramcalc gpus`)"
            )
        resident["params/vllm_engine"] = budget(gpu, ro.vllm_utilization or 0.3)
    n_logps = int(ro.old_logps) + int(ro.ref_logps)
    if ppo:
        resident["params/rollout_buffer"] = ppo_rollout_buffer_bytes(ro, V)
    else:
        resident["params/rollout_buffer"] = rollout_buffer_bytes(ro, n_logps)
    before: list[TrainerEvent] = []
    if ro.vllm == "none":
        gen_cb = cb if tr.quant is not None else pb
        gen = generation_rows(
            spec, ro, compute=gen_cb, kv_bytes=gen_cb, attn=tr.attn,
            kv_heads=kv_heads_per_rank(res.model.num_key_value_heads, par.tp),
        )  # fmt: skip
        if ppo:
            gen = _ppo_generation(gen, *ppo_scores_bytes(ro, V), ro)
        for name, rows in gen:
            before.append(TrainerEvent(Phase.GENERATION, name, sum(rows.values()), rows))
    passes = [n for n, on in (("old", ro.old_logps), ("reference", ro.ref_logps)) if on]
    if ppo:
        from vramcalc import catalog

        chunk = int(catalog.load("rl")["defaults"]["ppo"]["local_rollout_forward_batch_size"])
        lp = ppo_logprob_bytes(spec, ro, compute=cb, attn=tr.attn, chunk=chunk)
        before.append(
            TrainerEvent(
                Phase.GENERATION,
                "reference log-probs, values and rewards (no grad, output_hidden_states)",
                lp,
                {"activations/logprob_forward": lp},
            )
        )
    elif passes:
        lp = logprob_forward_bytes(spec, ro, compute=cb, hidden_bytes=hb, attn=tr.attn)
        before.append(
            TrainerEvent(
                Phase.GENERATION,
                f"{' and '.join(passes)} log-probs (no grad, {ro.generation_batch} completions)",
                lp,
                {"activations/logprob_forward": lp},
            )
        )
    notes = list(tplan.notes)
    if ro.vllm == "none":
        notes.append(
            f"generation: transformers generate of {ro.generation_batch} completions "
            f"({ro.prompt} + {ro.completion} tokens, DynamicCache) every "
            f"{ro.generation_batch // max(ro.completions, 1)} micro-batch(es)"
        )
    elif ro.vllm == "colocate":
        notes.append(
            "vLLM colocate: the engine's reservation (vllm_gpu_memory_utilization x GPU memory) "
            "follows vLLM's documented memory profiling; not traced"
        )
    else:
        notes.append("vLLM server: generation runs on other GPUs; nothing of it on this GPU")
    if ppo:
        notes.append(
            "PPO is not in TRL 1.16: modelled from trl 1.12.0's PPOTrainer (its last release "
            "with PPO), traced by validation/trl_ppo_trace.py; it runs without autocast or "
            "gradient checkpointing (PPOTrainer builds its own Accelerator and never applies "
            "bf16/gradient_checkpointing under transformers 5)"
        )
    tplan = replace(tplan, notes=tuple(notes))
    return TrainerWalk(
        plan=tplan,
        resident=resident,
        before_forward=tuple(before),
        after_loss=ph.logits + ph.hidden_states if ph is not None else 0,
        after_step=(
            (
                TrainerEvent(
                    Phase.OPTIMIZER,
                    "PPO statistics (no grad: softmax of the logits, entropy)",
                    ph.entropy,
                    {"activations/ppo_statistics": ph.entropy},
                ),
            )
            if ph is not None
            else ()
        ),
        # the value model's AdamW states (two, in its dtype) and gradients
        extra_states=per_rank(2 * value_b),
        extra_grads=per_rank(value_b),
    )


def _ppo_generation(
    gen: list[tuple[str, dict[str, int]]], step_scores: int, stacked: int, ro: Any
) -> list[tuple[str, dict[str, int]]]:
    """Add PPO's kept generation scores to the ``generate`` walk's events.

    ``output_scores=True``: each decode step's fp32 scores ``[b, V]`` are kept (one per
    generated token so far); at the end TRL stacks them into ``[b, L, V]`` while the cache is
    still referenced by the output, then ``batch_generation`` pads the stack into ``logitss``
    (the rollout buffer's scores, ``formulas/rl.ppo_scores_bytes``).
    """
    out = []
    kv = 0
    for name, rows in gen:
        rows = dict(rows)
        if "decode: first step" in name:
            rows["activations/generation_scores"] = step_scores
        elif "decode: last step" in name:
            rows["activations/generation_scores"] = (ro.completion - 1) * step_scores
        kv = rows.get("activations/generation_kv_cache", kv)
        out.append((name, rows))
    out.append(
        (
            "generation: scores stacked (output_scores)",
            {
                "activations/generation_kv_cache": kv,
                "activations/generation_scores": ro.completion * step_scores + stacked,
            },
        )
    )
    out.append(
        (
            "generation: scores padded (batch_generation)",
            {"activations/generation_scores": 2 * stacked},
        )
    )
    return out


def _layout(par: ParallelSpec, stage: Stage) -> Layout:
    """Build the report's ``layout`` (mesh, engine, options, the rank of the peak)."""
    options: dict[str, str | int | float | bool | None] = {}
    if par.fsdp is not None:
        f = par.fsdp
        options.update(
            strategy=f.strategy.value,
            reshard_after_forward=f.reshard_after_forward,
            offload=f.offload,
        )
        if f.version == 1:
            options.update(
                use_orig_params=f.use_orig_params,
                limit_all_gathers=f.limit_all_gathers,
                backward_prefetch=f.backward_prefetch.value,
            )
    elif par.zero is not None:
        z = par.zero
        options.update(
            stage=int(z.zero_stage),
            offload_optimizer=z.offload_optimizer.value,
            offload_param=z.offload_param.value,
            precision=z.precision,
        )
    engine = par.engine
    parts = []
    if engine.startswith("fsdp"):
        assert par.fsdp is not None
        parts.append(f"FSDP{par.fsdp.version} {par.fsdp.strategy.value} over {par.dp_shard}")
    elif engine == "zero":
        assert par.zero is not None
        parts.append(f"ZeRO-{int(par.zero.zero_stage)} over {par.dp_shard}")
    elif engine == "ddp":
        parts.append(f"DDP x{par.dp}")
    if par.dp_replicate > 1 and engine not in ("ddp", "none"):
        parts.append(f"{par.dp_replicate} replicas")
    if par.tp > 1:
        parts.append(f"TP {par.tp}" + (" + SP" if par.sequence_parallel else ""))
    if par.cp > 1:
        parts.append(f"CP {par.cp}")
    if par.pp > 1:
        parts.append(f"PP {par.pp} ({par.pp_schedule.value}, stage {stage.index})")
    if par.ep > 1:
        parts.append(f"EP {par.ep}")
    gpus = f"{par.world_size} GPU" + ("s" if par.world_size > 1 else "")
    if par.nodes > 1:
        gpus += f" ({par.nodes} nodes x {par.gpus_per_node})"
    summary = " · ".join([*parts, gpus]) if parts else gpus
    return Layout(
        world_size=par.world_size,
        dp_replicate=par.dp_replicate,
        dp_shard=par.dp_shard,
        tp=par.tp,
        sequence_parallel=par.sequence_parallel,
        cp=par.cp,
        pp=par.pp,
        pp_schedule=par.pp_schedule.value if par.pp > 1 else None,
        ep=par.ep,
        engine=engine,
        options=options,
        peak_rank=stage.index * (par.world_size // par.pp),
        peak_stage=stage.index,
        summary=summary,
    )


def _inference_walk(
    res: Resolved, rank: _Rank, w: _Walk
) -> tuple[list[_RawEvent], int, dict[str, int], list[str]]:
    """Inference: ``generate``'s prefill and decode (``--engine hf``) or vLLM's budget.

    Source: ``formulas/inference.py`` (transformers 5.24 ``generate``) and ``serving.py``
    (vLLM ``determine_available_memory``).
    """
    from vramcalc.inference_walk import inference_events

    events, details, notes = inference_events(res, rank.spec, rank.inventory, rank.plan)
    for phase, event, comps in events:
        w.add(1, phase, event, comps)
    return w.events, 0, details, notes


# ----------------------------------------------------------------------------- overheads


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
    if res.training.trainer.name == Trainer.REWARD:
        res = _reward_model(res)
    spec, tr = res.model, res.training
    inventory = param_inventory(spec)
    if tr.trainer.name == Trainer.REWARD:  # the score head replaces the LM head
        inventory = tuple(g for g in inventory if g.kind != "lm_head")
    notes = list(res.notes)
    walked = []
    for stage in stages(spec, res.parallel, tr.grad_accum):
        rank = _rank(res, stage, inventory, optim_impl)
        raw, cpu, zdetails, znotes = _walk(res, rank, embedding_backward_buffers)
        top = max(e[4] for e in raw)
        walked.append((top, -stage.index, rank, raw, cpu, zdetails, znotes))
    _, _, rank, raw, cpu, zdetails, znotes = max(walked, key=lambda x: (x[0], x[1]))
    plan, prof, opt = rank.plan, rank.prof, rank.opt
    notes += znotes
    # the first event among equal maxima, as max_memory_allocated records it
    peak_step, peak_phase, peak_event, comps, tensors = max(raw, key=lambda e: e[4])
    paged = opt.paged_bytes if opt is not None else 0
    n_ws = 0 if trace else (2 if tr.task == Task.TRAIN else 1)
    ov = overheads(res.hardware.gpu, tensors, paged, workspaces=n_ws)
    allocated, reserved, device = ov.allocated, ov.reserved, ov.device
    base_details, assumptions = ov.details, dict(ov.assumptions)
    breakdown = Breakdown(
        base=device - tensors - paged,
        params=comps.get("params", 0),
        activations=comps.get("activations", 0),
        gradients=comps.get("gradients", 0),
        optimizer=comps.get("optimizer", 0) + paged,
    )
    details: dict[str, int] = {}
    details.update({k: v for k, v in plan.details.items()})
    rs = rank.states
    live_params = comps.get("params", 0)
    if rs is not None and rs.sharded:
        # sharded parameters at rest, the units gathered at the peak, the batch
        inputs = _input_bytes(tr)
        details = {k: v for k, v in details.items() if not k.startswith("params/")}
        details["params/inputs"] = inputs
        resident = rank.trainer.resident_bytes if rank.trainer is not None else 0
        details["params/gathered"] = max(live_params - rs.params - inputs - resident, 0)
        block_bwd = peak_event.startswith("block") and peak_event.endswith("backward")
        if block_bwd and rs.grad_block_full:
            details["gradients/reduce_scatter"] = rs.grad_block_full
    else:
        resident = rank.trainer.resident_bytes if rank.trainer is not None else 0
        details["params/inputs"] = max(live_params - plan.param_bytes - resident, 0)
    if prof is not None:
        details.update(prof.details)
    if opt is not None and res.parallel.fsdp is None:
        details.update(opt.details)
        if opt.step_temp_bytes:
            details["optimizer/step_temporaries"] = opt.step_temp_bytes
    details.update(zdetails)
    details.update(base_details)
    if peak_phase != Phase.OPTIMIZER:
        details.pop("optimizer/step_temporaries", None)
    if rank.trainer is not None:
        details = _trainer_details(details, rank.trainer, peak_event)
        notes += list(rank.trainer.plan.notes)
        if rank.trainer.plan.reference_kind == "copy" and rs is not None and rs.sharded:
            notes.append(
                "the sharded reference's per-layer all-gathers during its no-grad forward are "
                "not itemised (the policy's gather buffers of the same size are)"
            )
    details = _details_at_peak(details, breakdown)
    if rank.trainer is not None and "params/policy" not in details and "params/other" in details:
        # ZeRO-3 keeps no per-group row for the policy's shard: the rest is the policy
        details["params/policy"] = details.pop("params/other")
    full_plan = (
        plan
        if rank.inventory is inventory
        else plan_params(spec, inventory, tr, sharded_quant=res.parallel.fsdp is not None)
    )
    summary = ModelSummary(
        name=spec.name,
        hf_id=spec.hf_id,
        model_type=spec.model_type,
        n_params=spec.n_params or full_plan.n_params - sum(a.numel for a in full_plan.adapters),
        n_trainable_params=full_plan.n_trainable,
    )
    fit_report = _fit_report(res, device) if res.hardware.gpu is not None else None
    cost_report = _cost(res, inventory, full_plan, notes)
    notes += _not_modelled(res)
    assumptions.update(
        {
            "param_dtype": tr.param_dtype.value,
            "mixed_precision": tr.mixed_precision.value,
            "optimizer": opt.name if opt else None,
            "optimizer_impl": optim_impl or (str(opt.row.get("temporaries")) if opt else None),
            "attention": tr.attn.value,
            "attention_kernels": attention_kernels(res.model, tr),
            "grad_ckpt": tr.grad_ckpt,
            "zero_stage": int(res.parallel.zero_stage),
            "world_size": res.parallel.world_size,
            "sharding": res.parallel.engine,
            "hf_trainer_param_groups": 2,
        }
    )
    if rank.trainer is not None:
        assumptions["trainer"] = rank.trainer.plan.name.value
        assumptions["reference"] = rank.trainer.plan.reference_kind
    assumptions.update(_architecture_assumptions(spec, tr))
    if tr.vision is not None:
        vis = tr.vision
        assumptions.update(
            {
                "images_per_row": vis.images,
                "image_size": f"{vis.height}x{vis.width}",
                "vision_tokens_per_image": vis.patches,
                "image_tokens_per_image": vis.tokens,
                "freeze_vision": vis.freeze,
            }
        )
    return MemoryReport(
        version=__version__,
        model=summary,
        peak=Peak(
            allocated_bytes=allocated,
            reserved_bytes=reserved,
            device_bytes=device,
            phase=peak_phase,
            event=peak_event,
            step=peak_step,
        ),
        breakdown=breakdown,
        details=details,
        timeline=_timeline(raw),
        cpu_bytes=cpu,
        layout=_layout(res.parallel, rank.stage),
        fit=fit_report,
        cost=cost_report,
        serving=_serving(res, rank),
        assumptions=assumptions,
        notes=notes,
    )


def _reward_model(res: Resolved) -> Resolved:
    """Replace the causal LM's head by a reward model's bias-free ``score`` Linear(H, 1).

    ``AutoModelForSequenceClassification`` with ``num_labels=1`` keeps the backbone and adds
    ``score`` (untied); its ``H`` weights are negligible and not counted, its saved input is
    (``trainers.apply_head``).

    Source: trl 1.16.0 ``trl/trainer/reward_trainer.py``; transformers 5.24
    ``modeling_layers.py`` (``GenericForSequenceClassification``).
    """
    from dataclasses import replace

    spec = res.model.model_copy(update={"has_lm_head": False, "tie_word_embeddings": False})
    return replace(res, model=spec)


def _trainer_details(details: dict[str, int], tw: TrainerWalk, peak_event: str) -> dict[str, int]:
    """Name the model each parameter byte belongs to; add the trainer's event rows at the peak.

    ``params/policy`` is the policy's weights (and adapters), ``params/reference`` a reference
    copy, ``params/inputs`` the batch.
    """
    keep = ("params/inputs", "params/gathered")
    out = {k: v for k, v in details.items() if not k.startswith("params/") or k in keep}
    out["params/policy"] = sum(
        v for k, v in details.items() if k.startswith("params/") and k not in keep
    )
    out.update(tw.resident)
    if tw.extra_states:  # PPO: the value model's AdamW states
        out["optimizer/value_model"] = tw.extra_states
    if tw.extra_grads and peak_event.startswith("optimizer step"):
        out["gradients/value_model"] = tw.extra_grads
    for tev in (*tw.before_forward, *tw.after_forward, *tw.after_step):
        if tev.event == peak_event:
            out.update(tev.rows)
    return out


def _serving(res: Resolved, rank: _Rank) -> ServingReport | None:
    inf = res.training.inference
    if inf is None or inf.engine != ServeEngine.VLLM:
        return None  # what serving_for answers, without importing the inference modules
    from vramcalc.inference_walk import serving_for

    return serving_for(res, rank.spec, rank.inventory)


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
    by_comp: dict[str, dict[str, int]] = {c: {} for c in _REST}
    for k, v in details.items():  # one pass; each component keeps the rows' order
        rows_of = by_comp.get(k.split("/", 1)[0])
        if rows_of is not None and v > 0:
            rows_of[k] = int(v)
    for comp in ("base", "params", "activations", "gradients", "optimizer"):
        live = int(getattr(breakdown, comp))
        rows = by_comp[comp]
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


def _architecture_assumptions(spec: ModelSpec, tr: TrainingSpec) -> dict[str, str | int]:
    """State the kernel paths assumed for SSM layers and for encoder-decoder attention.

    Source: transformers v5.24 ``models/mamba/modeling_mamba.py`` (``MambaMixer.forward``
    falls back to ``mamba_selective_scan``'s sequential loop when ``mamba_ssm`` is missing),
    ``models/t5/modeling_t5.py`` (position bias as an SDPA float mask); see
    ``formulas/activations.py`` (``_ssm``, ``_cross_attention``).
    """
    out: dict[str, str | int] = {}
    if int(spec.arch.get("ssm_layers") or 0) > 0 and spec.arch.get("ssm_kind") == "ssd":
        out["ssm_scan"] = (
            "transformers' pure-torch chunked SSD scan (mamba-ssm / causal-conv1d not "
            "installed, as on CPU): per Mamba-2 layer three B x heads x S x chunk_size fp32 "
            "tensors (exp(segsum(A)), C.B, their product) and a dozen T x I fp32 tensors are "
            "saved; with the CUDA kernel (mamba_split_conv1d_scan_combined) only O(T x I) per "
            "layer is, so this estimate is an upper bound there"
        )
    elif int(spec.arch.get("ssm_layers") or 0) > 0:
        out["ssm_scan"] = (
            "transformers' pure-torch selective scan (mamba-ssm / causal-conv1d not "
            "installed, as on CPU): per SSM layer three T x I x N fp32 tensors (exp(A*dt), "
            "dt*B, the per-step states) are saved; with the CUDA kernels (mamba_inner_fn) the "
            "scan runs in SRAM and saves only O(T x I) per layer, so this estimate is an "
            "upper bound there"
        )
    if spec.is_encoder_decoder:
        out["target_len"] = tr.target_len or tr.seq_len
        out["encoder_decoder_attention"] = (
            "encoder over seq_len tokens, decoder over target_len; T5's relative position "
            "bias reaches SDPA as a float mask: the memory-efficient kernel with that bias "
            "(flash takes no mask); eager keeps the B x heads x S_q x S_k probabilities"
        )
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
    par = res.parallel
    if par.tp > 1:
        out.append(
            "tensor parallelism as torch parallelize_module / Megatron shard it (column/row/"
            "vocab-parallel); the TP collectives' buffers are transient and not itemised"
        )
    if par.pp > 1:
        out.append(
            f"pipeline stage {0}..{par.pp - 1}: the reported rank is the worst stage; "
            "stage-to-stage send/receive buffers are not itemised"
        )
    if par.ep > 1 and not res.model.num_local_experts:
        out.append("expert parallelism has no effect without experts")
    if tr.target_len is not None and tr.target_len != tr.seq_len:
        out.append(
            "time and cost count the decoder's FLOPs at --seq-len tokens (memory uses --target-len)"
        )
    if tr.quant is not None and tr.recipe.quant_load == "on_load":
        out.append(
            "the quantized base is assumed loaded through transformers' BitsAndBytesConfig "
            "(quantized layer by layer); scripts that load 16-bit weights first peak higher at load"
        )
    elif tr.quant is not None:
        out.append(
            f"{tr.recipe.framework} quantizes after loading 16-bit weights, one linear at a "
            "time"
            + (", the LM head too" if tr.recipe.quant_lm_head else "")
            + (
                "; its peak counter is never reset, so the load is inside the peak"
                if tr.recipe.peak_reset == "never"
                else ""
            )
        )
    spec = res.model
    if spec.has_lm_head and spec.arch.get("task_head") == "masked_lm":
        # the class config.json's architectures[0] names (data/architectures.json templates)
        out.append(
            "masked-LM head (config.json architectures[0]): logits and loss over every "
            "position (sparse_prediction, which scores only masked tokens, is not modelled)"
            if spec.model_type == "modernbert"
            else "masked-LM head (config.json architectures[0]): logits and loss over every "
            "position"
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
