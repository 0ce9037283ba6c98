"""Inputs: the request a user sends, and the resolved specs the engine works on.

``EstimateRequest`` is the one flat input shared by the CLI, the Python API and the REST
service: its field names are the CLI's long option names in snake_case. ``resolve`` (in
``engine.py``) turns it into ``ModelSpec``, ``TrainingSpec``, ``ParallelSpec`` and
``HardwareSpec``, which the formulas read.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import (
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationInfo,
    field_validator,
    model_validator,
)

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
    Trainer,
    WeightFormat,
    ZeroStage,
)
from vramcalc.errors import UnknownNameError
from vramcalc.limits import MAX_BATCH, MAX_GPUS, MAX_IMAGES, MAX_SEQ, MIN_MFU

__all__ = [
    "MAX_BATCH",
    "MAX_GPUS",
    "MAX_SEQ",
    "TRAINER_OPTIONS",
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
    "RecipeSpec",
    "TrainerSpec",
    "TrainingSpec",
    "VisionSpec",
    "ZeroSpec",
]

# Numbers in requests are strict: an int field takes an int (not True, "8" or 8.0), a float
# field an int or a finite float (not True, "1.5", NaN or Infinity), a bool field a bool.
# Coercion would let a typo or a wrong type through as a plausible value.
SInt = Annotated[int, Strict()]
SFloat = Annotated[float, Strict(), AllowInfNan(False)]
SBool = Annotated[bool, Strict()]

Framework = Literal["hf", "litgpt", "torchtune", "unsloth"]
LossKind = Literal["full", "chunked", "fused_linear"]
FRAMEWORKS: tuple[str, ...] = ("hf", "litgpt", "torchtune", "unsloth")
LOSS_KINDS: tuple[str, ...] = ("full", "chunked", "fused_linear")
# the boolean memory features of a recipe (issue 10), in the order the CLI lists them
FEATURES: tuple[str, ...] = (
    "activation_offload",
    "optimizer_in_backward",
    "packing",
    "liger",
    "compile",
    "checkpoint_offload",
)


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

    r: SInt = Field(default=8, gt=0, le=65536)
    alpha: SFloat | None = Field(default=None, gt=0)
    dropout: SFloat = Field(default=0.0, ge=0.0, lt=1.0)
    targets: tuple[str, ...] | None = None
    target_parameters: tuple[str, ...] = Field(
        default=(),
        description="PEFT target_parameters: parameters LoRA wraps directly, e.g. fused MoE "
        "expert weights (mlp.experts.gate_up_proj+mlp.experts.down_proj)",
    )

    @field_validator("targets", "target_parameters", mode="before")
    @classmethod
    def _split_targets(cls, v: Any) -> Any:
        if isinstance(v, str):
            return tuple(t for t in v.replace(",", "+").split("+") if t)
        return v


class AdapterOptions(_Frozen):
    """``--adapter dim=64``: Houlsby-style bottleneck adapters after attention and MLP."""

    dim: SInt = Field(default=64, gt=0, le=65536)


class PromptOptions(_Frozen):
    """``--prefix tokens=20`` / ``--prompt-tuning tokens=20``: virtual tokens."""

    tokens: SInt = Field(default=20, gt=0, le=65536)


class EstimateRequest(_Frozen):
    """Everything one estimate needs; field names are the CLI's long options in snake_case."""

    model: str | dict[str, Any] = Field(
        description="catalog name/alias, a path to a config.json (CLI/Python only), "
        "or an inline config.json object",
    )
    task: Task = Task.TRAIN
    batch_size: SInt = Field(default=1, gt=0, le=MAX_BATCH)
    seq_len: SInt = Field(default=512, gt=0, le=MAX_SEQ)
    target_len: SInt | None = Field(
        default=None,
        gt=0,
        le=MAX_SEQ,
        description="decoder (target) length in tokens of an encoder-decoder model (T5, mT5); "
        "default: seq_len. seq_len is then the encoder (source) length",
    )
    grad_accum: SInt = Field(default=1, gt=0, le=MAX_BATCH)
    dtype: DType = DType.FP32
    mixed_precision: MixedPrecision = MixedPrecision.NO
    optim: str = "adamw_torch"
    lora: LoraOptions | None = None
    qlora: LoraOptions | None = None
    quant: Quant | None = None
    adapter: AdapterOptions | None = None
    prefix: PromptOptions | None = None
    prompt_tuning: PromptOptions | None = None
    ia3: SBool = False
    grad_ckpt: SBool = False
    images: SInt = Field(
        default=0, ge=0, le=MAX_IMAGES,
        description="images per training row (vision-language models); their tokens are "
        "added to seq_len",
    )  # fmt: skip
    image_size: str | None = Field(
        default=None,
        description="image height x width in pixels, 'HxW' (default: the processor's size)",
    )
    freeze_vision: SBool = Field(
        default=False, description="the vision tower's weights are frozen (not the projector)"
    )
    attn: Attention | None = Field(
        default=None,
        description="attention implementation; None = what transformers picks for the model "
        "class (sdpa where supported, else eager)",
    )
    zero: ZeroStage = ZeroStage.DISABLED
    offload_optimizer: Offload = Offload.NONE
    offload_param: Offload = Offload.NONE
    gpus: SInt = Field(default=1, gt=0, le=MAX_GPUS)
    nodes: SInt = Field(default=1, gt=0, le=MAX_GPUS)
    deepspeed: dict[str, Any] | None = Field(
        default=None, description="contents of a DeepSpeed config (overrides zero/offload)"
    )
    fsdp: FsdpStrategy | None = Field(
        default=None, description="PyTorch FSDP sharding strategy (exclusive with zero)"
    )
    fsdp_version: Literal[1, 2] = Field(
        default=2, description="1 = FullyShardedDataParallel (flat parameters), 2 = fully_shard"
    )
    fsdp_offload: SBool = Field(
        default=False,
        description="FSDP CPUOffload / CPUOffloadPolicy: sharded parameters, gradients and "
        "optimizer states live in CPU memory",
    )
    fsdp_reshard_after_forward: SBool | None = Field(
        default=None,
        description="free the unsharded parameters after each layer's forward (default: "
        "true for full_shard/hybrid_shard, false for shard_grad_op)",
    )
    fsdp_use_orig_params: SBool = Field(
        default=True, description="FSDP1 use_orig_params (accelerate's default: true)"
    )
    fsdp_limit_all_gathers: SBool = Field(
        default=True, description="FSDP1 limit_all_gathers (at most two in-flight all-gathers)"
    )
    fsdp_backward_prefetch: FsdpBackwardPrefetch = Field(
        default=FsdpBackwardPrefetch.BACKWARD_PRE, description="FSDP1 backward_prefetch"
    )
    fsdp_lora_in_blocks: SBool = Field(
        default=False,
        description="FSDP1 with LoRA: the adapters stay in their decoder block's flat "
        "parameter (transformer_auto_wrap_policy alone, e.g. Lightning Fabric's "
        "FSDPStrategy(auto_wrap_policy={Block}); use_orig_params=True), so each block's "
        "flat gradient covers its frozen weights too. Default false: PEFT's "
        "fsdp_auto_wrap_policy, which the Trainer installs, wraps the adapters in units of "
        "their own",
    )
    fsdp_sync_each_batch: SBool = Field(
        default=False,
        description="reduce-scatter gradients after every micro-batch (accelerate's "
        "GradientAccumulationPlugin sync_each_batch; the Trainer's accelerator_config "
        "gradient_accumulation_kwargs). Default false: with grad_accum > 1 the micro-batches "
        "before the last run under no_sync and FSDP accumulates unsharded gradients",
    )
    tp: SInt = Field(default=1, gt=0, le=MAX_GPUS, description="tensor-parallel degree")
    sequence_parallel: SBool = Field(
        default=False, description="Megatron sequence parallelism (needs tp > 1)"
    )
    cp: SInt = Field(default=1, gt=0, le=MAX_GPUS, description="context-parallel degree")
    pp: SInt = Field(default=1, gt=0, le=MAX_GPUS, description="pipeline-parallel stages")
    pp_schedule: PipelineSchedule = PipelineSchedule.ONE_F_ONE_B
    pp_virtual_stages: SInt = Field(
        default=2, gt=0, le=1024, description="model chunks per rank (interleaved schedule)"
    )
    ep: SInt = Field(default=1, gt=0, le=MAX_GPUS, description="expert-parallel degree")
    accelerate_config: dict[str, Any] | None = Field(
        default=None,
        description="contents of an accelerate config YAML (distributed_type, fsdp_config, "
        "deepspeed_config, mixed_precision, num_processes, num_machines)",
    )
    config: str | dict[str, Any] | None = Field(
        default=None,
        description="a trainer's own config: LitGPT/torchtune/axolotl/LLaMA-Factory YAML, TRL "
        "TrainingArguments JSON or an accelerate config, as text or a parsed mapping; it fills "
        "the fields the request leaves unset (vramcalc.trainer_config)",
    )
    gpu: str | None = None
    tokens: SInt | None = Field(default=None, gt=0, le=10**15)
    epochs: SFloat = Field(default=1.0, gt=0, le=10_000)
    mfu: SFloat | None = Field(
        default=None, gt=0, le=1, description=f"model FLOPs utilisation, {MIN_MFU:g} to 1"
    )
    price_per_gpu_hour: SFloat | None = Field(default=None, ge=0, le=10_000)
    # inference and serving (``--task infer``); see formulas/inference.py and serving.py
    prompt_len: SInt | None = Field(
        default=None, gt=0, le=MAX_SEQ, description="prompt tokens (default: seq_len)"
    )
    new_tokens: SInt = Field(
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
    gpu_memory_utilization: SFloat | None = Field(
        default=None, gt=0, le=1, description="vLLM's share of GPU memory (default 0.9)"
    )
    max_num_batched_tokens: SInt | None = Field(
        default=None, gt=0, le=MAX_SEQ, description="vLLM tokens per scheduler step"
    )
    max_model_len: SInt | None = Field(
        default=None, gt=0, le=MAX_SEQ, description="vLLM context length (default: model's)"
    )
    concurrency: SInt | None = Field(
        default=None, gt=0, le=MAX_BATCH, description="vLLM concurrent sequences to check"
    )
    # preference and RL trainers (``--trainer``); see formulas/trainers.py. Names are TRL's.
    trainer: Trainer = Field(
        default=Trainer.SFT,
        description="TRL trainer: sft (plain causal LM), dpo, orpo, kto, simpo, cpo, reward, "
        "ppo, grpo, rloo",
    )
    beta: SFloat | None = Field(
        default=None,
        ge=0,
        le=1_000,
        description="TRL beta (DPO-family temperature; GRPO/RLOO KL coefficient: a reference "
        "model only when beta > 0)",
    )
    ref_model: Literal["auto", "copy"] = Field(
        default="auto",
        description="auto: as TRL does without a ref_model argument (PEFT: the base with the "
        "adapters disabled, full fine-tuning: a second copy loaded from the same checkpoint); "
        "copy: a separate reference model is passed (a second copy under PEFT too)",
    )
    precompute_ref_log_probs: SBool = Field(
        default=False,
        description="TRL precompute_ref_log_probs: reference log-probs computed over the "
        "dataset before training; no reference model during the step",
    )
    padding_free: SBool = Field(
        default=False,
        description="TRL padding_free (DPO: TRL 1.16 warns and falls back to padding)",
    )
    padded_batch: SBool | None = Field(
        default=None,
        description="the batch's rows differ in length, so TRL's collator pads them to the "
        "longest and an attention mask reaches SDPA (default: yes for dpo, kto, orpo, simpo, "
        "cpo, reward; false: every row is -s tokens long)",
    )
    # framework profile and memory features (issue 10); see vramcalc/frameworks/
    framework: Framework = Field(
        default="hf",
        description="the trainer whose code runs the step: hf (transformers Trainer + PEFT, "
        "TRL, axolotl, LLaMA-Factory), litgpt, torchtune, unsloth",
    )
    loss: LossKind | None = Field(
        default=None,
        description="full (B x S x V logits), chunked (chunked cross-entropy), fused_linear "
        "(LM head and cross-entropy fused: Liger, Cut Cross-Entropy); default: the framework's",
    )
    loss_chunks: SInt | None = Field(
        default=None,
        gt=0,
        le=65536,
        description="chunks of the chunked/fused loss (default: the framework's)",
    )
    activation_offload: SBool = Field(
        default=False, description="saved activations go to CPU memory during forward"
    )
    optimizer_in_backward: SBool = Field(
        default=False,
        description="each parameter's optimizer step runs in its gradient hook (torchtune)",
    )
    packing: SBool = Field(
        default=False, description="several samples packed into each seq_len row"
    )
    liger: SBool = Field(
        default=False,
        description="Liger kernels: RMSNorm, RoPE, SwiGLU and fused linear cross-entropy",
    )
    compile: SBool = Field(
        default=False, description="torch.compile of the model (a stated approximation)"
    )
    checkpoint_offload: SBool = Field(
        default=False,
        description="Unsloth's offloaded gradient checkpointing: checkpointed layer inputs "
        "kept in CPU memory",
    )
    # RL trainers with generation (grpo, rloo, ppo); see formulas/rl.py. Names are TRL's.
    num_generations: SInt | None = Field(
        default=None, ge=2, le=MAX_BATCH,
        description="completions per prompt G (TRL default: grpo 8, rloo 2)",
    )  # fmt: skip
    max_completion_length: SInt | None = Field(
        default=None, gt=0, le=MAX_SEQ,
        description="generated tokens per completion L (TRL default 512; ppo: response_length)",
    )  # fmt: skip
    max_prompt_length: SInt | None = Field(
        default=None, gt=0, le=MAX_SEQ,
        description="prompt tokens P (TRL 1.16 does not truncate prompts; default 512)",
    )  # fmt: skip
    steps_per_generation: SInt | None = Field(
        default=None, gt=0, le=MAX_BATCH,
        description="micro-batches per generation round (TRL default: grad_accum)",
    )  # fmt: skip
    vllm: Literal["none", "colocate", "server"] | None = Field(
        default=None,
        description="generation backend: none (transformers generate, the default), colocate "
        "(a vLLM engine on the training GPU), server (a separate vLLM server)",
    )
    vllm_gpu_memory_utilization: SFloat | None = Field(
        default=None, gt=0, le=1,
        description="colocated vLLM engine's share of GPU memory (TRL default 0.3)",
    )  # fmt: skip

    @field_validator("zero", "fsdp_version", mode="before")
    @classmethod
    def _strict_int_choice(cls, v: Any, info: ValidationInfo) -> Any:
        # an IntEnum/Literal field would take True as 1 and 2.0 as 2
        accepted = (0, 1, 2, 3) if info.field_name == "zero" else (1, 2)
        listed = ", ".join(str(a) for a in accepted)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{info.field_name} must be an integer, got {v!r}; accepted: {listed}")
        if v not in accepted:
            kind = "zero stage" if info.field_name == "zero" else info.field_name
            raise ValueError(f"unknown {kind} '{v}'. Accepted: {listed}")
        return v

    @field_validator(
        "task",
        "dtype",
        "mixed_precision",
        "quant",
        "attn",
        "offload_optimizer",
        "offload_param",
        "fsdp",
        "fsdp_backward_prefetch",
        "pp_schedule",
        "kv_dtype",
        "weights",
        "engine",
        "trainer",
        "ref_model",
        "framework",
        "loss",
        mode="before",
    )
    @classmethod
    def _known_choice(cls, v: Any, info: ValidationInfo) -> Any:
        # the same message as the CLI's: the closest accepted value and the whole list
        field = cls.model_fields[info.field_name or ""]
        enum = next(
            (a for a in (field.annotation, *getattr(field.annotation, "__args__", ()))
             if isinstance(a, type) and issubclass(a, Enum)),
            None,
        )  # fmt: skip
        if info.field_name == "task" and isinstance(v, str) and v.lower() == "infer":
            return "inference"  # ``infer`` is the CLI spelling of ``inference``
        if info.field_name == "ref_model":
            if isinstance(v, str) and v in ("auto", "copy"):
                return v
            values = ["auto", "copy"]
            if not isinstance(v, str):
                raise ValueError(
                    f"ref_model must be a string, got {type(v).__name__}; accepted: auto, copy"
                )
            raise ValueError(str(UnknownNameError("ref_model value", v, values)))
        literal = {"framework": FRAMEWORKS, "loss": LOSS_KINDS}.get(info.field_name or "")
        if literal is not None:
            if v is None or (isinstance(v, str) and v in literal):
                return v
            values = list(literal)
        elif enum is None or v is None or isinstance(v, enum):
            return v
        else:
            values = [str(m.value) for m in enum]
        if not isinstance(v, str):
            raise ValueError(
                f"{info.field_name} must be a string, got {type(v).__name__}; "
                f"accepted: {', '.join(values)}"
            )
        if v not in values:
            raise ValueError(str(UnknownNameError(f"{info.field_name} value", v, values)))
        return v

    @field_validator("mfu")
    @classmethod
    def _mfu_floor(cls, v: float | None) -> float | None:
        if v is not None and v < MIN_MFU:
            raise ValueError(
                f"mfu {v:g} is below the floor of {MIN_MFU:g} (0.1% utilisation); "
                f"accepted: {MIN_MFU:g} to 1"
            )
        return v

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

    @model_validator(mode="before")
    @classmethod
    def _model_from_config(cls, data: Any) -> Any:
        """Take the model from ``config`` when the request names none."""
        if isinstance(data, dict) and data.get("model") is None and data.get("config"):
            from vramcalc.trainer_config import config_model

            model = config_model(data["config"])
            if model is not None:
                data = {**data, "model": model}
        return data

    @model_validator(mode="after")
    def _framework_features(self) -> EstimateRequest:
        """Refuse memory features the chosen framework does not have (one message each).

        The support matrix is data (``data/frameworks.json``, read by
        ``vramcalc.frameworks.request_problems``).
        """
        from vramcalc.frameworks import request_problems

        for problem in request_problems(self):
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _trainer_options(self) -> EstimateRequest:
        """Refuse trainer options the chosen trainer does not read (``TRAINER_OPTIONS``)."""
        for problem in _trainer_problems(self):
            raise ValueError(problem)
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

    @model_validator(mode="after")
    def _one_layout(self) -> EstimateRequest:
        """Refuse layouts that name two sharding engines or options without their switch.

        The same rules hold for the CLI, the Python API and the REST service because they all
        build this model. Rules about fields an accelerate config may still fill (``fsdp``,
        ``tp``) wait until ``accelerate_config.apply_accelerate`` has merged it in.
        """
        for problem in _layout_problems(self):
            raise ValueError(problem)
        return self


_FSDP_CHOICES = "full_shard, shard_grad_op, hybrid_shard or no_shard"
# FSDP options and the value that means "not asked for" (the field default).
_FSDP_OPTION_DEFAULTS: dict[str, Any] = {
    "fsdp_version": 2,
    "fsdp_offload": False,
    "fsdp_reshard_after_forward": None,
    "fsdp_use_orig_params": True,
    "fsdp_limit_all_gathers": True,
    "fsdp_backward_prefetch": FsdpBackwardPrefetch.BACKWARD_PRE,
    "fsdp_sync_each_batch": False,
    "fsdp_lora_in_blocks": False,
}
# FullyShardedDataParallel (FSDP1) arguments that fully_shard (FSDP2) does not have.
# Source: torch 2.13 distributed/fsdp/fully_sharded_data_parallel.py (FSDP1 __init__) and
# distributed/fsdp/_fully_shard/_fully_shard.py (fully_shard signature).
_FSDP1_ONLY = (
    "fsdp_use_orig_params",
    "fsdp_limit_all_gathers",
    "fsdp_backward_prefetch",
    "fsdp_lora_in_blocks",
)
_PP_VIRTUAL_STAGES_DEFAULT = 2


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value.value) if isinstance(value, Enum) else str(value)


