"""Inputs: the request a user sends, and the resolved specs the engine works on.

``EstimateRequest`` is the one flat input shared by the CLI, the Python API and the REST
service: its field names are the CLI's long option names in snake_case. ``resolve`` (in
``engine.py``) turns it into ``ModelSpec``, ``TrainingSpec``, ``ParallelSpec`` and
``HardwareSpec``, which the formulas read.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vramcalc.enums import (
    Attention,
    DType,
    FsdpBackwardPrefetch,
    FsdpStrategy,
    KvDtype,
    MixedPrecision,
    Offload,
    PeftMethod,
    PipelineSchedule,
    Quant,
    ServeEngine,
    Task,
    WeightFormat,
    ZeroStage,
)

__all__ = [
    "AdapterOptions",
    "CostSpec",
    "EstimateRequest",
    "FsdpSpec",
    "GpuSpec",
    "HardwareSpec",
    "InferenceSpec",
    "LoraOptions",
    "ModelSpec",
    "ParallelSpec",
    "PeftSpec",
    "PromptOptions",
    "TrainingSpec",
    "ZeroSpec",
]

# Upper bounds keep any single request cheap to compute (REST service hardening) while
# staying far above real jobs.
MAX_BATCH = 1 << 16
MAX_SEQ = 1 << 22
MAX_GPUS = 1 << 16


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelSpec(_Frozen):
    """Architecture of a model, with HF ``config.json`` key names.

    Feature fields (``norm``, ``mlp``, ``position_embedding``, ...) are what formulas branch
    on; they are filled from the architecture template of ``model_type`` in
    ``data/architectures.json`` by ``hf.py``.
    """

    name: str
    hf_id: str | None = None
    model_type: str
    source: str | None = None
    hidden_size: int = Field(gt=0)
    num_hidden_layers: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    num_key_value_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    max_position_embeddings: int | None = None
    tie_word_embeddings: bool = False
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    mlp: Literal["gated", "plain"] = "plain"
    hidden_act: str = "gelu"
    position_embedding: Literal["learned", "rotary", "alibi", "relative", "none"] = "learned"
    parallel_residual: bool = False
    attention_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    hidden_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    embedding_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    num_local_experts: int = Field(default=0, ge=0)
    num_experts_per_tok: int = Field(default=0, ge=0)
    is_encoder_decoder: bool = False
    num_decoder_layers: int = Field(default=0, ge=0)
    is_causal_lm: bool = True
    has_lm_head: bool = Field(
        default=True,
        description="the counted model ends in a vocab-sized output layer (tied or not), so "
        "training computes B*S*vocab logits; False for encoder-only base models (BERT)",
    )
    n_params: int = Field(default=0, ge=0, description="exact parameter count (0 = not known)")
    arch: dict[str, int | float | bool | str | None] = Field(
        default_factory=dict,
        description="other config.json fields the architecture template reads",
    )


class LoraOptions(_Frozen):
    """``--lora r=16,alpha=32,dropout=0.05,targets=q_proj+v_proj`` (PEFT ``LoraConfig``).

    Defaults are PEFT's: ``r=8``, ``lora_alpha=8``, ``lora_dropout=0.0``, targets from
    ``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`` for the model type.
    """

    r: int = Field(default=8, gt=0, le=65536)
    alpha: float | None = Field(default=None, gt=0)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    targets: tuple[str, ...] | None = None

    @field_validator("targets", mode="before")
    @classmethod
    def _split_targets(cls, v: Any) -> Any:
        if isinstance(v, str):
            return tuple(t for t in v.replace(",", "+").split("+") if t)
        return v


class AdapterOptions(_Frozen):
    """``--adapter dim=64``: Houlsby-style bottleneck adapters after attention and MLP."""

    dim: int = Field(default=64, gt=0, le=65536)


class PromptOptions(_Frozen):
    """``--prefix tokens=20`` / ``--prompt-tuning tokens=20``: virtual tokens."""

    tokens: int = Field(default=20, gt=0, le=65536)


class EstimateRequest(_Frozen):
    """Everything one estimate needs; field names are the CLI's long options in snake_case."""

    model: str | dict[str, Any] = Field(
        description="catalog name/alias, a path to a config.json (CLI/Python only), "
        "or an inline config.json object",
    )
    task: Task = Task.TRAIN
    batch_size: int = Field(default=1, gt=0, le=MAX_BATCH)
    seq_len: int = Field(default=512, gt=0, le=MAX_SEQ)
    grad_accum: int = Field(default=1, gt=0, le=MAX_BATCH)
    dtype: DType = DType.FP32
    mixed_precision: MixedPrecision = MixedPrecision.NO
    optim: str = "adamw_torch"
    lora: LoraOptions | None = None
    qlora: LoraOptions | None = None
    quant: Quant | None = None
    adapter: AdapterOptions | None = None
    prefix: PromptOptions | None = None
    prompt_tuning: PromptOptions | None = None
    ia3: bool = False
    grad_ckpt: bool = False
    attn: Attention = Attention.SDPA
    zero: ZeroStage = ZeroStage.DISABLED
    offload_optimizer: Offload = Offload.NONE
    offload_param: Offload = Offload.NONE
    gpus: int = Field(default=1, gt=0, le=MAX_GPUS)
    nodes: int = Field(default=1, gt=0, le=MAX_GPUS)
    deepspeed: dict[str, Any] | None = Field(
        default=None, description="contents of a DeepSpeed config (overrides zero/offload)"
    )
    fsdp: FsdpStrategy | None = Field(
        default=None, description="PyTorch FSDP sharding strategy (exclusive with zero)"
    )
    fsdp_version: Literal[1, 2] = Field(
        default=2, description="1 = FullyShardedDataParallel (flat parameters), 2 = fully_shard"
    )
    fsdp_offload: bool = Field(
        default=False,
        description="FSDP CPUOffload / CPUOffloadPolicy: sharded parameters, gradients and "
        "optimizer states live in CPU memory",
    )
    fsdp_reshard_after_forward: bool | None = Field(
        default=None,
        description="free the unsharded parameters after each layer's forward (default: "
        "true for full_shard/hybrid_shard, false for shard_grad_op)",
    )
    fsdp_use_orig_params: bool = Field(
        default=True, description="FSDP1 use_orig_params (accelerate's default: true)"
    )
    fsdp_limit_all_gathers: bool = Field(
        default=True, description="FSDP1 limit_all_gathers (at most two in-flight all-gathers)"
    )
    fsdp_backward_prefetch: FsdpBackwardPrefetch = Field(
        default=FsdpBackwardPrefetch.BACKWARD_PRE, description="FSDP1 backward_prefetch"
    )
    tp: int = Field(default=1, gt=0, le=MAX_GPUS, description="tensor-parallel degree")
    sequence_parallel: bool = Field(
        default=False, description="Megatron sequence parallelism (needs tp > 1)"
    )
    cp: int = Field(default=1, gt=0, le=MAX_GPUS, description="context-parallel degree")
    pp: int = Field(default=1, gt=0, le=MAX_GPUS, description="pipeline-parallel stages")
    pp_schedule: PipelineSchedule = PipelineSchedule.ONE_F_ONE_B
    pp_virtual_stages: int = Field(
        default=2, gt=0, le=1024, description="model chunks per rank (interleaved schedule)"
    )
    ep: int = Field(default=1, gt=0, le=MAX_GPUS, description="expert-parallel degree")
    accelerate_config: dict[str, Any] | None = Field(
        default=None,
        description="contents of an accelerate config YAML (distributed_type, fsdp_config, "
        "deepspeed_config, mixed_precision, num_processes, num_machines)",
    )
    gpu: str | None = None
    tokens: int | None = Field(default=None, gt=0, le=10**15)
    epochs: float = Field(default=1.0, gt=0, le=10_000)
    mfu: float | None = Field(default=None, gt=0, le=1)
    price_per_gpu_hour: float | None = Field(default=None, ge=0, le=10_000)
    # inference and serving (``--task infer``); see formulas/inference.py and serving.py
    prompt_len: int | None = Field(
        default=None, gt=0, le=MAX_SEQ, description="prompt tokens (default: seq_len)"
    )
    new_tokens: int = Field(
        default=1, gt=0, le=MAX_SEQ, description="generated tokens (generate's max_new_tokens)"
    )
    kv_dtype: KvDtype = Field(
        default=KvDtype.AUTO, description="KV-cache dtype (auto = the compute dtype)"
    )
    weights: WeightFormat | None = Field(
        default=None, description="weight-only quantized checkpoint: awq, gptq (4 bit), fp8"
    )
    engine: ServeEngine = Field(
        default=ServeEngine.HF, description="hf = transformers generate, vllm = vLLM serving"
    )
    gpu_memory_utilization: float | None = Field(
        default=None, gt=0, le=1, description="vLLM's share of GPU memory (default 0.9)"
    )
    max_num_batched_tokens: int | None = Field(
        default=None, gt=0, le=MAX_SEQ, description="vLLM tokens per scheduler step"
    )
    max_model_len: int | None = Field(
        default=None, gt=0, le=MAX_SEQ, description="vLLM context length (default: model's)"
    )
    concurrency: int | None = Field(
        default=None, gt=0, le=MAX_BATCH, description="vLLM concurrent sequences to check"
    )

    @field_validator("task", mode="before")
    @classmethod
    def _task_alias(cls, v: Any) -> Any:
        # ``infer`` is the CLI spelling of ``inference``
        return "inference" if isinstance(v, str) and v.lower() == "infer" else v

    @model_validator(mode="after")
    def _inference_options(self) -> EstimateRequest:
        infer_only = [
            n
            for n in (
                "prompt_len",
                "new_tokens",
                "kv_dtype",
                "weights",
                "engine",
                *_VLLM_ONLY,
            )
            if n in self.model_fields_set and getattr(self, n) != type(self).model_fields[n].default
        ]
        if self.task == Task.TRAIN:
            if infer_only:
                raise ValueError(
                    f"{_opts(infer_only)}: inference option(s), need --task infer; "
                    "training takes --seq-len and -b"
                )
            return self
        train_only = [
            n
            for n, off in (
                ("grad_accum", 1),
                ("grad_ckpt", False),
                ("lora", None),
                ("qlora", None),
                ("adapter", None),
                ("prefix", None),
                ("prompt_tuning", None),
                ("ia3", False),
                ("zero", ZeroStage.DISABLED),
                ("deepspeed", None),
                ("fsdp", None),
                ("offload_optimizer", "none"),
                ("offload_param", "none"),
                ("tokens", None),
            )
            if getattr(self, n) != off
        ]
        if "optim" in self.model_fields_set and self.optim != "adamw_torch":
            train_only.append("optim")
        if train_only:
            raise ValueError(
                f"{_opts(train_only)}: training option(s), not accepted with --task infer; use "
                "--prompt-len, --new-tokens, -b, --kv-dtype, --quant/--weights, --engine"
            )
        if self.weights is not None and self.quant is not None:
            raise ValueError(
                f"choose one weight format, got --quant {self.quant.value} and --weights "
                f"{self.weights.value}"
            )
        if self.engine == ServeEngine.HF:
            vllm = [n for n in _VLLM_ONLY if getattr(self, n) is not None]
            if vllm:
                raise ValueError(
                    f"{_opts(vllm)}: vLLM option(s), need --engine vllm"
                    + (
                        "; with --engine hf the batch (-b) is the concurrency"
                        if "concurrency" in vllm
                        else ""
                    )
                )
            if self.kv_dtype == KvDtype.FP8:
                raise ValueError(
                    "--kv-dtype fp8 needs --engine vllm (transformers' caches store K/V in the "
                    "model's dtype); accepted with --engine hf: auto, fp16, bf16"
                )
        else:
            if self.batch_size != 1:
                raise ValueError(
                    "--engine vllm batches requests itself: give --concurrency N, not -b"
                )
            if not self.gpu:
                raise ValueError(
                    "--engine vllm needs --gpu NAME: its budget is --gpu-memory-utilization "
                    "x the GPU's memory (see `vramcalc gpus`)"
                )
        return self

    @model_validator(mode="after")
    def _one_peft_method(self) -> EstimateRequest:
        chosen = [
            name
            for name in ("lora", "qlora", "adapter", "prefix", "prompt_tuning")
            if getattr(self, name) is not None
        ] + (["ia3"] if self.ia3 else [])
        if len(chosen) > 1:
            raise ValueError(
                f"choose one PEFT method, got {' and '.join(chosen)}; "
                "accepted: lora, qlora, adapter, prefix, prompt_tuning, ia3"
            )
        return self


