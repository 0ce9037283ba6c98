"""The parallel layout: check the mesh, and cut the model into the slice one rank holds.

Tensor, pipeline and expert parallelism change *which* tensors a rank holds; the sharding
engine (``formulas/sharding.py``) then splits that slice's model states over the data-parallel
ranks. This module does the first part, reading each parameter group's ``role``:

* ``column`` (q/k/v, gate/up, fc1): output features split over ``tp`` (bias split too);
* ``row`` (o, down, fc2): input features split over ``tp`` (bias replicated);
* ``vocab`` (token embedding rows, LM-head outputs): split over ``tp``;
* ``replicated`` (norms, position tables, routers): whole on every rank;
* ``expert_column`` / ``expert_row``: experts split over ``ep`` ranks, then like column/row
  over ``tp`` (Megatron-core's default ``expert_tensor_parallel_size = tp``).

Pipeline stage ``s`` of ``pp`` holds its share of the blocks (the first stages take one more
when they do not divide evenly), the first stage the embeddings, the last the final norm and
LM head -- and, with tied embeddings, its own copy of the embedding for the head.

Source: Shoeybi et al. 2019 "Megatron-LM", Section 3 (column/row-parallel MLP and attention,
vocab-parallel embedding); Narayanan et al. 2021 Section 2.2 (pipeline stages); Megatron-LM
``megatron/core/tensor_parallel/layers.py`` and ``core/transformer/moe/experts.py``; torch 2.13
``distributed/tensor/parallel/style.py`` (``ColwiseParallel``/``RowwiseParallel``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from vramcalc import catalog
from vramcalc.enums import FsdpStrategy, Offload, ZeroStage
from vramcalc.errors import InvalidConfigError
from vramcalc.formulas.counts import ParamGroup
from vramcalc.specs import EstimateRequest, FsdpSpec, ModelSpec, ParallelSpec, ZeroSpec

__all__ = [
    "Stage",
    "in_flight_microbatches",
    "rank_inventory",
    "rank_spec",
    "resolve_parallel",
    "stage_layers",
    "stages",
    "tp_logits_gather_bytes",
]


def _zero_from_flags(req: EstimateRequest) -> ZeroSpec | None:
    if req.offload_param != Offload.NONE and req.zero != ZeroStage.PARAMETERS:
        raise InvalidConfigError(
            f"--offload-param {req.offload_param.value} needs --zero 3 (got --zero "
            f"{int(req.zero)}); DeepSpeed offloads parameters only in stage 3"
        )
    if req.offload_optimizer != Offload.NONE and req.zero == ZeroStage.DISABLED:
        raise InvalidConfigError(
            f"--offload-optimizer {req.offload_optimizer.value} needs --zero 1, 2 or 3"
        )
    if req.zero == ZeroStage.DISABLED:
        return None

    def c(key: str) -> int:
        return int(catalog.constant(f"deepspeed_{key}"))

    return ZeroSpec(
        zero_stage=req.zero,
        offload_optimizer=req.offload_optimizer,
        offload_param=req.offload_param,
        reduce_bucket_size=c("reduce_bucket_size"),
        allgather_bucket_size=c("allgather_bucket_size"),
        stage3_prefetch_bucket_size=c("stage3_prefetch_bucket_size"),
        stage3_max_live_parameters=c("stage3_max_live_parameters"),
        stage3_param_persistence_threshold=c("stage3_param_persistence_threshold"),
        precision={"no": "fp32", "fp16": "fp16", "bf16": "bf16"}[req.mixed_precision.value],
        overlap_comm=req.zero == ZeroStage.PARAMETERS,
    )


def _fsdp_from_flags(req: EstimateRequest) -> FsdpSpec | None:
    if req.fsdp is None:
        return None
    reshard = req.fsdp_reshard_after_forward
    if reshard is None:
        reshard = req.fsdp != FsdpStrategy.SHARD_GRAD_OP
    elif req.fsdp == FsdpStrategy.SHARD_GRAD_OP and reshard:
        raise InvalidConfigError(
            "--fsdp shard_grad_op keeps parameters unsharded after forward; it contradicts "
            "--fsdp-reshard-after-forward true (use --fsdp full_shard for that)"
        )
    return FsdpSpec(
        version=req.fsdp_version,
        strategy=req.fsdp,
        reshard_after_forward=reshard,
        offload=req.fsdp_offload,
        use_orig_params=req.fsdp_use_orig_params,
        limit_all_gathers=req.fsdp_limit_all_gathers,
        backward_prefetch=req.fsdp_backward_prefetch,
        sync_each_batch=req.fsdp_sync_each_batch,
        lora_in_blocks=req.fsdp_lora_in_blocks,
    )


def resolve_parallel(
    req: EstimateRequest, spec: ModelSpec, deepspeed: ZeroSpec | None = None
) -> ParallelSpec:
    """Check the requested mesh against the model and build the ``ParallelSpec``.

    Raises:
        InvalidConfigError: a mesh that does not multiply to the world size, a degree that
            does not divide what it splits (heads, KV heads, layers, experts, sequence), two
            sharding engines at once, or an option without the engine it belongs to.

    """
    world = req.gpus * req.nodes
    tp, cp, pp, ep = req.tp, req.cp, req.pp, req.ep
    model_par = tp * cp * pp
    if world % model_par:
        raise InvalidConfigError(
            f"--tp {tp} x --cp {cp} x --pp {pp} = {model_par} does not divide the world size "
            f"{world} (--gpus {req.gpus} x --nodes {req.nodes}); data parallelism takes "
            "world / (tp x cp x pp) ranks"
        )
    dp = world // model_par
    if tp > 1:
        for what, n in (
            ("num_attention_heads", spec.num_attention_heads),
            ("num_key_value_heads", spec.num_key_value_heads),
        ):
            if n % tp:
                raise InvalidConfigError(
                    f"--tp {tp} does not divide {spec.name}'s {what}={n}; accepted --tp: "
                    f"{', '.join(str(d) for d in _divisors(n))}"
                )
    n_layers = spec.num_hidden_layers + (spec.num_decoder_layers if spec.is_encoder_decoder else 0)
    if pp > 1:
        if spec.is_encoder_decoder:
            raise InvalidConfigError(
                f"--pp {pp} with an encoder-decoder model ({spec.model_type}) is not modelled"
            )
        if pp > n_layers:
            raise InvalidConfigError(
                f"--pp {pp} exceeds {spec.name}'s {n_layers} layers; at most one stage per layer"
            )
    if req.pp_schedule == "interleaved" and n_layers % (pp * req.pp_virtual_stages):
        raise InvalidConfigError(
            f"--pp-schedule interleaved splits {n_layers} layers into pp x virtual stages = "
            f"{pp} x {req.pp_virtual_stages} chunks; that must divide the layer count"
        )
    if cp > 1 and req.seq_len % (2 * cp):
        raise InvalidConfigError(
            f"--cp {cp} splits the sequence into 2 x cp load-balanced chunks; --seq-len "
            f"{req.seq_len} is not a multiple of {2 * cp}"
        )
    if ep > 1:
        experts = spec.num_local_experts
        if not experts:
            raise InvalidConfigError(
                f"--ep {ep} needs a mixture-of-experts model; {spec.name} has none"
            )
        if experts % ep:
            raise InvalidConfigError(
                f"--ep {ep} does not divide {spec.name}'s {experts} experts; accepted --ep: "
                f"{', '.join(str(d) for d in _divisors(experts))}"
            )
        if (dp * cp) % ep:
            raise InvalidConfigError(
                f"--ep {ep} must divide the data-parallel x context-parallel ranks "
                f"({dp} x {cp} = {dp * cp}) it reuses for experts"
            )
    # one sharding engine, FSDP options only with FSDP, sequence parallelism only with TP:
    # EstimateRequest's own validator (specs._layout_problems) refuses those
    fsdp = _fsdp_from_flags(req)
    zero = deepspeed if deepspeed is not None else _zero_from_flags(req)
    if fsdp is not None and fsdp.strategy == FsdpStrategy.HYBRID_SHARD and dp % req.nodes:
        raise InvalidConfigError(
            f"--fsdp hybrid_shard shards within a node and replicates across --nodes "
            f"{req.nodes}; the {dp} data-parallel ranks must divide evenly over the nodes"
        )
    if fsdp is not None and fsdp.strategy == FsdpStrategy.HYBRID_SHARD and req.nodes == 1:
        raise InvalidConfigError(
            "--fsdp hybrid_shard replicates across nodes; with --nodes 1 it is full_shard"
        )
    return ParallelSpec(
        gpus_per_node=req.gpus,
        nodes=req.nodes,
        tp=tp,
        sequence_parallel=req.sequence_parallel,
        cp=cp,
        pp=pp,
        pp_schedule=req.pp_schedule,
        pp_virtual_stages=req.pp_virtual_stages if req.pp_schedule == "interleaved" else 1,
        ep=ep,
        zero=zero,
        fsdp=fsdp,
    )


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0][:12]


@dataclass(frozen=True)
class Stage:
    """One pipeline stage as the step walk needs it.

    Attributes:
        index: stage number (0 = first).
        layers: blocks on this stage.
        first: holds the embeddings (and receives the batch).
        last: holds the final norm, the LM head and the loss.
        in_flight: micro-batches whose activations the stage holds at its peak.

    """

    index: int
    layers: int
    first: bool
    last: bool
    in_flight: int = 1


def stage_layers(n_layers: int, pp: int, stage: int) -> int:
    """Blocks on pipeline stage ``stage``: an even split, earlier stages take the remainder."""
    base, extra = divmod(n_layers, pp)
    return base + (1 if stage < extra else 0)


def in_flight_microbatches(parallel: ParallelSpec, stage: int, microbatches: int) -> int:
    """Micro-batches whose activations stage ``stage`` holds at once.

    1F1B: stage ``s`` runs ``pp - s`` warm-up forwards before its first backward, so the
    first stage holds ``pp`` micro-batches (never more than the step has). Interleaved with
    ``v`` chunks per rank: Megatron's penalty ``1 + (pp - 1) / (pp * v)`` on the first stage's
    activations, i.e. ``ceil(pp * penalty)`` chunk-sized micro-batches.

    Source: Narayanan et al. 2021, Section 2.2.1-2.2.2; Megatron-LM
    ``megatron/training/theoretical_memory_usage.py`` (``compute_activation_memory``).
    """
    pp = parallel.pp
    if pp == 1:
        return 1
    if parallel.pp_schedule == "interleaved":
        v = parallel.pp_virtual_stages
        # ceil(pp * (1 + (pp - 1) / (pp * v))) in integers, scaled by the stage's position
        held = -(-(pp * pp * v + (pp - 1) * pp) // (pp * v)) - stage
        return max(1, min(held, microbatches * v))
    return max(1, min(pp - stage, microbatches))


def stages(spec: ModelSpec, parallel: ParallelSpec, microbatches: int) -> list[Stage]:
    """List the distinct pipeline stages worth walking: first, last and one middle stage.

    Middle stages differ from each other only by one block of remainder and their in-flight
    count, which falls with the stage index; the second stage is the largest of them.
    """
    n = spec.num_hidden_layers + (spec.num_decoder_layers if spec.is_encoder_decoder else 0)
    pp = parallel.pp
    picks = sorted({0, pp - 1} | ({1} if pp > 2 else set()))
    return [
        Stage(
            index=s,
            layers=stage_layers(n, pp, s),
            first=s == 0,
            last=s == pp - 1,
            in_flight=in_flight_microbatches(parallel, s, microbatches),
        )
        for s in picks
    ]


def _split(n: int, parts: int) -> int:
    return -(-n // parts)


def rank_spec(spec: ModelSpec, parallel: ParallelSpec, stage: Stage) -> ModelSpec:
    """Describe the model as one rank computes it: local heads, MLP width, vocab, blocks.

    Under tensor parallelism each rank runs ``heads / tp`` attention heads, ``intermediate /
    tp`` MLP columns and (vocab-parallel head and loss) ``vocab / tp`` logits per token; the
    hidden size is whole. A pipeline stage runs its own blocks only; the LM head and loss only
    on the last stage.
    """
    tp = parallel.tp
    n_layers = stage.layers
    update: dict[str, object] = {}
    if tp > 1:
        # the LM head's output is gathered to the full vocabulary on every rank (transformers'
        # tp_plan "colwise_rep", torchtitan without loss_parallel): the loss runs on full logits
        update.update(
            num_attention_heads=spec.num_attention_heads // tp,
            num_key_value_heads=max(1, spec.num_key_value_heads // tp),
            intermediate_size=_split(spec.intermediate_size, tp),
        )
    if parallel.pp > 1:
        update.update(
            num_hidden_layers=max(n_layers, 1), has_lm_head=spec.has_lm_head and stage.last
        )
    return spec.model_copy(update=update) if update else spec


def tp_logits_gather_bytes(tokens: int, vocab: int, tp: int, compute_bytes: int) -> int:
    """Transient bytes of gathering the LM head's vocab-split logits to every rank.

    ``ColwiseParallel(output_layouts=Replicate())`` runs the local matmul (``tokens x vocab/tp``),
    all-gathers the shards into one buffer stacked along dim 0 (the functional collective's
    output and its waited copy) and concatenates them along the vocabulary into the full
    logits: at the end of the head's forward three full-vocabulary buffers and the local shard
    are alive, then all but the result are freed.

    Source: torch 2.13 ``distributed/tensor/_redistribute.py`` (Shard(-1) -> Replicate via
    ``all_gather_tensor`` on dim 0 then ``torch.cat``); transformers' ``colwise_rep`` plan;
    rank-0 traces (``validation/measurements/trace-dist.jsonl``, TP scenarios).
    """
    full = -(-tokens * vocab * compute_bytes // 512) * 512
    local = -(-tokens * (-(-vocab // tp)) * compute_bytes // 512) * 512
    return 3 * full + local


def rank_inventory(
    inventory: tuple[ParamGroup, ...], spec: ModelSpec, parallel: ParallelSpec, stage: Stage
) -> tuple[ParamGroup, ...]:
    """List the parameter groups one rank of ``stage`` holds, with local shapes and counts.

    Tied embeddings: the last stage keeps a copy of the token embedding for its LM head
    (Megatron ``shared_embedding``); with one stage it is the same tensor, counted once.
    """
    n_total = spec.num_hidden_layers + (spec.num_decoder_layers if spec.is_encoder_decoder else 0)
    return _slice(
        inventory, parallel.tp, parallel.ep, parallel.pp, stage, n_total, spec.tie_word_embeddings
    )


@lru_cache(maxsize=256)
def _slice(
    inventory: tuple[ParamGroup, ...],
    tp: int,
    ep: int,
    pp: int,
    stage: Stage,
    n_total: int,
    tied: bool,
) -> tuple[ParamGroup, ...]:
    out: list[ParamGroup] = []
    for g in inventory:
        count = g.count
        if pp > 1:
            if g.stack == "embed":
                keep_tied = stage.last and tied and g.key == "embed/tokens"
                if not stage.first and not keep_tied:
                    continue
            elif g.stack == "head" or (g.count == 1 and g.stack in ("encoder", "decoder")):
                # the LM head, and the stack's final norm (one instance, not per block)
                if not stage.last:
                    continue
            elif g.count % n_total == 0:
                count = g.count // n_total * stage.layers
        if count == 0:
            continue
        in_f, out_f, w, b = g.in_features, g.out_features, g.weight_numel, g.bias_numel
        role = g.role
        if role.startswith("expert"):
            count = _split(count, ep) if ep > 1 else count
            role = "column" if role == "expert_column" else "row"
        if tp > 1:
            if role == "column":
                out_f = _split(out_f, tp)
                w, b = in_f * out_f, (out_f if b else 0)
            elif role == "row":
                in_f = _split(in_f, tp)
                w = in_f * out_f
            elif role == "vocab":
                if g.kind == "embedding":
                    in_f = _split(in_f, tp)
                else:
                    out_f = _split(out_f, tp)
                    b = out_f if b else 0
                w = in_f * out_f
        out.append(
            g.model_copy(
                update={
                    "count": count,
                    "in_features": in_f,
                    "out_features": out_f,
                    "weight_numel": w,
                    "bias_numel": b,
                }
            )
        )
    return tuple(out)