def _layout_problems(req: EstimateRequest) -> list[str]:
    """Messages for impossible layout combinations (empty when the layout is consistent)."""
    out: list[str] = []
    if req.fsdp is not None:
        fsdp = f"fsdp {req.fsdp.value}"
        if req.zero != ZeroStage.DISABLED:
            out.append(
                f"{fsdp} and zero {int(req.zero)} both shard the model states; choose one: "
                "fsdp (PyTorch FSDP) with zero 0, or zero 1-3 (DeepSpeed) without fsdp"
            )
        if req.deepspeed is not None:
            out.append(
                f"{fsdp} and a deepspeed config both shard the model states; choose one: "
                "fsdp (PyTorch FSDP) or deepspeed (DeepSpeed ZeRO)"
            )
        for name in ("offload_optimizer", "offload_param"):
            value = getattr(req, name)
            if value != Offload.NONE:
                out.append(
                    f"{name} {value.value} is DeepSpeed ZeRO offload and cannot be used with "
                    f"{fsdp}; accepted: fsdp_offload true (FSDP CPUOffload) or {name} none"
                )
        if req.fsdp_version == 2:
            for name in _FSDP1_ONLY:
                value = getattr(req, name)
                if value != _FSDP_OPTION_DEFAULTS[name]:
                    out.append(
                        f"{name} {_shown(value)} is a FullyShardedDataParallel (FSDP1) option "
                        "but fsdp_version is 2 (fully_shard); accepted: fsdp_version 1, or "
                        f"{name} {_shown(_FSDP_OPTION_DEFAULTS[name])}"
                    )
        if req.fsdp_lora_in_blocks and req.lora is None and req.qlora is None:
            out.append(
                "fsdp_lora_in_blocks true places LoRA adapters in their block's FSDP unit, "
                "but the request has no lora or qlora; accepted: lora/qlora with it, or "
                "fsdp_lora_in_blocks false"
            )
        if req.fsdp_lora_in_blocks and req.framework == "hf" and (
            req.qlora is not None or req.dtype != DType.FP32
        ):
            out.append(
                "fsdp_lora_in_blocks true with PEFT's fp32 adapters and a "
                f"{'4-bit' if req.qlora is not None else req.dtype.value} base: FSDP1 cannot "
                "flatten one block of mixed dtypes (torch: 'Must flatten tensors with uniform "
                "dtype'); accepted: dtype fp32 (with mixed_precision for 16-bit compute), "
                "framework litgpt (adapters in the base dtype), or fsdp_lora_in_blocks false"
            )
        if req.fsdp_lora_in_blocks and not req.fsdp_use_orig_params:
            out.append(
                "fsdp_lora_in_blocks true mixes frozen and trainable parameters in one flat "
                "parameter, which FSDP1 allows only with use_orig_params; accepted: "
                "fsdp_use_orig_params true, or fsdp_lora_in_blocks false"
            )
        if req.fsdp_sync_each_batch and req.pp > 1:
            out.append(
                f"fsdp_sync_each_batch true cannot apply with pp {req.pp}: torch's pipeline "
                "schedule runs every micro-batch but the last without gradient sync "
                "(pipelining/stage.py backward_maybe_with_nosync); accepted: pp 1 with "
                "fsdp_sync_each_batch, or fsdp_sync_each_batch false"
            )
    elif req.accelerate_config is None:
        for name, default in _FSDP_OPTION_DEFAULTS.items():
            value = getattr(req, name)
            if value != default:
                out.append(
                    f"{name} {_shown(value)} needs fsdp, but fsdp is not set; accepted: "
                    f"fsdp {_FSDP_CHOICES}, or leave {name} at {_shown(default)}"
                )
    if req.accelerate_config is None and req.sequence_parallel and req.tp <= 1:
        out.append(
            f"sequence_parallel true needs tensor parallelism, but tp is {req.tp}; accepted: "
            "tp 2 or more with sequence_parallel, or sequence_parallel false"
        )
    if req.pp_schedule != PipelineSchedule.INTERLEAVED:
        if req.pp_virtual_stages != _PP_VIRTUAL_STAGES_DEFAULT:
            out.append(
                f"pp_virtual_stages {req.pp_virtual_stages} needs pp_schedule interleaved, but "
                f"pp_schedule is {req.pp_schedule.value}; accepted: pp_schedule interleaved, or "
                f"pp_virtual_stages {_PP_VIRTUAL_STAGES_DEFAULT}"
            )
    elif req.pp <= 1:
        out.append(
            f"pp_schedule interleaved needs pipeline parallelism, but pp is {req.pp}; "
            "accepted: pp 2 or more with pp_schedule interleaved, or pp_schedule 1f1b"
        )
    return out


