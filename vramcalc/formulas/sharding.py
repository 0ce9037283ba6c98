"""Per-rank model states under a sharding engine, and the transient buffers it needs.

One module for every engine that acts over the data-parallel ranks (``ParallelSpec.engine``):

* ``none`` / ``ddp``: whole parameters, gradients and states on every rank; DDP adds its
  gradient buckets (a second copy of the gradients unless ``gradient_as_bucket_view``).
* ``zero`` (DeepSpeed ZeRO 1/2/3): 16-bit parameters and gradients on the GPU and, inside the
  optimizer, an fp32 master copy, fp32 gradient partition and the states; stage 1 partitions
  the optimizer side, stage 2 also the 16-bit gradients, stage 3 also the parameters, which
  are gathered module by module around each use (``stage3_prefetch_bucket_size`` ahead, the
  tied embedding whole for the LM head); offload moves the optimizer side (and in stage 3 the
  parameter partitions) to pinned CPU memory.
* ``fsdp1`` / ``fsdp2`` (PyTorch FSDP, one unit per decoder block plus the root): each rank
  keeps a ``1/dp_shard`` slice of every parameter (FSDP2: dim-0 rows of each tensor, padded to
  a multiple of the shard count; FSDP1: one flat parameter per unit padded likewise), the
  matching gradient slice and optimizer states; the unit that runs is all-gathered (in the
  mixed-precision ``param_dtype``), the next one prefetched in backward, the root's
  parameters stay unsharded from forward to the end of backward; a block's full gradients
  live until its reduce-scatter. ``CPUOffload`` keeps the shards, their gradients and the
  states in CPU memory.

The result is a ``RankStates``: persistent bytes (params, gradients at the step, optimizer
states, step temporaries, CPU bytes) and the transient bytes the step walk adds at each event.

Source: Rajbhandari et al. 2020 (ZeRO), Section 5 and Figure 1; DeepSpeed 0.19
``runtime/zero/stage_1_and_2.py``, ``stage3.py``, ``partitioned_param_coordinator.py``; torch
2.13 ``distributed/fsdp/_flat_param.py`` (FSDP1 flat parameters and padding),
``distributed/fsdp/_fully_shard/_fsdp_param.py`` (dim-0 shards), ``_fsdp_collectives.py``
(``foreach_all_gather``, ``foreach_reduce``), ``_fsdp_state.py`` (the root is not resharded
after forward); Zhao et al. 2023, "PyTorch FSDP: Experiences on Scaling Fully Sharded Data
Parallel", Section 3-4.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from vramcalc.enums import FsdpStrategy, Offload, ZeroStage
from vramcalc.formulas.counts import ParamGroup
from vramcalc.formulas.optimizer import OptimizerPlan, plan_optimizer
from vramcalc.formulas.params import ParamPlan, Trainable, block
from vramcalc.specs import ModelSpec, ParallelSpec

__all__ = ["RankStates", "Units", "rank_states", "units"]

FP32_BYTES = 4  # fp32 master copies and fp32 gradient partitions
HALF_BYTES = 2  # fp16/bf16


@dataclass(frozen=True)
class Units:
    """A rank's parameter tensors cut into the units a gathering engine handles one at a time.

    Attributes:
        n_blocks: decoder (and encoder) blocks on this rank.
        block: ``(bytes of one instance, instances per block, bytes per element)`` of each
            tensor kind inside a block (bytes per element 0: quantized storage).
        root: ``(bytes of one instance, count, bytes per element)`` outside the blocks
            (embeddings, final norms, LM head, prompt tables).
        block_trainable_elements: trainable elements of one block (adapters included).
        root_trainable_elements: trainable elements of the root.

    """

    n_blocks: int
    block: tuple[tuple[int, int, int], ...]
    root: tuple[tuple[int, int, int], ...]
    block_trainable_elements: int
    root_trainable_elements: int
    embed: tuple[tuple[int, int, int], ...] = ()
    head: tuple[tuple[int, int, int], ...] = ()
    embed_trainable_elements: int = 0
    head_trainable_elements: int = 0
    rest: tuple[tuple[int, int, int], ...] = ()
    """Root tensors that are neither the token embedding nor the final norm / LM head."""
    block_avg_bytes: int = -1
    """Stored bytes of the average block (all blocks' tensors / blocks); -1: ``block_bytes``
    (every block alike)."""
    block_avg_trainable_elements: int = -1
    """Trainable elements of the average block; -1: ``block_trainable_elements``."""
    block_all: tuple[tuple[int, int, int], ...] = ()
    """Every block tensor with its count over all blocks (set with layer schedules)."""

    @property
    def block_bytes(self) -> int:
        """Stored bytes of one block's parameters (before block rounding)."""
        return sum(nb * c for nb, c, _ in self.block)

    @property
    def avg_bytes(self) -> int:
        """Stored bytes of the average block (``block_bytes`` when every block is alike)."""
        return self.block_bytes if self.block_avg_bytes < 0 else self.block_avg_bytes

    @property
    def avg_trainable_elements(self) -> int:
        """Trainable elements of the average block."""
        if self.block_avg_trainable_elements < 0:
            return self.block_trainable_elements
        return self.block_avg_trainable_elements

    @property
    def root_bytes(self) -> int:
        """Stored bytes of the root's parameters (before block rounding)."""
        return sum(nb * c for nb, c, _ in self.root)


_ROOT_PREFIXES = ("embed/", "head/", "prompt/", "prefix/")


def _in_block(key: str, count: int, n_blocks: int) -> bool:
    if key.startswith(_ROOT_PREFIXES) or "final_norm" in key or n_blocks <= 0:
        return False
    return count % n_blocks == 0


_LAYER_STACKS = ("decoder/", "encoder/")


def _in_some_blocks(key: str, count: int, n_blocks: int) -> bool:
    """Say whether a decoder/encoder layer tensor is in only some layers (schedules)."""
    return (
        n_blocks > 0
        and key.startswith(_LAYER_STACKS)
        and "final_norm" not in key
        and count % n_blocks != 0
    )


def units(plan: ParamPlan, n_blocks: int) -> Units:
    """Split a rank's parameter tensors into per-block and root units.

    A tensor belongs to the blocks when it has one instance (or one per expert) in every
    block; the rest -- embeddings, final norms, the LM head -- is the root, as
    ``fully_shard(block)`` for each block then ``fully_shard(model)`` (or FSDP1's
    transformer auto-wrap policy) wrap them. A layer tensor that only some layers have (a
    dense-then-MoE schedule as in DeepSeek-V3 or Llama 4, Jamba's attention and MoE layers,
    Llama-3.2-Vision's cross-attention layers) is still wrapped with its layer: the running
    unit (``block``) is taken as the union of the layer kinds -- every kind's tensors once,
    experts ``stack`` per layer -- an upper bound on the largest layer; totals (FSDP1's flat
    shards, the accumulated gradients) use the average block (``block_avg_*``).
    """
    blk: list[tuple[int, int, int]] = []
    root: list[tuple[int, int, int]] = []
    emb: list[tuple[int, int, int]] = []
    head: list[tuple[int, int, int]] = []
    rest: list[tuple[int, int, int]] = []
    b_tr = r_tr = e_tr = h_tr = 0
    total_b = total_tr = 0
    partial = False
    every: list[tuple[int, int, int]] = []
    trainable = plan.trainable_keys
    for key, nb, count, eb, _rows, stack in plan.tensors:
        trains = key in trainable
        el = (nb // eb) * count if trains and eb else 0
        if _in_block(key, count, n_blocks):
            per = count // n_blocks
            blk.append((nb, per, eb))
            b_tr += el // n_blocks
            total_b += nb * count
            total_tr += el
            every.append((nb, count, eb))
            continue
        if _in_some_blocks(key, count, n_blocks):
            partial = True
            blk.append((nb, stack, eb))
            b_tr += (nb // eb) * stack if trains and eb else 0
            total_b += nb * count
            total_tr += el
            every.append((nb, count, eb))
            continue
        root.append((nb, count, eb))
        r_tr += el
        if key == "embed/tokens":
            emb.append((nb, count, eb))
            e_tr += el
        elif key.startswith("head/") or "final_norm" in key:
            head.append((nb, count, eb))
            h_tr += el
        else:
            rest.append((nb, count, eb))
    return Units(
        n_blocks,
        tuple(blk),
        tuple(root),
        b_tr,
        r_tr,
        tuple(emb),
        tuple(head),
        e_tr,
        h_tr,
        tuple(rest),
        total_b // max(n_blocks, 1) if partial else -1,
        total_tr // max(n_blocks, 1) if partial else -1,
        tuple(every) if partial else (),
    )


@dataclass
class RankStates:
    """Model states of one rank and the transient buffers of its sharding engine (bytes).

    Persistent: ``params`` (on the GPU at rest), ``gradients`` (alive at the optimizer
    step, buckets included), ``optimizer`` (states on the GPU), ``step_temps``, ``cpu``
    (offloaded). Transient (added by the step walk at the events where they are alive):
    ``gather_block`` (one block's unsharded parameters while it runs), ``gather_prefetch``
    (the next block, prefetched in backward), ``gather_root`` (the root's unsharded
    parameters, from the embedding forward to the end of backward), ``gather_buffer`` (an
    all-gather output while its block's parameters are copied out), ``grad_block_full`` (a
    block's full gradients before its reduce-scatter, with the reduce-scatter input),
    ``grad_block`` / ``grad_head`` / ``grad_embed`` / ``grad_other`` (gradient bytes each part
    of backward leaves behind on this rank), ``grad_root_full`` (the root's full gradients,
    kept until its reduce-scatter at the end of backward).
    """

    params: int = 0
    gradients: int = 0
    optimizer: int = 0
    step_temps: int = 0
    cpu: int = 0
    details: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    gather_block: int = 0
    gather_prefetch: int = 0
    gather_root: int = 0
    gather_buffer: int = 0
    grad_block_full: int = 0
    grad_root_full: int = 0
    gather_embed: int = 0
    gather_head: int = 0
    grad_embed_full: int = 0
    grad_head_full: int = 0
    sharded: bool = False
    root_held: bool = False
    embed_held: bool = False
    gather_block_avg: int = 0
    """The average block's gathered parameters where blocks differ (layer schedules): what
    each block adds while every block stays gathered (no reshard after forward); 0: the
    blocks are alike (``gather_block``)."""
    grad_unsharded: int = 0
    """FSDP: every unit's unsharded gradients, which accumulate across the micro-batches of
    an optimizer step run under ``no_sync`` (0: not applicable)."""


def _shard(n: int, parts: int) -> int:
    """Elements of one rank's slice of an ``n``-element tensor split over ``parts`` ranks."""
    return -(-n // parts)


def _sharded_plan(plan: ParamPlan, ratio_num: int, ratio_den: int) -> ParamPlan:
    """Return the trainable tensors of ``plan`` as one rank's shards (``num/den`` each)."""

    def part(n: int) -> int:
        return -(-n * ratio_num // ratio_den)

    elems = [t._replace(numel=part(t.numel)) for t in plan.trainable_elements]
    return replace(
        plan,
        trainable_elements=elems,
        grad_tensors=[(block(t.numel * t.elt_bytes), t.instances, 0) for t in elems],
        decay_bytes=-(-plan.decay_bytes * ratio_num // ratio_den),
        nodecay_bytes=-(-plan.nodecay_bytes * ratio_num // ratio_den),
        largest_trainable=-(-plan.largest_trainable * ratio_num // ratio_den),
    )


def _fsdp2_plan(plan: ParamPlan, n: int) -> ParamPlan:
    """Return the trainable tensors of ``plan`` as FSDP2's rank-0 shards over ``n`` ranks.

    ``fully_shard`` splits every parameter on dim 0 with ``torch.chunk`` and pads the chunks
    to ``ceil(dim0 / n)`` rows; rank 0 holds a full chunk. For a 2-D weight whose rows divide
    by ``n`` that is exactly ``numel / n`` elements (what ``_sharded_plan`` gives), but a fused
    3-D MoE parameter ``[experts, out, in]`` is split by whole experts: with fewer experts
    than ranks, rank 0 holds one expert (``ceil(experts / n)`` of them), not ``1 / n`` of the
    tensor, and the optimizer states and gradients follow that shard.

    Source: torch 2.13 ``distributed/fsdp/_fully_shard/_fsdp_param.py``
    (``FSDPParam._init_sharded_param``: ``torch.chunk(param, shard_world_size, dim=0)``,
    ``padded_sharded_param_size``); transformers 5.24 ``models/mixtral/modeling_mixtral.py``
    ``MixtralExperts`` (``gate_up_proj`` / ``down_proj`` are ``[num_experts, ...]``); rank-0
    trace ``mixtral-full-fsdp2-fs-w8-ampbf16-ckpt-b2s256`` (4 experts on 8 ranks,
    ``validation/measurements/trace-dist.jsonl``).
    """
    even = _sharded_plan(plan, 1, n)
    elems: list[Trainable] = []
    extra = 0
    for t in plan.trainable_elements:
        e = _row_shard(t.numel, t.rows, t.stack, n)
        elems.append(Trainable(e, t.instances // t.stack, t.elt_bytes, -(-t.rows // n), 1))
        extra += block(e * t.elt_bytes) * (t.instances // t.stack)
        extra -= block(_shard(t.numel, n) * t.elt_bytes) * t.instances
    grads = [(block(t.numel * t.elt_bytes), t.instances, 0) for t in elems]
    return replace(
        even,
        trainable_elements=elems,
        grad_tensors=grads,
        decay_bytes=even.decay_bytes + extra,
        largest_trainable=max((g for g, _, _ in grads), default=0),
    )


def _row_shard(per_instance: int, rows: int, stack: int, n: int) -> int:
    """Rank 0's share of one stored tensor under ``torch.chunk(..., n, dim=0)``.

    The tensor holds ``stack`` instances of ``per_instance`` units in ``rows`` dim-0 rows;
    rank 0 gets ``ceil(rows / n)`` rows, returned in the instance's units.
    """
    return -(-rows // n) * (per_instance * stack // rows)


def rank_states(
    spec: ModelSpec,
    inventory: tuple[ParamGroup, ...],
    plan: ParamPlan,
    opt: OptimizerPlan,
    parallel: ParallelSpec,
    *,
    compute_bytes: int,
    n_blocks: int,
) -> RankStates:
    """Per-rank model states and engine buffers for ``parallel.engine``.

    Args:
        spec: the rank's model (``layout.rank_spec``).
        inventory: the rank's parameter groups (``layout.rank_inventory``).
        plan: parameter bytes and trainable tensors of that slice.
        opt: the optimizer over the whole slice (states before sharding).
        parallel: the layout.
        compute_bytes: bytes per element of the dtype the forward runs in (gathered
            parameters under FSDP mixed precision).
        n_blocks: blocks on this rank.

    """
    engine = parallel.engine
    if engine.startswith("fsdp"):
        return _fsdp(plan, opt, parallel, compute_bytes, n_blocks)
    if engine == "zero":
        return _zero(plan, opt, parallel, n_blocks)
    return _replicated(plan, opt, parallel)


def _grads_bytes(plan: ParamPlan, opt: OptimizerPlan) -> int:
    return sum(b * c for b, c, _ in plan.grad_tensors) if opt.stores_grads else 0


def _replicated(plan: ParamPlan, opt: OptimizerPlan, parallel: ParallelSpec) -> RankStates:
    """Whole states on every rank; DDP's buckets hold a second copy of the gradients.

    Source: torch ``nn.parallel.DistributedDataParallel`` (``bucket_cap_mb=25``,
    ``gradient_as_bucket_view=False`` as the HF Trainer leaves it): the reducer allocates
    bucket storage for every gradient.
    """
    grads = _grads_bytes(plan, opt)
    out = RankStates(
        params=plan.param_bytes,
        gradients=grads,
        optimizer=opt.state_bytes,
        step_temps=opt.step_temp_bytes,
    )
    if parallel.dp > 1 and grads:
        out.details["gradients/ddp_buckets"] = grads
        out.notes.append(
            "DDP keeps a second copy of the gradients in its buckets "
            "(gradient_as_bucket_view=False, the Trainer default)"
        )
        out.gradients += grads
    return out


def _zero(
    plan: ParamPlan,
    opt: OptimizerPlan,
    parallel: ParallelSpec,
    n_blocks: int,
) -> RankStates:
    """DeepSpeed ZeRO 1/2/3 on one rank.

    Source: DeepSpeed 0.19 ``runtime/zero/stage_1_and_2.py`` (fp32 master partition
    ``single_partition_of_fp32_groups``, its gradient, ``reduce_bucket_size`` IPG buckets),
    ``stage3.py`` and ``partitioned_param_coordinator.py`` (fetch a module's parameters before
    its forward/backward, prefetch up to ``stage3_prefetch_bucket_size`` elements in trace
    order, keep parameters under ``stage3_param_persistence_threshold`` elements whole, release
    after use); ZeRO paper Section 5.
    """
    z = parallel.zero
    assert z is not None
    n = parallel.dp_shard
    out = RankStates()
    P = plan.param_bytes
    G = _grads_bytes(plan, opt)
    opt_b, temp = opt.state_bytes, opt.step_temp_bytes
    psi_t = plan.n_trainable
    sixteen = z.precision in ("fp16", "bf16")
    if sixteen:
        # the optimizer steps the fp32 master partition: its states and work lists are fp32
        fp32 = [t._replace(elt_bytes=FP32_BYTES) for t in plan.trainable_elements]
        plan32 = replace(plan, trainable_elements=fp32)
        opt32 = plan_optimizer(opt.name, plan32)
        opt_b, temp = opt32.state_bytes + opt32.paged_bytes, opt32.step_temp_bytes
    master = FP32_BYTES * psi_t if sixteen else 0
    fp32_grads = FP32_BYTES * psi_t if sixteen else 0
    opt_side = -(-(master + opt_b + fp32_grads) // n)
    temp = -(-temp // n)
    stage = z.zero_stage
    grads = -(-G // n) if stage >= ZeroStage.GRADIENTS else G
    bucket_b = HALF_BYTES if sixteen else FP32_BYTES
    buckets = block(z.reduce_bucket_size * bucket_b) if stage in (1, 2) else 0
    params = P
    if stage == ZeroStage.PARAMETERS:
        u = units(plan, n_blocks)
        elems = [(nb // eb if eb else nb, c) for nb, c, eb in u.block]
        persist = sum(e * c for e, c in elems if e <= z.stage3_param_persistence_threshold)
        block_elems = sum(e * c for e, c in elems)
        gathered = max(block_elems - persist, 0)
        # the fetched module plus what the coordinator prefetches ahead of it, capped by
        # max_live_parameters; the tied embedding / LM head is fetched whole for the loss
        ahead = min(z.stage3_prefetch_bucket_size, block_elems)
        live = min(gathered + ahead, max(z.stage3_max_live_parameters, gathered))
        out.gather_block = block(gathered * bucket_b)
        out.gather_prefetch = block(max(live - gathered, 0) * bucket_b)
        out.gather_root = _gathered(u.root, bucket_b)
        params = -(-P // n) + block(persist * n_blocks * bucket_b)
        buckets = block(min(z.reduce_bucket_size, psi_t) * bucket_b)
        out.sharded = True
        if z.offload_param != Offload.NONE:
            out.cpu += P
            params = block(persist * n_blocks * bucket_b)
    if z.offload_optimizer != Offload.NONE:
        out.cpu += opt_side
        out.details["optimizer/offloaded_to_cpu"] = 0
        out.notes.append(
            f"optimizer states, fp32 master weights and fp32 gradients are in "
            f"{z.offload_optimizer.value} memory ({opt_side} bytes per rank)"
        )
        opt_side = 0
        temp = 0
    out.details["optimizer/master_fp32"] = (
        -(-master // n) if z.offload_optimizer == Offload.NONE else 0
    )
    out.details["gradients/zero_buckets"] = buckets
    out.params, out.gradients, out.optimizer, out.step_temps = (
        params,
        grads + buckets,
        opt_side,
        temp,
    )
    return out


def _gathered(tensors: tuple[tuple[int, int, int], ...], compute_bytes: int) -> int:
    """Allocated bytes of unsharded tensors in the forward's dtype (quantized stay packed)."""
    total = 0
    for nb, c, eb in tensors:
        if eb and eb != compute_bytes:
            nb = nb // eb * compute_bytes
        total += block(nb) * c
    return total


def _no_sync_grads(
    plan: ParamPlan, u: Units, version: int, compute_bytes: int, n: int, block_grad: int
) -> int:
    """Unsharded gradients FSDP keeps across micro-batches run under ``no_sync``.

    accelerate's ``Accelerator.accumulate`` (the Trainer's training step) runs every
    micro-batch but the last of an optimizer step under ``Accelerator.no_sync``: FSDP2
    ``set_requires_gradient_sync(False)`` skips the reduce-scatter and each unsharded
    parameter keeps its ``.grad`` (in the unsharded ``param_dtype``); FSDP1's ``no_sync()``
    leaves each unit's unsharded, padded flat gradient in ``flat_param.grad``. So the whole
    model's gradients are alive unsharded from the first micro-batch's backward until the
    last micro-batch reduces them -- ``dp_shard`` times the sharded gradients.

    Source: torch 2.13 ``distributed/fsdp/_fully_shard/_fsdp_param_group.py``
    (``post_backward``: ``if not self.reduce_grads``), ``distributed/fsdp/_runtime_utils.py``
    (``_post_backward_hook``: ``if not state._sync_gradients: return``); accelerate 1.15
    ``Accelerator.no_sync`` / ``accumulate`` (``sync_each_batch``); rank-0 traces
    ``*-ga2`` in ``validation/measurements/trace-dist.jsonl``.
    """
    if version == 2:
        return sum(block(t.numel * compute_bytes) * t.instances for t in plan.trainable_elements)
    if block_grad == u.block_trainable_elements:  # layer schedules: the average block
        block_grad = u.avg_trainable_elements
    blocks = block(_shard(block_grad * compute_bytes, n) * n) * u.n_blocks
    return blocks + block(_shard(u.root_trainable_elements * compute_bytes, n) * n)


def _unsharded_grad(elements: int, compute_bytes: int, n: int) -> int:
    """Return a unit's gradient bytes while it is reduced.

    Autograd's unsharded gradient and the reduce-scatter input it is copied into (padded to
    ``n`` equal chunks) are alive at once.

    Source: torch 2.13 ``distributed/fsdp/_fully_shard/_fsdp_collectives.py``
    (``foreach_reduce``: ``reduce_scatter_input`` then ``_chunk_cat``); rank-0 traces
    (``validation/measurements/trace-dist.jsonl``, the few-token FSDP2 case).
    """
    if not elements:
        return 0
    full = block(elements * compute_bytes)
    return full + block(_shard(elements * compute_bytes, n) * n)


def _fsdp(
    plan: ParamPlan,
    opt: OptimizerPlan,
    parallel: ParallelSpec,
    compute_bytes: int,
    n_blocks: int,
) -> RankStates:
    """FSDP1 / FSDP2 with one unit per block plus the root, on one rank.

    Shards: FSDP2 splits each tensor into ``ceil(numel / n)``-element slices (dim-0 rows,
    padded); FSDP1 concatenates a unit's tensors into one flat parameter padded to a
    multiple of ``n``. Gradients and optimizer states follow the shards in the storage
    dtype. The running unit is all-gathered in ``compute_bytes`` per element (the
    mixed-precision ``param_dtype``); quantized storage is gathered as stored.
    """
    f = parallel.fsdp
    assert f is not None
    n = parallel.dp_shard
    # FSDP2 allocates separate unsharded parameters even on a one-rank shard mesh (no_shard)
    out = RankStates(sharded=n > 1 or f.version == 2)
    G = _grads_bytes(plan, opt)
    if n == 1 and f.version == 1:  # NO_SHARD: DDP semantics inside FSDP1 (all-reduced grads)
        out.params, out.gradients = plan.param_bytes, G
        out.optimizer, out.step_temps = opt.state_bytes, opt.step_temp_bytes
        return out
    u = units(plan, n_blocks)
    if f.version == 2:
        shard_params = sum(
            block(_row_shard(t.nbytes, t.rows, t.stack, n)) * (t.instances // t.stack)
            for t in plan.tensors
        )
        sharded_plan = _fsdp2_plan(plan, n)
    else:
        shard_params = block(_shard(u.avg_bytes, n)) * n_blocks + block(_shard(u.root_bytes, n))
        sharded_plan = _sharded_plan(plan, 1, n)
    sopt = plan_optimizer(opt.name, sharded_plan)
    # 4-bit QLoRA: FSDP shards (and gathers) the packed storage; each weight's QuantState is
    # no parameter and stays whole on every rank (bitsandbytes 0.50 ``Linear4bit``)
    replicated = plan.replicated_bytes
    out.params = shard_params + replicated
    out.gradients = _grads_bytes(sharded_plan, sopt) if opt.stores_grads else 0
    out.optimizer = sopt.state_bytes
    out.step_temps = sopt.step_temp_bytes
    out.gather_block = _gathered(u.block, compute_bytes)
    if u.block_all:
        out.gather_block_avg = -(-_gathered(u.block_all, compute_bytes) // max(n_blocks, 1))
    out.gather_buffer = block(_shard(_gathered(u.block, compute_bytes), n) * n)
    prefetch = f.version == 2 or f.backward_prefetch != "none"
    out.gather_prefetch = out.gather_block if prefetch else 0
    block_grad = u.block_trainable_elements
    if f.version == 1 and f.lora_in_blocks and block_grad and opt.stores_grads:
        # the adapters share their block's flat parameter (use_orig_params): the flat
        # gradient autograd produces and FSDP reduce-scatters is the whole unit, frozen
        # weights included (zeros there); its shard stays as the unit's _saved_grad_shard
        block_grad = sum((nb // eb if eb else nb // compute_bytes) * c for nb, c, eb in u.block)
        store = max((eb for _, _, eb in u.block), default=compute_bytes) or compute_bytes
        lora_shards = block(_shard(u.block_trainable_elements * store, n)) * n_blocks
        whole_shards = block(_shard(block_grad * store, n)) * n_blocks
        out.gradients = max(out.gradients - lora_shards, 0) + whole_shards
        out.details["gradients/flat_unit_shards"] = whole_shards
    if opt.stores_grads and block_grad:
        out.grad_block_full = _unsharded_grad(block_grad, compute_bytes, n)
    if opt.stores_grads:
        out.grad_unsharded = _no_sync_grads(plan, u, f.version, compute_bytes, n, block_grad)
    if f.version == 1:
        # FSDP1's root unit (everything outside the blocks) is not resharded after forward
        # (_runtime_utils._post_forward_reshard skips the root): held until its backward ends
        out.gather_root = _gathered(u.root, compute_bytes)
        out.root_held = True
        if opt.stores_grads and u.root_trainable_elements:
            out.grad_root_full = _unsharded_grad(u.root_trainable_elements, compute_bytes, n)
    else:
        # accelerate's fsdp2_prepare_model: fully_shard(input embeddings), then
        # fully_shard([final norm, LM head], reshard_after_forward=False), then the root: the
        # embedding is gathered around its forward and backward, the head from its forward
        # to its backward, the root's remainder from the first forward to the end of backward
        out.gather_embed = _gathered(u.embed, compute_bytes)
        out.gather_head = _gathered(u.head, compute_bytes)
        if parallel.tp > 1:
            # on a (dp, tp) mesh the embedding unit stays gathered from its forward through
            # the head's forward (rank-0 traces, FSDP2 + TP scenarios)
            out.embed_held = True
        out.gather_root = _gathered(u.rest, compute_bytes)
        out.root_held = True
        if opt.stores_grads:
            out.grad_embed_full = _unsharded_grad(u.embed_trainable_elements, compute_bytes, n)
            out.grad_head_full = _unsharded_grad(u.head_trainable_elements, compute_bytes, n)
            rest_tr = u.root_trainable_elements - u.embed_trainable_elements
            rest_tr -= u.head_trainable_elements
            out.grad_root_full = _unsharded_grad(max(rest_tr, 0), compute_bytes, n)
    out.details["params/sharded"] = shard_params
    few = sorted({t.rows for t in plan.tensors if t.stack > 1 and t.rows % n})
    if f.version == 2 and few:
        out.notes.append(
            f"FSDP2 shards each parameter on dim 0 (torch.chunk): a fused expert tensor of "
            f"{', '.join(map(str, few))} experts over {n} ranks leaves rank 0 with "
            f"{-(-few[-1] // n)} whole expert(s) per tensor, more than 1/{n} of it "
            f"(expert parallelism, or a shard_placement_fn on another dim, splits it evenly)"
        )
    if replicated:
        out.details["params/quant_state"] = replicated
    out.details.update(sopt.details)
    if sopt.step_temp_bytes:
        out.details["optimizer/step_temporaries"] = sopt.step_temp_bytes
    if f.offload and f.version == 1:
        # FSDP1 copies a unit's CPU shard to the device to all-gather it (flat_param_to), and
        # the copy lives as long as the unit is unsharded (rank-0 traces, FSDP1 offload)
        out.gather_block += block(_shard(u.block_bytes, n))
        out.gather_root += block(_shard(u.root_bytes, n))
    if f.offload:
        out.cpu = shard_params + out.gradients + out.optimizer
        out.notes.append(
            "FSDP CPU offload: parameter shards, their gradients and the optimizer states are "
            f"in CPU memory ({out.cpu} bytes per rank); the optimizer steps on the CPU"
        )
        out.params = replicated
        out.gradients = out.optimizer = out.step_temps = 0
    if f.strategy == FsdpStrategy.SHARD_GRAD_OP or not f.reshard_after_forward:
        out.notes.append(
            "parameters are not resharded after forward: every block's unsharded parameters "
            "stay alive from its forward to its backward"
        )
    return out