_VLLM_ONLY = ("gpu_memory_utilization", "max_num_batched_tokens", "max_model_len", "concurrency")


def _opts(names: list[str]) -> str:
    return ", ".join("--" + n.replace("_", "-") for n in names)


class PeftSpec(_Frozen):
    """A resolved PEFT method: which modules get which trainable parameters."""

    method: PeftMethod
    r: int = 0
    alpha: float = 0.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ()
    num_virtual_tokens: int = 0
    adapter_dim: int = 0


class InferenceSpec(_Frozen):
    """A resolved inference job (``--task infer``): the request's inference fields.

    ``prompt_len`` falls back to ``seq_len``; the vLLM defaults that depend on the GPU are
    resolved in ``serving.py``.
    """

    prompt_len: int = Field(gt=0)
    new_tokens: int = Field(default=1, gt=0)
    kv_dtype: KvDtype = KvDtype.AUTO
    weights: WeightFormat | None = None
    engine: ServeEngine = ServeEngine.HF
    gpu_memory_utilization: float | None = None
    max_num_batched_tokens: int | None = None
    max_model_len: int | None = None
    concurrency: int | None = None
    request_len: int | None = Field(
        default=None, description="prompt + new tokens when the prompt length was given"
    )

    @classmethod
    def from_request(cls, req: EstimateRequest) -> InferenceSpec | None:
        """Return the inference part of a request (None for training)."""
        if req.task != Task.INFERENCE:
            return None
        return cls(
            prompt_len=req.prompt_len or req.seq_len,
            new_tokens=req.new_tokens,
            kv_dtype=req.kv_dtype,
            weights=req.weights,
            engine=req.engine,
            gpu_memory_utilization=req.gpu_memory_utilization,
            max_num_batched_tokens=req.max_num_batched_tokens,
            max_model_len=req.max_model_len,
            concurrency=req.concurrency,
            request_len=req.prompt_len + req.new_tokens if req.prompt_len else None,
        )