# Request fields each trainer reads (TRL 1.16 config names). A trainer option given with a
# trainer that does not read it is refused. The RL helper adds its fields (num_generations,
# max_completion_length, vllm, ...) here and to EstimateRequest.
# Source: trl 1.16.0 trl/trainer/{dpo,kto,reward,grpo,rloo}_config.py,
# trl/experimental/{orpo,cpo}/*_config.py.
_RL_OPTIONS = (
    "num_generations",
    "max_completion_length",
    "max_prompt_length",
    "steps_per_generation",
    "vllm",
    "vllm_gpu_memory_utilization",
)
TRAINER_OPTIONS: dict[str, tuple[str, ...]] = {
    "sft": (),
    "dpo": ("beta", "ref_model", "precompute_ref_log_probs", "padding_free", "padded_batch"),
    "kto": ("beta", "ref_model", "precompute_ref_log_probs", "padded_batch"),
    "orpo": ("beta", "padded_batch"),
    "simpo": ("beta", "padded_batch"),
    "cpo": ("beta", "padded_batch"),
    "reward": ("padded_batch",),
    "ppo": ("ref_model", "max_completion_length", "max_prompt_length"),
    "grpo": ("beta", "ref_model", *_RL_OPTIONS),
    "rloo": ("beta", "ref_model", *_RL_OPTIONS),
}
# every trainer option and the value that means "not asked for" (its field default)
TRAINER_OPTION_DEFAULTS: dict[str, Any] = {
    "beta": None,
    "ref_model": "auto",
    "precompute_ref_log_probs": False,
    "padding_free": False,
    "padded_batch": None,
    "num_generations": None,
    "max_completion_length": None,
    "max_prompt_length": None,
    "steps_per_generation": None,
    "vllm": None,
    "vllm_gpu_memory_utilization": None,
}


