"""Outputs: ``MemoryReport`` (timeline, peaks, breakdown), ``FitReport`` and ``CostReport``.

All byte fields are integers. The five components (``base``, ``params``, ``activations``,
``gradients``, ``optimizer``) at the peak moment sum exactly to ``peak.device_bytes``;
``details`` holds stable slash-keyed finer components (``activations/logits``,
``optimizer/exp_avg_sq``) whose first segment is one of the five.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from vramcalc.enums import Phase

__all__ = [
    "COMPONENTS",
    "Breakdown",
    "CostReport",
    "FitReport",
    "Layout",
    "MemoryReport",
    "ModelSummary",
    "Peak",
    "ServingReport",
    "TimelineEvent",
]

COMPONENTS = ("base", "params", "activations", "gradients", "optimizer")


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelSummary(_Out):
    """The model the estimate is for."""

    name: str
    hf_id: str | None = None
    model_type: str
    n_params: int
    n_trainable_params: int


class Breakdown(_Out):
    """The five components at one moment, in bytes."""

    base: int = 0
    params: int = 0
    activations: int = 0
    gradients: int = 0
    optimizer: int = 0

    @property
    def total(self) -> int:
        """Sum of the five components."""
        return self.base + self.params + self.activations + self.gradients + self.optimizer


class TimelineEvent(_Out):
    """Live bytes after one event of the step walk."""

    step: int = Field(description="1 = first step (optimizer states created), 2 = steady state")
    phase: Phase
    event: str
    allocated_bytes: int
    components: dict[str, int] = Field(description="allocated bytes by component (no base)")


class Peak(_Out):
    """The three peaks (see MEMORY_MODEL): allocated, reserved and device."""

    allocated_bytes: int = Field(description="torch.cuda.max_memory_allocated()")
    reserved_bytes: int = Field(description="torch.cuda.max_memory_reserved()")
    device_bytes: int = Field(description="NVML used memory: reserved + context + other")
    phase: Phase
    event: str
    step: int


class FitReport(_Out):
    """Whether the job fits one GPU of the chosen kind."""

    gpu: str
    gpu_memory_bytes: int
    usable_bytes: int
    fits: bool
    headroom_bytes: int = Field(description="usable - peak device bytes (negative: overflow)")
    max_batch_size: int | None = None
    suggested_grad_accum: int | None = None
    search_cap: int | None = Field(
        default=None,
        description="set when --max-batch reached the search cap: larger micro-batches also "
        "fit but were not tried (max_batch_size equals this cap)",
    )


class CostReport(_Out):
    """Training time and money."""

    gpu: str
    n_gpus: int
    tokens: int
    epochs: float
    flops_per_token: float
    total_flops: float
    peak_tflops_per_gpu: float
    mfu: float
    step_time_s: float | None = None
    time_s: float
    price_usd_per_gpu_hour: float
    cost_usd: float
    notes: list[str] = Field(default_factory=list)


class Layout(_Out):
    """The parallel layout the estimate is for, and which rank's peak is reported.

    The mesh dimensions multiply to ``world_size``: ``dp_replicate * dp_shard * tp * cp * pp``
    (expert parallelism re-uses the data-parallel and context ranks for the experts, as
    Megatron and torchtitan do, so ``ep`` divides ``dp_shard * cp`` and is not a factor).
    """

    world_size: int
    dp_replicate: int = Field(description="replicas holding the same shard (DDP, HSDP)")
    dp_shard: int = Field(description="ranks a sharded state is split over (ZeRO, FSDP)")
    tp: int = 1
    sequence_parallel: bool = False
    cp: int = 1
    pp: int = 1
    pp_schedule: str | None = None
    ep: int = 1
    engine: str = Field(description="none, ddp, zero, fsdp1 or fsdp2")
    options: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    peak_rank: int = Field(default=0, description="global rank whose peak is reported")
    peak_stage: int = Field(default=0, description="pipeline stage of that rank")
    summary: str = Field(description="the layout in one line, as the CLI table shows it")


class ServingReport(_Out):
    """vLLM's memory budget and what it buys (``--engine vllm``), per GPU.

    ``budget_bytes`` = ``gpu_memory_utilization`` x GPU memory = weights + activation peak of
    the profile run + CUDA graphs + non-torch memory + KV cache; the KV cache is split into
    blocks of ``block_size`` tokens (all layers). See ``vramcalc/serving.py``.
    """

    engine: str = "vllm"
    gpu: str
    gpu_memory_bytes: int
    gpu_memory_utilization: float
    budget_bytes: int
    weights_bytes: int
    activation_peak_bytes: int = Field(description="profile run at max_num_batched_tokens")
    cuda_graph_bytes: int
    non_torch_bytes: int
    kv_cache_bytes: int = Field(description="num blocks x bytes per block (0 if none fit)")
    kv_bytes_per_token: int = Field(description="K and V of one token over the rank's layers")
    block_size: int
    kv_blocks: int
    kv_block_bytes: int = Field(
        default=0,
        description="bytes of one block id: block_size tokens of every layer of one KV group",
    )
    kv_blocks_per_sequence: int = Field(
        default=0,
        description="blocks vLLM reserves for one sequence of request_len tokens (all groups; "
        "a sliding-window group counts its window plus max_num_batched_tokens)",
    )
    kv_blocks_per_sequence_decode: int = Field(
        default=0,
        description="blocks one sequence of request_len tokens holds while it decodes (a "
        "sliding-window group keeps only its window)",
    )
    kv_layout: str | None = Field(
        default=None,
        description="vLLM's KV cache groups when the model has sliding-window layers (None: "
        "one group of full-attention layers)",
    )
    max_num_batched_tokens: int
    max_num_seqs: int
    max_model_len: int = Field(description="the context length vLLM is started with")
    max_model_len_fit: int = Field(
        description="largest max_model_len whose KV cache fits one sequence (capped at the "
        "model's max_position_embeddings)"
    )
    request_len: int = Field(description="tokens per sequence the concurrency is counted at")
    max_concurrency: int = Field(description="whole sequences of request_len the blocks hold")
    concurrency: int | None = Field(default=None, description="requested concurrent sequences")
    fits: bool
    reason: str | None = Field(default=None, description="why it does not fit")


class MemoryReport(_Out):
    """An estimate: the step timeline, the peaks and the breakdown at the peak."""

    version: str
    model: ModelSummary
    peak: Peak
    breakdown: Breakdown
    details: dict[str, int]
    timeline: list[TimelineEvent]
    cpu_bytes: int = Field(description="host memory held for offloaded states/params")
    layout: Layout | None = None
    fit: FitReport | None = None
    cost: CostReport | None = None
    serving: ServingReport | None = None
    assumptions: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
