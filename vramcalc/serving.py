"""vLLM serving: the engine's memory budget and what it buys (``--engine vllm``).

vLLM does not grow memory with the load: at start-up it profiles one forward at its largest
batch, then pre-allocates every byte its budget leaves as KV-cache blocks. Per GPU (one
tensor-parallel rank):

``budget = gpu_memory_utilization x GPU memory``
``KV cache = budget - weights - activation peak - CUDA graphs - non-torch memory``
``KV blocks = KV cache // (block_size x KV bytes per token over the rank's layers)``

Source: vLLM ``v1/worker/gpu_worker.py`` ``Worker.determine_available_memory`` (``requested_memory
= total_memory x gpu_memory_utilization``; ``available_kv_cache_memory = requested_memory -
non_kv_cache_memory`` with ``non_kv_cache_memory = weights_memory + torch_peak_increase +
non_torch_increase`` from ``utils/mem_utils.memory_profiling`` around
``model_runner.profile_run()``), ``v1/core/kv_cache_utils.py`` (``get_num_blocks``: available
// page_size // num_layers; ``check_enough_kv_cache_memory`` and ``estimate_max_model_len``:
one sequence of ``max_model_len`` needs ``cdiv(max_model_len, block_size)`` blocks;
``get_max_concurrency_for_kv_cache_config``), ``v1/kv_cache_interface.py``
(``FullAttentionSpec.page_size_bytes``). Not traced: vLLM needs a GPU; the activation peak is
derived from its documented profile run (``_dummy_run(max_num_batched_tokens)`` and
``_dummy_sampler_run`` over ``max_num_seqs`` rows).

Sliding-window and chunked layers (``kv_layout``): vLLM's hybrid KV cache manager groups the
layers by attention type into groups of equal size; one block id holds ``block_size`` tokens of
every layer of one group, and a request needs, per group, the blocks of its whole length
(full attention) or only of its window (sliding: ``SlidingWindowSpec.max_memory_usage_bytes``).
A model whose layers all share one sliding window is one group of sliding layers. With chunked
local attention (Llama 4) vLLM disables the hybrid manager by default and allocates every
layer as full attention (``vllm_chunked_local_hybrid_kv``). Source: vLLM
``v1/core/kv_cache_utils.py`` (``get_kv_cache_groups``, ``_get_kv_cache_groups_uniform_page_size``,
``get_kv_cache_config_from_groups``, ``_max_memory_usage_bytes_from_groups``,
``unify_hybrid_kv_cache_specs``), ``v1/kv_cache_interface.py`` (``SlidingWindowSpec``,
``ChunkedLocalAttentionSpec``), main at commit 001cabc.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vramcalc import catalog
from vramcalc.enums import DType
from vramcalc.errors import InvalidConfigError
from vramcalc.formulas.inference import (
    cache_windows,
    compute_bytes,
    kv_bytes_per_token,
    kv_dtype_bytes,
    kv_heads_per_rank,
)
from vramcalc.formulas.params import block
from vramcalc.report import ServingReport
from vramcalc.specs import GpuSpec, InferenceSpec, ModelSpec

__all__ = ["KvLayout", "activation_peak", "batch_defaults", "budget", "kv_layout", "serving_report"]


def batch_defaults(gpu: GpuSpec) -> tuple[int, int]:
    """``vllm serve``'s default ``(max_num_batched_tokens, max_num_seqs)`` on this GPU.

    Source: vLLM ``engine/arg_utils.py`` ``EngineArgs.get_batch_defaults``
    (``UsageContext.OPENAI_API_SERVER``): 8192 / 1024 when the device has >= 70 GiB and is
    not an A100, else 2048 / 256.
    """
    large = gpu.memory_bytes >= int(catalog.constant("vllm_large_gpu_bytes")) and (
        "a100" not in gpu.name.lower()
    )
    size = "large" if large else "small"
    return (
        int(catalog.constant(f"vllm_max_num_batched_tokens_{size}")),
        int(catalog.constant(f"vllm_max_num_seqs_{size}")),
    )


def activation_peak(rank: ModelSpec, vocab: int, tokens: int, seqs: int, cb: int) -> int:
    """Peak of the profile run over the weights: one layer at ``tokens`` or the sampler.

    Layer (``T`` = ``max_num_batched_tokens``, heads and MLP columns of this TP rank):
    hidden states and residual ``2 T H``, plus the larger of attention (fused QKV output
    ``T (h + 2 kv) d`` and the attention output ``T h d``) and the MLP (merged gate-up output
    ``T 2 I`` and ``SiluAndMul``'s ``T I``; plain MLP ``2 T I``). Sampler (``S`` =
    ``max_num_seqs``): the last positions' logits ``S V`` in the compute dtype and fp32, and
    two fp32 ``S V`` buffers of the dummy sampling (logprobs/probabilities).

    Source: vLLM ``model_executor/models/llama.py`` (``LlamaAttention``, ``LlamaMLP``:
    ``MergedColumnParallelLinear`` + ``SiluAndMul``), ``v1/worker/gpu_model_runner.py``
    ``profile_run`` (``_dummy_run(self.max_num_tokens)``, ``_dummy_sampler_run``).
    """
    h, kv, d = rank.num_attention_heads, rank.num_key_value_heads, rank.head_dim
    H = rank.hidden_size
    inter = rank.intermediate_size * max(1, rank.num_experts_per_tok)
    resid = 2 * block(tokens * H * cb)
    attn = block(tokens * (h + 2 * kv) * d * cb) + block(tokens * h * d * cb)
    mlp = block(tokens * inter * cb) * (3 if rank.mlp == "gated" else 2)
    layer = resid + max(attn, mlp)
    sampler = block(seqs * vocab * cb) + 3 * block(seqs * vocab * 4)
    return max(layer, sampler)


@dataclass(frozen=True)
class KvLayout:
    """vLLM's KV cache groups on one rank.

    Attributes:
        group_size: layers per group (one block id holds ``block_size`` tokens of each).
        groups: per group, the window its layers keep (0 = full attention).
        chunked: per group, whether the window is a chunked-local one (no ``+ 1`` block).

    """

    group_size: int
    groups: tuple[int, ...]
    chunked: tuple[bool, ...]

    def blocks_for(self, length: int, block_size: int, batched_tokens: int) -> int:
        """Blocks (of ``group_size`` layers) one sequence of ``length`` tokens needs.

        Full attention: ``cdiv(length, block_size)``; sliding window ``w``:
        ``cdiv(min(w - 1 + batched_tokens, length), block_size) + 1``; chunked local ``c``:
        ``cdiv(min(c + batched_tokens, length), block_size)``.
        Source: vLLM ``v1/kv_cache_interface.py`` ``FullAttentionSpec``/``SlidingWindowSpec``/
        ``ChunkedLocalAttentionSpec.max_memory_usage_bytes``; ``v1/core/kv_cache_utils.py``
        ``_max_memory_usage_bytes_from_groups`` (the sum over groups).
        """
        total = 0
        for w, chunk in zip(self.groups, self.chunked, strict=True):
            if w <= 0:
                total += -(-length // block_size)
            elif chunk:
                total += -(-min(w + batched_tokens, length) // block_size)
            else:
                total += -(-min(w - 1 + batched_tokens, length) // block_size) + 1
        return total

    def describe(self) -> str:
        """One line: the groups and their windows (empty for one group of full attention)."""
        if self.groups == (0,):
            return ""
        parts: dict[str, int] = {}
        for w, chunk in zip(self.groups, self.chunked, strict=True):
            key = "full" if w <= 0 else f"{'chunked' if chunk else 'sliding'} {w}"
            parts[key] = parts.get(key, 0) + 1
        if len(self.groups) == 1:
            return f"one KV group of {self.group_size} layers, all {next(iter(parts))}"
        body = ", ".join(f"{n} x {k}" for k, n in parts.items())
        return f"{len(self.groups)} KV groups of {self.group_size} layers ({body})"


def kv_layout(full: ModelSpec, rank_layers: int) -> KvLayout:
    """Group one rank's attention layers as vLLM's KV cache manager does.

    Layers are typed by window (``formulas/inference.cache_windows``: sliding and chunked
    windows from the model's layer pattern); one type -> one group of all layers. Several
    types (hybrid manager): the group size is the smallest type's layer count (the largest
    when it is under 1.5x the smallest), each type split into ``cdiv(n, size)`` groups
    (padded). Chunked local layers count as full attention unless
    ``vllm_chunked_local_hybrid_kv`` is set. A rank of a pipeline stage keeps the model's
    ratio of layer types.
    Source: vLLM ``v1/core/kv_cache_utils.py`` ``_get_kv_cache_groups_uniform_page_size``,
    ``unify_hybrid_kv_cache_specs``; ``vllm/config/vllm.py`` (hybrid manager defaults).
    """
    from vramcalc.formulas.activations import layer_kinds

    wins = cache_windows(full)
    kinds = [k.attn for k in layer_kinds(full, 1)]
    hybrid_chunked = bool(catalog.constant("vllm_chunked_local_hybrid_kv"))
    types: dict[tuple[int, bool], int] = {}
    for w, kind in zip(wins, kinds, strict=False):
        chunk = kind == "chunked"
        if chunk and not hybrid_chunked:
            w, chunk = 0, False
        types[(w, chunk)] = types.get((w, chunk), 0) + 1
    if not types:
        types = {(0, False): full.num_hidden_layers}
    n_full = sum(types.values())
    if rank_layers != n_full:  # a pipeline stage: the same ratio, at least one of each type
        types = {t: max(1, round(n * rank_layers / n_full)) for t, n in types.items()}
    if len(types) == 1:
        ((w, chunk),) = types
        return KvLayout(group_size=rank_layers, groups=(w,), chunked=(chunk,))
    lo, hi = min(types.values()), max(types.values())
    size = hi if hi < 1.5 * lo else lo
    groups: list[int] = []
    chunked: list[bool] = []
    for (w, chunk), n in types.items():
        count = -(-n // size)
        groups += [w] * count
        chunked += [chunk] * count
    return KvLayout(group_size=size, groups=tuple(groups), chunked=tuple(chunked))


def budget(gpu: GpuSpec, utilization: float) -> int:
    """``requested_memory``: ``gpu_memory_utilization`` x the GPU's total memory (bytes).

    Source: vLLM ``v1/worker/gpu_worker.py`` (``self.requested_memory = total_memory *
    gpu_memory_utilization``).
    """
    return int(gpu.memory_bytes * utilization)


def serving_report(
    full: ModelSpec,
    rank: ModelSpec,
    inf: InferenceSpec,
    *,
    gpu: GpuSpec,
    param_dtype: DType,
    weights_bytes: int,
    tp: int,
) -> ServingReport:
    """Compute vLLM's budget on one GPU (rank) and the KV blocks, context and concurrency it buys.

    Args:
        full: the whole model (vocabulary, context limit, KV heads before the TP split).
        rank: this rank's slice (``layout.rank_spec``: heads, MLP columns, layers).
        inf: the resolved inference options.
        gpu: the GPU the server runs on.
        param_dtype: the weights' dtype (activations in it; 16 bit for AWQ/GPTQ/FP8).
        weights_bytes: this rank's weights (``formulas/inference.weights``).
        tp: tensor-parallel degree (KV heads per rank).

    Raises:
        InvalidConfigError: ``max_model_len`` beyond the model's ``max_position_embeddings``.

    """
    util = inf.gpu_memory_utilization or float(catalog.constant("vllm_gpu_memory_utilization"))
    d_tokens, d_seqs = batch_defaults(gpu)
    max_model_len = (
        inf.max_model_len or full.max_position_embeddings or (inf.prompt_len + inf.new_tokens)
    )
    limit = full.max_position_embeddings
    if limit and inf.max_model_len and inf.max_model_len > limit:
        raise InvalidConfigError(
            f"--max-model-len {inf.max_model_len} exceeds {full.name}'s "
            f"max_position_embeddings ({limit}); vLLM refuses it without rope scaling"
        )
    # chunked prefill: vLLM raises max_num_batched_tokens to at least max_num_seqs
    tokens = inf.max_num_batched_tokens or d_tokens
    seqs = min(d_seqs, tokens)
    cb = compute_bytes(param_dtype, inf.weights)
    kvb = kv_dtype_bytes(inf.kv_dtype, cb)
    kvh = kv_heads_per_rank(full.num_key_value_heads, tp)
    per_token = kv_bytes_per_token(rank.num_hidden_layers, kvh, full.head_dim, kvb)
    bs = int(catalog.constant("vllm_block_size"))
    layout = kv_layout(full, rank.num_hidden_layers)
    # one block id: block_size tokens of every layer of one group
    per_block = kv_bytes_per_token(layout.group_size, kvh, full.head_dim, kvb) * bs
    total = budget(gpu, util)
    act = activation_peak(rank, full.vocab_size, tokens, seqs, cb)
    graphs = int(catalog.constant("vllm_cuda_graph_bytes"))
    hopper = gpu.family.lower() in ("hopper", "blackwell")
    non_torch = int(
        catalog.constant("cublas_workspace_bytes_sm90" if hopper else "cublas_workspace_bytes")
    )
    kv_room = total - weights_bytes - act - graphs - non_torch
    blocks = max(0, kv_room // per_block) if per_block else 0

    def need(length: int) -> int:
        return layout.blocks_for(length, bs, tokens)

    fit_len = _longest(need, blocks, limit or max(max_model_len, blocks * bs))
    request_len = inf.request_len or max_model_len
    per_seq = need(request_len)
    conc = blocks // per_seq if per_seq else 0
    reason = None
    if kv_room <= 0:
        reason = (
            f"weights + profile activations + CUDA graphs exceed the budget "
            f"({util:g} x GPU memory) by {(-kv_room) / 2**30:.2f} GiB"
        )
    elif blocks < need(max_model_len):
        reason = (
            f"max_model_len {max_model_len} needs {need(max_model_len)} KV blocks, "
            f"{blocks} fit; lower --max-model-len to {fit_len} or raise "
            "--gpu-memory-utilization"
        )
    elif request_len > max_model_len:
        reason = f"a request of {request_len} tokens exceeds max_model_len {max_model_len}"
    elif inf.concurrency is not None and inf.concurrency > conc:
        reason = (
            f"{inf.concurrency} concurrent sequences of {request_len} tokens need "
            f"{inf.concurrency * per_seq} KV blocks, {blocks} fit (at most {conc})"
        )
    return ServingReport(
        gpu=gpu.name,
        gpu_memory_bytes=gpu.memory_bytes,
        gpu_memory_utilization=util,
        budget_bytes=total,
        weights_bytes=weights_bytes,
        activation_peak_bytes=act,
        cuda_graph_bytes=graphs,
        non_torch_bytes=non_torch,
        kv_cache_bytes=blocks * per_block,
        kv_bytes_per_token=per_token,
        block_size=bs,
        kv_blocks=blocks,
        kv_block_bytes=per_block,
        kv_blocks_per_sequence=per_seq,
        kv_blocks_per_sequence_decode=layout.blocks_for(request_len, bs, 1),
        kv_layout=layout.describe() or None,
        max_num_batched_tokens=tokens,
        max_num_seqs=seqs,
        max_model_len=max_model_len,
        max_model_len_fit=fit_len,
        request_len=request_len,
        max_concurrency=conc,
        concurrency=inf.concurrency,
        fits=reason is None,
        reason=reason,
    )


def _longest(need: Callable[[int], int], blocks: int, cap: int) -> int:
    """Largest length in ``[0, cap]`` whose blocks (``need(length)``) fit in ``blocks``.

    ``need`` grows with the length (it saturates for windowed layers, so the answer may be
    ``cap``). Source: vLLM ``v1/core/kv_cache_utils.py`` ``_estimate_max_model_len_from_groups``
    (binary search over ``max_model_len``).
    """
    if need(1) > blocks:
        return 0
    lo, hi = 1, max(1, cap)
    if need(hi) <= blocks:
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if need(mid) <= blocks:
            lo = mid
        else:
            hi = mid
    return lo