def _trainer_problems(req: EstimateRequest) -> list[str]:
    """Messages for trainer options the chosen trainer does not use (empty when consistent)."""
    trainer = str(req.trainer.value)
    given = [n for n, off in TRAINER_OPTION_DEFAULTS.items() if getattr(req, n) != off]
    if trainer != "sft" and req.task != Task.TRAIN:
        return [f"--trainer {trainer} is a training step; it needs --task train"]
    accepted = TRAINER_OPTIONS.get(trainer, ())
    wrong = [n for n in given if n not in accepted]
    if wrong:
        users = sorted({t for t, opts in TRAINER_OPTIONS.items() for n in wrong if n in opts})
        return [
            f"{_opts(wrong)}: not used by --trainer {trainer}; "
            + (
                f"accepted with it: {_opts(list(accepted))}"
                if accepted
                else "it takes no trainer options"
            )
            + (f" (used by --trainer {', '.join(users)})" if users else "")
        ]
    out: list[str] = []
    if trainer != "sft":
        multi = [f"--{n} {getattr(req, n)}" for n in ("tp", "cp", "pp") if getattr(req, n) > 1]
        if multi:
            out.append(
                f"{', '.join(multi)} with --trainer {trainer}: TRL's trainers run data parallel "
                "(DDP, ZeRO or FSDP); accepted: --tp 1 --cp 1 --pp 1"
            )
    out += _rl_problems(req)
    if req.ref_model == "copy" and req.precompute_ref_log_probs:
        out.append(
            "--ref-model copy and --precompute-ref-log-probs: with precomputed log-probs the "
            "step holds no reference model; choose one"
        )
    return out


