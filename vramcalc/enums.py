"""Choices a user types, as ``StrEnum``/``IntEnum`` values.

The string values are exactly what users type on the command line and send over HTTP
(transformers' ``OptimizerNames`` values, accelerate's mixed-precision vocabulary, ...).
"""

from __future__ import annotations

from enum import IntEnum, StrEnum

__all__ = [
    "Attention",
    "DType",
    "FsdpBackwardPrefetch",
    "FsdpStrategy",
    "KvDtype",
    "MixedPrecision",
    "Offload",
    "PeftMethod",
    "Phase",
    "PipelineSchedule",
    "Quant",
    "ServeEngine",
    "Task",
    "Trainer",
    "WeightFormat",
    "ZeroStage",
]


class DType(StrEnum):
    """Storage dtype of parameters (``--dtype``)."""

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


class MixedPrecision(StrEnum):
    """Autocast over fp32 weights (``--mixed-precision``, accelerate's vocabulary)."""

    NO = "no"
    FP16 = "fp16"
    BF16 = "bf16"


class Quant(StrEnum):
    """bitsandbytes quantization of the frozen base's linear weights (``--quant``)."""

    NF4 = "nf4"
    FP4 = "fp4"
    INT8 = "int8"


class Attention(StrEnum):
    """transformers' ``attn_implementation`` values (``--attn``)."""

    EAGER = "eager"
    SDPA = "sdpa"
    FLASH_ATTENTION_2 = "flash_attention_2"


class PeftMethod(StrEnum):
    """Parameter-efficient fine-tuning methods."""

    LORA = "lora"
    QLORA = "qlora"
    ADAPTER = "adapter"
    PREFIX = "prefix"
    PROMPT_TUNING = "prompt_tuning"
    IA3 = "ia3"


class Offload(StrEnum):
    """DeepSpeed ZeRO offload target (``--offload-optimizer``, ``--offload-param``)."""

    NONE = "none"
    CPU = "cpu"
    NVME = "nvme"


class ZeroStage(IntEnum):
    """DeepSpeed ZeRO stage: what is partitioned over the data-parallel group.

    Source: Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion
    Parameter Models", Section 5 (P_os, P_os+g, P_os+g+p).
    """

    DISABLED = 0
    OPTIMIZER_STATES = 1
    GRADIENTS = 2
    PARAMETERS = 3


class FsdpStrategy(StrEnum):
    """PyTorch FSDP sharding strategy (``--fsdp``), ``torch.distributed.fsdp.ShardingStrategy``.

    FSDP2 (``fully_shard``) expresses the same choices through its mesh and
    ``reshard_after_forward``: full_shard = reshard True, shard_grad_op = reshard False,
    hybrid_shard = a 2-D (replicate, shard) mesh with shards inside a node, no_shard = DDP.
    Source: torch 2.13 ``distributed/fsdp/api.py`` (``ShardingStrategy``),
    ``distributed/fsdp/_fully_shard/_fully_shard.py``.
    """

    FULL_SHARD = "full_shard"
    SHARD_GRAD_OP = "shard_grad_op"
    HYBRID_SHARD = "hybrid_shard"
    NO_SHARD = "no_shard"


class FsdpBackwardPrefetch(StrEnum):
    """FSDP1 ``BackwardPrefetch`` (``--fsdp-backward-prefetch``); FSDP2 always prefetches one."""

    BACKWARD_PRE = "backward_pre"
    BACKWARD_POST = "backward_post"
    NONE = "none"


class PipelineSchedule(StrEnum):
    """Pipeline-parallel schedule (``--pp-schedule``).

    Source: Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on GPU
    Clusters Using Megatron-LM", Section 2.2 (1F1B and the interleaved schedule).
    """

    ONE_F_ONE_B = "1f1b"
    INTERLEAVED = "interleaved"


class Task(StrEnum):
    """What the job does on the GPU."""

    TRAIN = "train"
    INFERENCE = "inference"


class Phase(StrEnum):
    """Phases of one training step, in order (then the two of an inference job)."""

    LOAD = "load"
    GENERATION = "generation"  # an RL trainer's rollouts (GRPO/RLOO/PPO), before its forward
    FORWARD = "forward"
    LOSS = "loss"
    BACKWARD = "backward"
    OPTIMIZER = "optimizer"
    PREFILL = "prefill"
    DECODE = "decode"


class KvDtype(StrEnum):
    """Storage dtype of the KV cache (``--kv-dtype``); ``auto`` = the compute dtype."""

    AUTO = "auto"
    FP16 = "fp16"
    BF16 = "bf16"
    FP8 = "fp8"


class WeightFormat(StrEnum):
    """Weight-only quantized checkpoint formats served as they are stored (``--weights``)."""

    AWQ = "awq"
    GPTQ = "gptq"
    FP8 = "fp8"


class ServeEngine(StrEnum):
    """What runs the inference (``--engine``): transformers ``generate`` or vLLM."""

    HF = "hf"
    VLLM = "vllm"


class Trainer(StrEnum):
    """TRL trainer that runs the step (``--trainer``); ``sft`` is a plain causal-LM step.

    Values are TRL 1.16's trainer names (``trl/trainer/*_trainer.py``, ORPO and CPO in
    ``trl/experimental``); SimPO is ``CPOTrainer`` with ``loss_type="simpo"``.
    """

    SFT = "sft"
    DPO = "dpo"
    ORPO = "orpo"
    KTO = "kto"
    SIMPO = "simpo"
    CPO = "cpo"
    REWARD = "reward"
    PPO = "ppo"
    GRPO = "grpo"
    RLOO = "rloo"