class TrainingSpec(_Frozen):
    """A resolved training (or inference) step on one GPU."""

    task: Task = Task.TRAIN
    batch_size: int = Field(default=1, gt=0)
    seq_len: int = Field(default=512, gt=0)
    grad_accum: int = Field(default=1, gt=0)
    param_dtype: DType = DType.FP32
    mixed_precision: MixedPrecision = MixedPrecision.NO
    optim: str = "adamw_torch"
    peft: PeftSpec | None = None
    quant: Quant | None = None
    grad_ckpt: bool = False
    attn: Attention = Attention.SDPA
    inference: InferenceSpec | None = None


class ZeroSpec(_Frozen):
    """DeepSpeed ZeRO as the sharding engine (bucket sizes in elements).

    Source: DeepSpeed 0.19 ``runtime/zero/config.py`` (``DeepSpeedZeroConfig``); defaults in
    ``data/constants.json``, "auto" values resolved in ``dsconfig.py``.
    """

    zero_stage: ZeroStage
    offload_optimizer: Offload = Offload.NONE
    offload_param: Offload = Offload.NONE
    reduce_bucket_size: int = Field(default=500_000_000, ge=0)
    allgather_bucket_size: int = Field(default=500_000_000, ge=0)
    stage3_prefetch_bucket_size: int = Field(default=50_000_000, ge=0)
    stage3_max_live_parameters: int = Field(default=1_000_000_000, ge=0)
    stage3_param_persistence_threshold: int = Field(default=100_000, ge=0)
    precision: Literal["fp16", "bf16", "fp32"] = "fp32"
    overlap_comm: bool = False
    contiguous_gradients: bool = True