def _rl_problems(req: EstimateRequest) -> list[str]:
    """Messages for RL-trainer options TRL 1.16 refuses or that contradict each other.

    Source: trl 1.16.0 ``grpo_config.py`` / ``rloo_config.py`` ``__post_init__``
    (``generation_batch_size % num_generations``).
    """
    trainer = str(req.trainer.value)
    if trainer not in ("grpo", "rloo", "ppo"):
        return []
    out: list[str] = []
    if "seq_len" in req.model_fields_set:
        out.append(
            f"--seq-len with --trainer {trainer}: the sequence is --max-prompt-length + "
            "--max-completion-length; set those instead"
        )
    if trainer == "ppo":
        return out
    g = req.num_generations or (8 if trainer == "grpo" else 2)
    spg = req.steps_per_generation or req.grad_accum
    world = req.gpus * req.nodes
    b = rl_batch_size(req)
    gen_batch = b * world * spg
    if gen_batch % g:
        out.append(
            f"-b {b} x {world} GPU(s) x steps_per_generation {spg} = generation "
            f"batch {gen_batch}, which TRL requires to be divisible by --num-generations {g} "
            "(-b counts completions); accepted: -b a multiple of "
            f"{g // _gcd(g, world * spg)}"
        )
    if req.vllm_gpu_memory_utilization is not None and (req.vllm or "none") == "none":
        out.append(
            "--vllm-gpu-memory-utilization needs --vllm colocate (or server); accepted "
            "without it: none"
        )
    return out


def rl_batch_size(req: EstimateRequest) -> int:
    """Return ``-b`` for the request (RL trainers: TRL's default when unset).

    GRPO/RLOO/PPO requests that do not set ``batch_size`` get TRL's
    ``per_device_train_batch_size`` (8, ``data/rl.json``).
    """
    if req.trainer in (Trainer.GRPO, Trainer.RLOO, Trainer.PPO) and (
        "batch_size" not in req.model_fields_set
    ):
        from vramcalc import catalog

        return int(
            catalog.load("rl")["defaults"][str(req.trainer.value)]["per_device_train_batch_size"]
        )
    return req.batch_size


def _gcd(a: int, b: int) -> int:
    import math

    return math.gcd(a, b)


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
    target_parameters: tuple[str, ...] = ()
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


class TrainerSpec(_Frozen):
    """A resolved trainer (``--trainer`` and its options); see ``formulas/trainers.py``."""

    name: Trainer = Trainer.SFT
    beta: float | None = None
    ref_model: Literal["auto", "copy"] = "auto"
    precompute_ref_log_probs: bool = False
    padding_free: bool = False
    padded_batch: bool = Field(
        default=False,
        description="rows padded to the longest: an attention mask reaches the kernel",
    )
    num_generations: int | None = None
    max_completion_length: int | None = None
    max_prompt_length: int | None = None
    steps_per_generation: int | None = None
    vllm: Literal["none", "colocate", "server"] = "none"
    vllm_gpu_memory_utilization: float | None = None

    @classmethod
    def from_request(cls, req: EstimateRequest) -> TrainerSpec:
        """Return the trainer part of a request (RL defaults filled from ``data/rl.json``)."""
        rl: dict[str, Any] = {}
        if req.trainer in (Trainer.GRPO, Trainer.RLOO, Trainer.PPO):
            from vramcalc import catalog

            d = catalog.load("rl")["defaults"][str(req.trainer.value)]
            rl = {
                "beta": req.beta if req.beta is not None else d.get("beta"),
                "num_generations": req.num_generations or d.get("num_generations"),
                "max_completion_length": req.max_completion_length or d["max_completion_length"],
                "max_prompt_length": req.max_prompt_length or d["max_prompt_length"],
                "steps_per_generation": req.steps_per_generation or req.grad_accum,
                "vllm": req.vllm or "none",
                "vllm_gpu_memory_utilization": req.vllm_gpu_memory_utilization
                or (d.get("vllm_gpu_memory_utilization") if req.vllm == "colocate" else None),
            }
        return cls(
            name=req.trainer,
            beta=rl.pop("beta", req.beta),
            ref_model=req.ref_model,
            precompute_ref_log_probs=req.precompute_ref_log_probs,
            padding_free=req.padding_free,
            padded_batch=_padded_batch(req),
            **rl,
        )