class FsdpSpec(_Frozen):
    """PyTorch FSDP as the sharding engine (resolved from the ``fsdp*`` request fields).

    Source: torch 2.13 ``distributed/fsdp/fully_sharded_data_parallel.py`` (FSDP1) and
    ``distributed/fsdp/_fully_shard/`` (FSDP2).
    """

    version: Literal[1, 2] = 2
    strategy: FsdpStrategy = FsdpStrategy.FULL_SHARD
    reshard_after_forward: bool = True
    offload: bool = False
    use_orig_params: bool = True
    limit_all_gathers: bool = True
    backward_prefetch: FsdpBackwardPrefetch = FsdpBackwardPrefetch.BACKWARD_PRE


class ParallelSpec(_Frozen):
    """The parallel layout: the device mesh and the sharding engine over data parallelism.

    World size = ``gpus_per_node * nodes`` = ``dp * tp * cp * pp``; data parallelism takes
    what the other dimensions leave. ``ep`` splits MoE experts over ``ep`` of the data-parallel
    (x context) ranks, as Megatron-core and torchtitan do, so it is not a factor of the world.
    The sharding engine (DeepSpeed ZeRO, FSDP1/2, or none = DDP) acts over the data-parallel
    ranks: ``dp_shard`` ranks split a sharded state, ``dp_replicate`` groups hold copies.
    """

    gpus_per_node: int = Field(default=1, gt=0)
    nodes: int = Field(default=1, gt=0)
    tp: int = Field(default=1, gt=0)
    sequence_parallel: bool = False
    cp: int = Field(default=1, gt=0)
    pp: int = Field(default=1, gt=0)
    pp_schedule: PipelineSchedule = PipelineSchedule.ONE_F_ONE_B
    pp_virtual_stages: int = Field(default=1, gt=0)
    ep: int = Field(default=1, gt=0)
    zero: ZeroSpec | None = None
    fsdp: FsdpSpec | None = None

    @property
    def world_size(self) -> int:
        """GPUs in the job: GPUs per node times nodes."""
        return self.gpus_per_node * self.nodes

    @property
    def dp(self) -> int:
        """Data-parallel degree: the world over tensor, context and pipeline parallelism."""
        return self.world_size // (self.tp * self.cp * self.pp)

    @property
    def dp_shard(self) -> int:
        """Ranks a sharded model state is split over (1 when nothing is sharded)."""
        if self.fsdp is not None:
            if self.fsdp.strategy == FsdpStrategy.NO_SHARD:
                return 1
            if self.fsdp.strategy == FsdpStrategy.HYBRID_SHARD:
                return self.dp // self.nodes if self.dp % self.nodes == 0 else self.dp
            return self.dp
        if self.zero is not None and self.zero.zero_stage != ZeroStage.DISABLED:
            return self.dp
        return 1

    @property
    def dp_replicate(self) -> int:
        """Data-parallel groups holding the same shard."""
        return self.dp // self.dp_shard

    @property
    def zero_stage(self) -> ZeroStage:
        """The DeepSpeed ZeRO stage (DISABLED without DeepSpeed)."""
        return self.zero.zero_stage if self.zero is not None else ZeroStage.DISABLED

    @property
    def engine(self) -> str:
        """The sharding engine: none, ddp, zero, fsdp1 or fsdp2."""
        if self.fsdp is not None:
            return f"fsdp{self.fsdp.version}"
        if self.zero is not None and self.zero.zero_stage != ZeroStage.DISABLED:
            return "zero"
        return "ddp" if self.dp > 1 else "none"


class GpuSpec(_Frozen):
    """One row of the GPU catalog (``data/gpus.json``)."""

    name: str
    aliases: tuple[str, ...] = ()
    vendor: str
    family: str
    memory_bytes: int = Field(gt=0, description="total memory as the device reports it")
    tflops: dict[str, float] = Field(description="peak dense TFLOPS by dtype")
    bandwidth_gb_s: float = Field(gt=0)
    price_usd_per_gpu_hour: float = Field(ge=0)
    source: str
    as_of: str


class HardwareSpec(_Frozen):
    """The GPU the job runs on (if named) and GPU-side constants."""

    gpu: GpuSpec | None = None


class CostSpec(_Frozen):
    """Inputs of the time and cost estimate."""

    tokens: int | None = None
    epochs: float = 1.0
    mfu: float | None = None
    price_usd_per_gpu_hour: float | None = None