def _padded_batch(req: EstimateRequest) -> bool:
    """Whether the trainer's batch carries padding (``padded_batch``, else the trainer's default).

    Source: ``data/trainers.json`` ``padded_by_default`` (TRL 1.16's preference collators pad
    every row to the longest of the batch; a real batch of pairs has rows of several lengths).
    """
    if req.padded_batch is not None:
        return req.padded_batch
    from vramcalc import catalog

    row = catalog.load("trainers")["trainers"].get(str(req.trainer.value), {})
    return bool(row.get("padded_by_default", False))


class RecipeSpec(_Frozen):
    """A resolved framework recipe: which implementations run and which features are on.

    Built by ``vramcalc.frameworks.resolve_recipe`` from the request and the framework's
    profile (``data/frameworks.json``); the formulas branch on these fields, never on the
    framework's name.
    """

    framework: Framework = "hf"
    loss: LossKind = "full"
    loss_chunks: int = Field(default=1, gt=0, description="chunks the loss runs over")
    logits_fp32: bool = Field(
        default=True,
        description="the loss upcasts the logits to fp32 before log_softmax (transformers' "
        "ForCausalLMLoss); False: cross_entropy on logits in the compute dtype (LitGPT)",
    )
    hold_logits: bool = Field(
        default=False,
        description="the training loop keeps the (chunked) logits alive through backward",
    )
    gelu_tanh: Literal["python", "fused"] = Field(
        default="python",
        description="tanh GELU: python formula (transformers NewGELU, 4 saved tensors) or "
        "F.gelu(approximate='tanh') (1 saved tensor)",
    )
    qkv_fused: bool = Field(
        default=False,
        description="one fused q/k/v linear (LitGPT ``attn.qkv``): under SDPA the value is a "
        "view of its output, which stays saved whole; grouped K/V are repeated to all heads",
    )
    norm_impl: Literal["model", "fp32_normed", "liger"] = Field(
        default="model",
        description="RMSNorm: the model's (transformers: normalised tensor saved in the input "
        "dtype), fp32_normed (LitGPT: x.float() * rsqrt saved in fp32, times weight.float()) "
        "or liger (LigerRMSNormFunction: saves its input and the fp32 rstd)",
    )
    swiglu_impl: Literal["model", "fused"] = Field(
        default="model",
        description="gated MLP: the model's act(gate) * up (gate, up, act saved) or fused "
        "(LigerSiLUMulFunction: gate and up saved, the activation recomputed)",
    )
    rope_dtype: Literal["promoted", "input"] = Field(
        default="promoted",
        description="rotary output dtype under autocast: promoted to fp32 by fp32 cos/sin "
        "(transformers) or cast back to the input dtype (LitGPT apply_rope)",
    )
    adapter_dtype: Literal["autocast", "base"] = Field(
        default="autocast",
        description="LoRA adapters: PEFT's (fp32 adapter weights, inputs autocast) or kept "
        "in the base model's dtype (LitGPT)",
    )
    lora_dropout: Literal["per_linear", "per_fused_linear"] = Field(
        default="per_linear",
        description="one LoRA dropout per targeted linear (PEFT) or one on the fused qkv input",
    )
    quant_load: Literal["on_load", "after_16bit_load"] = Field(
        default="on_load",
        description="quantize layer by layer while loading (transformers BitsAndBytesConfig) "
        "or load 16-bit weights, then quantize (LitGPT BitsandbytesPrecision)",
    )
    quant_lm_head: bool = Field(default=False, description="the LM head is quantized too")
    kbit_upcast: bool = Field(
        default=True,
        description="with a quantized base, the other parameters are cast to fp32 (PEFT "
        "prepare_model_for_kbit_training); False: they stay in the model dtype",
    )
    double_quant: bool = Field(default=True, description="absmax scales double-quantized")
    peak_reset: Literal["after_load", "never"] = Field(
        default="after_load",
        description="where the framework's peak counter is reset: after loading (the load "
        "transient is not in the reported peak) or never (it is)",
    )
    liger: bool = False
    activation_offload: bool = False
    optimizer_in_backward: bool = False
    packing: bool = False
    compile: bool = False
    checkpoint_offload: bool = False


class VisionSpec(_Frozen):
    """Images of a vision-language model's training row (``formulas/vision.py``)."""

    images: int = Field(default=0, ge=0, description="images per row")
    height: int = Field(gt=0, description="image height in pixels, before the processor")
    width: int = Field(gt=0, description="image width in pixels, before the processor")
    freeze: bool = Field(default=False, description="vision tower frozen")
    patches: int = Field(default=0, ge=0, description="tower tokens per image")
    tokens: int = Field(default=0, ge=0, description="language-model tokens per image")
    pixels: int = Field(default=0, ge=0, description="pixel_values elements per image")
    grid: bool = Field(default=False, description="the batch carries image_grid_thw (Qwen-VL)")
    token_types: bool = Field(
        default=False,
        description="the batch carries token_type_ids (Gemma 3) / mm_token_type_ids (Qwen3-VL)",
    )
    tiles: int = Field(
        default=0,
        ge=0,
        description="tiles per image, padded (Llama-3.2-Vision max_num_tiles; 0 otherwise): the "
        "batch carries aspect_ratio_ids, aspect_ratio_mask and a cross_attention_mask",
    )
    used_tiles: int = Field(default=0, ge=0, description="tiles the image fills (the rest padding)")


class TrainingSpec(_Frozen):
    """A resolved training (or inference) step on one GPU."""

    task: Task = Task.TRAIN
    batch_size: int = Field(default=1, gt=0)
    seq_len: int = Field(default=512, gt=0)
    target_len: int | None = Field(
        default=None, gt=0, description="decoder length of an encoder-decoder model (None: seq_len)"
    )
    grad_accum: int = Field(default=1, gt=0)
    param_dtype: DType = DType.FP32
    mixed_precision: MixedPrecision = MixedPrecision.NO
    optim: str = "adamw_torch"
    peft: PeftSpec | None = None
    quant: Quant | None = None
    grad_ckpt: bool = False
    attn: Attention = Attention.SDPA
    inference: InferenceSpec | None = None
    trainer: TrainerSpec = Field(default_factory=TrainerSpec)
    recipe: RecipeSpec = RecipeSpec()
    vision: VisionSpec | None = Field(
        default=None,
        description="images per row of a vision-language model (seq_len already counts "
        "their tokens)",
    )


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
    sync_each_batch: bool = False
    """Reduce-scatter after every micro-batch; false: accelerate's ``no_sync`` accumulation."""
    lora_in_blocks: bool = False
    """FSDP1: LoRA adapters share their block's flat parameter (its gradient is whole)."""


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
