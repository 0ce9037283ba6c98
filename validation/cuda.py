"""Real-CUDA backend: run a ``Scenario`` on a GPU and record what it really used.

One scenario per process (a clean CUDA context): build the model from its config (random
init, never the hub), apply PEFT (LoRA, or QLoRA over bitsandbytes 4-bit linears prepared as
the Hugging Face recipes do), build the optimizer by its transformers name, then run
``scenario.steps`` training steps split into phases (forward, loss, backward, optimizer).
Around each phase the allocator's peak counters are reset and read, so every phase keeps its
own maximum of ``torch.cuda.max_memory_allocated`` and ``max_memory_reserved``; NVML's
device-wide ``used`` is read at each phase end. The CUDA context is NVML ``used`` after
``torch.cuda.init()`` and a tiny allocation, minus NVML ``used`` before and minus what the
allocator reserved.

Command line (what ``validation.matrix`` runs in a fresh subprocess per case)::

    python -m validation.cuda --scenario case.json --result result.json [--dry-run]

``--dry-run`` needs no GPU: it resolves the scenario, builds the model on the meta device,
wraps it with PEFT, resolves the optimizer class, and writes a Measurement line whose
``error`` is ``"dry-run"`` (never a figure).

The pure parts (``resolve_plan``, ``Fingerprint`` assembly, the result record) import
neither torch nor transformers; everything else imports them lazily.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import importlib
import importlib.metadata
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from validation.records import Fingerprint, Measured, Measurement, Scenario
from vramcalc.enums import Attention, DType, MixedPrecision, Offload, Quant, Task, ZeroStage
from vramcalc.errors import InvalidConfigError, VramcalcError

__all__ = [
    "PHASES",
    "PhaseRecorder",
    "RunPlan",
    "apply_peft",
    "build_for_run",
    "build_model",
    "build_optimizer",
    "check_scenario",
    "compute_loss",
    "failure_measurement",
    "fingerprint",
    "main",
    "make_batch",
    "measured_from_phases",
    "model_config_of",
    "package_versions",
    "resolve_plan",
    "run_scenario",
    "uses_shared_builder",
]

PHASES: tuple[str, ...] = ("forward", "loss", "backward", "optimizer")
"""Phases of one training step, in order (``vramcalc.enums.Phase`` values)."""

VERSIONED_PACKAGES: tuple[str, ...] = (
    "torch",
    "transformers",
    "peft",
    "bitsandbytes",
    "deepspeed",
    "accelerate",
    "nvidia-ml-py",
    "flash-attn",
)

# transformers model types whose natural training head is masked-LM (no causal LM class).
_ENCODER_TYPES = frozenset(
    {"bert", "roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2", "xlm-roberta"}
)

_TORCH_DTYPE = {DType.FP32: "float32", DType.BF16: "bfloat16", DType.FP16: "float16"}


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class RunPlan:
    """A scenario resolved into the concrete choices a run makes (pure data, no torch)."""

    scenario_id: str
    model_config: dict[str, Any]
    model_type: str
    model_class: str | None
    param_dtype: str
    autocast_dtype: str | None
    attn_implementation: str
    sdpa_backends: tuple[str, ...] | None
    peft: dict[str, Any] | None
    quant: str | None
    optim: str
    optim_impl: str
    grad_ckpt: bool
    batch_size: int
    seq_len: int
    grad_accum: int
    steps: int
    train: bool
    zero_stage: int
    offload_optimizer: str
    offload_param: str
    gpus: int
    deepspeed: dict[str, Any] | None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def uses_deepspeed(self) -> bool:
        """True when the scenario must run through DeepSpeed (``deepspeed_run``)."""
        return self.deepspeed is not None or self.zero_stage > 0


def model_config_of(model: str | dict[str, Any]) -> dict[str, Any]:
    """Return the HF ``config.json`` dict of a request's ``model`` (inline dict or name).

    Raises:
        InvalidConfigError: an inline config without ``model_type``, or a name the catalog
            cannot resolve to a config.

    """
    if isinstance(model, dict):
        cfg = dict(model)
    else:
        try:
            from vramcalc import catalog

            row = catalog.model_row(model)
        except VramcalcError:
            raise
        except Exception as exc:  # the catalog data file may not exist yet
            raise InvalidConfigError(
                f"cannot resolve model '{model}' to a config.json ({exc}); "
                "accepted: an inline config.json object with 'model_type', or a catalog name"
            ) from exc
        cfg = dict(row.get("config") or {})
        if "model_type" not in cfg and row.get("model_type"):
            cfg["model_type"] = row["model_type"]
    if not isinstance(cfg.get("model_type"), str):
        raise InvalidConfigError(
            "model config has no 'model_type'; accepted: an HF config.json object such as "
            "{'model_type': 'gpt2', 'n_layer': 24, ...}"
        )
    return cfg


def resolve_plan(scenario: Scenario) -> RunPlan:
    """Resolve a scenario into concrete run settings (pure: no torch import).

    Raises:
        InvalidConfigError: combinations a real run cannot do (e.g. QLoRA under ZeRO-3, a
            16-bit storage dtype with AMP on top).

    """
    req = scenario.request
    cfg = model_config_of(req.model)
    model_type = str(cfg["model_type"])
    archs = cfg.get("architectures")
    model_class = str(archs[0]) if isinstance(archs, list) and archs else None
    notes: list[str] = []

    autocast: str | None = None
    if req.mixed_precision is not MixedPrecision.NO:
        if req.dtype is not DType.FP32:
            raise InvalidConfigError(
                f"mixed_precision={req.mixed_precision.value} needs fp32 weights, got "
                f"dtype={req.dtype.value}; accepted: dtype=fp32 with AMP, or pure 16-bit "
                "with mixed_precision=no"
            )
        autocast = "float16" if req.mixed_precision is MixedPrecision.FP16 else "bfloat16"

    # the engine's own resolution: PEFT targets (PEFT's defaults per model type), the QLoRA
    # base, the ZeRO stage of a DeepSpeed config -- one set of rules, not a second copy here
    from vramcalc.engine import resolve

    res = resolve(req)
    peft: dict[str, Any] | None = None
    quant: str | None = res.training.quant.value if res.training.quant is not None else None
    resolved_peft = res.training.peft
    if resolved_peft is not None and resolved_peft.method in ("lora", "qlora"):
        peft = {
            "method": resolved_peft.method.value,
            "r": resolved_peft.r,
            "alpha": resolved_peft.alpha,
            "dropout": resolved_peft.dropout,
            "targets": list(resolved_peft.targets),
        }
    elif resolved_peft is not None:
        raise InvalidConfigError(
            "the CUDA backend runs full fine-tuning, LoRA and QLoRA; accepted PEFT: lora, qlora"
        )
    if res.parallel.fsdp is not None or res.parallel.tp * res.parallel.pp * res.parallel.cp > 1:
        raise InvalidConfigError(
            "the CUDA backend measures one process or DeepSpeed data parallelism; FSDP and "
            "tensor/pipeline/context-parallel layouts are measured by the rank-0 trace "
            "(--backend trace)"
        )

    from validation.build import request_attn

    attn = request_attn(req)
    sdpa_backends: tuple[str, ...] | None = None
    if req.attn is Attention.FLASH_ATTENTION_2:
        # flash-attn is not installed on every GPU image; without it, run SDPA restricted to
        # its fused kernels (flash first, memory-efficient where flash cannot run, e.g. fp32).
        # The fingerprint records which path the run really took.
        sdpa_backends = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION")

    zero = int(res.parallel.zero_stage)
    if quant is not None and zero >= int(ZeroStage.PARAMETERS):
        raise InvalidConfigError("QLoRA under ZeRO-3 is not measured; accepted: ZeRO 0-2")
    if req.gpus > 1 and zero == 0 and req.deepspeed is None:
        notes.append("gpus>1 without ZeRO: run as DeepSpeed ZeRO-0 (plain data parallel)")

    return RunPlan(
        scenario_id=scenario.id,
        model_config=cfg,
        model_type=model_type,
        model_class=model_class,
        param_dtype=_TORCH_DTYPE[req.dtype],
        autocast_dtype=autocast,
        attn_implementation=attn,
        sdpa_backends=sdpa_backends,
        peft=peft,
        quant=quant,
        optim=req.optim,
        optim_impl=scenario.optim_impl,
        grad_ckpt=req.grad_ckpt,
        batch_size=req.batch_size,
        seq_len=req.seq_len,
        grad_accum=req.grad_accum,
        steps=scenario.steps,
        train=req.task is Task.TRAIN,
        zero_stage=zero,
        offload_optimizer=req.offload_optimizer.value,
        offload_param=req.offload_param.value,
        gpus=req.gpus,
        deepspeed=req.deepspeed
        if req.deepspeed is not None
        else (
            {}
            if zero > 0
            or req.gpus > 1
            or req.offload_optimizer is not Offload.NONE
            or req.offload_param is not Offload.NONE
            else None
        ),
        notes=tuple(notes),
    )


# ----------------------------------------------------------------------------- environment


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages a measurement depends on (``None`` if absent)."""
    out: dict[str, str | None] = {}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _nvml_handle(torch: Any) -> Any | None:
    """Return the NVML handle of torch's device (matched by PCI bus id), or ``None``."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        if torch is not None and torch.cuda.is_available():
            props = torch.cuda.get_device_properties(torch.cuda.current_device())
            uuid = getattr(props, "uuid", None)
            if uuid is not None:
                with contextlib.suppress(Exception):
                    return pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
            bus = getattr(props, "pci_bus_id", None)
            if bus is not None:
                with contextlib.suppress(Exception):
                    domain = getattr(props, "pci_domain_id", 0)
                    dev = getattr(props, "pci_device_id", 0)
                    return pynvml.nvmlDeviceGetHandleByPciBusId(
                        f"{domain:08X}:{bus:02X}:{dev:02X}.0"
                    )
        index = int(os.environ.get("LOCAL_RANK", "0"))
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible:
            ids = [v for v in visible.split(",") if v.strip()]
            if ids and ids[min(index, len(ids) - 1)].strip().isdigit():
                index = int(ids[min(index, len(ids) - 1)])
        return pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception:
        return None


def nvml_used(handle: Any | None) -> int | None:
    """NVML device-wide used bytes (every process and the context included), or ``None``."""
    if handle is None:
        return None
    try:
        import pynvml

        return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
    except Exception:
        return None


def fingerprint(torch: Any | None, *, dry_run: bool = False, **extra: Any) -> Fingerprint:
    """Describe where a measurement was taken: GPU, driver, CUDA and package versions.

    Args:
        torch: the imported torch module, or ``None`` (then torch's version is read from
            package metadata and no device is queried).
        dry_run: mark a fingerprint taken without a GPU.
        **extra: further fields (``Fingerprint`` allows extras), e.g. the context size.

    """
    versions = package_versions()
    device = "dry-run (no CUDA)" if dry_run else "unknown"
    driver: str | None = None
    cuda: str | None = None
    fields: dict[str, Any] = {}
    if torch is not None:
        cuda = torch.version.cuda
        if not dry_run and torch.cuda.is_available():
            idx = torch.cuda.current_device()
            props = torch.cuda.get_device_properties(idx)
            device = str(props.name)
            fields["gpu_total_bytes"] = int(props.total_memory)
            fields["compute_capability"] = f"{props.major}.{props.minor}"
            fields["gpu_count"] = int(torch.cuda.device_count())
    with contextlib.suppress(Exception):
        import pynvml

        pynvml.nvmlInit()
        raw = pynvml.nvmlSystemGetDriverVersion()
        driver = raw.decode() if isinstance(raw, bytes) else str(raw)
    torch_version = str(torch.__version__) if torch is not None else (versions["torch"] or "absent")
    alloc_conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF")
    if alloc_conf:
        fields["alloc_conf"] = alloc_conf
    for name in ("accelerate", "nvidia-ml-py", "flash-attn"):
        if versions.get(name):
            fields[name.replace("-", "_")] = versions[name]
    fields.update(extra)
    return Fingerprint(
        backend="cuda",
        device=device,
        driver=driver,
        cuda=cuda,
        torch=torch_version,
        transformers=versions["transformers"] or "absent",
        peft=versions["peft"],
        bitsandbytes=versions["bitsandbytes"],
        deepspeed=versions["deepspeed"],
        python=platform.python_version(),
        host=platform.node() or None,
        **fields,
    )


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def failure_measurement(
    scenario: Scenario, error: str, *, fp: Fingerprint | None = None, wall_s: float | None = None
) -> Measurement:
    """Make the JSONL line of a case that produced no figures (``error`` says why)."""
    return Measurement(
        scenario=scenario,
        fingerprint=fp or fingerprint(None),
        measured=Measured(allocated_bytes=0, phase="none", step=0),
        created=_now(),
        wall_s=wall_s,
        error=error,
    )


# ----------------------------------------------------------------------------- per-phase peaks


class PhaseRecorder:
    """Keep per-phase maxima of the allocator counters and NVML ``used``.

    ``begin`` synchronizes and resets the allocator's peak statistics; ``end`` synchronizes
    and reads them, so each phase's figure is that phase's own maximum (the peak of a phase
    starts at what was live when it began).
    """

    def __init__(self, torch: Any, handle: Any | None, *, device: Any = None) -> None:
        self.torch = torch
        self.handle = handle
        self.device = device
        self.allocated: dict[str, int] = {}
        self.reserved: dict[str, int] = {}
        self.device_used: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self._t0 = 0.0

    @property
    def _on_cuda(self) -> bool:
        return self.device is None or getattr(self.device, "type", self.device) == "cuda"

    def begin(self, key: str) -> None:
        if self._on_cuda:
            self.torch.cuda.synchronize(self.device)
            self.torch.cuda.reset_peak_memory_stats(self.device)
        self._t0 = time.perf_counter()

    def end(self, key: str) -> None:
        cuda = self.torch.cuda
        if not self._on_cuda:  # CPU smoke runs: timings only
            self.seconds[key] = time.perf_counter() - self._t0
            self.allocated[key] = 0
            self.reserved[key] = 0
            return
        cuda.synchronize(self.device)
        self.seconds[key] = time.perf_counter() - self._t0
        self.allocated[key] = int(cuda.max_memory_allocated(self.device))
        self.reserved[key] = int(cuda.max_memory_reserved(self.device))
        used = nvml_used(self.handle)
        if used is not None:
            self.device_used[key] = used

    @contextlib.contextmanager
    def phase(self, key: str) -> Iterator[None]:
        self.begin(key)
        yield
        self.end(key)


def measured_from_phases(
    allocated: dict[str, int],
    reserved: dict[str, int],
    device_used: dict[str, int],
    *,
    context_bytes: int | None,
    by_category: dict[str, int] | None = None,
) -> Measured:
    """Fold per-phase maxima into a ``Measured`` record.

    The peak (and its phase/step) is taken over the training phases, keys
    ``'<step>/<phase>'`` with step >= 1; the load phase (``'0/load'``) is kept in
    ``per_phase_peak`` but never names the peak. ``reserved_bytes`` and ``device_bytes`` are
    the maxima over the same phases.

    Raises:
        ValueError: no training phase was recorded.

    """
    train = {k: v for k, v in allocated.items() if not k.startswith("0/")}
    if not train:
        raise ValueError("no training phase recorded")
    key = max(train, key=lambda k: (train[k], -_phase_order(k)))
    step_s, phase = key.split("/", 1)
    res = [v for k, v in reserved.items() if not k.startswith("0/")]
    dev = [v for k, v in device_used.items() if not k.startswith("0/")]
    return Measured(
        allocated_bytes=train[key],
        reserved_bytes=max(res) if res else None,
        device_bytes=max(dev) if dev else None,
        context_bytes=context_bytes,
        phase=phase,
        step=int(step_s),
        per_phase_peak=dict(allocated),
        by_category=dict(by_category or {}),
    )


def _phase_order(key: str) -> int:
    step_s, phase = key.split("/", 1)
    order = PHASES.index(phase) if phase in PHASES else -1
    return int(step_s) * 10 + order


# ----------------------------------------------------------------------------- construction


def _dtype(torch: Any, name: str) -> Any:
    return getattr(torch, name)


def build_model(plan: RunPlan, device: Any, *, dtype: str | None = None) -> Any:
    """Build the transformers model of ``plan`` from its config (random init, no hub).

    Args:
        plan: the resolved scenario.
        device: where parameters are created (``"cuda"``, ``"cpu"`` or ``"meta"``).
        dtype: override of the storage dtype (torch dtype name); defaults to the plan's.

    """
    import torch  # noqa: TID251
    import transformers

    cfg = dict(plan.model_config)
    model_type = cfg.pop("model_type")
    config = transformers.AutoConfig.for_model(model_type, **cfg)
    torch_dtype = _dtype(torch, dtype or plan.param_dtype)
    cls: Any
    if plan.model_class and hasattr(transformers, plan.model_class):
        cls = getattr(transformers, plan.model_class)
    elif model_type in _ENCODER_TYPES:
        cls = transformers.AutoModelForMaskedLM
    else:
        cls = transformers.AutoModelForCausalLM
    attn = plan.attn_implementation
    if attn == Attention.FLASH_ATTENTION_2.value and not _has_flash_attn():
        attn = Attention.SDPA.value
    with torch.device(device):
        if cls.__name__.startswith("Auto"):
            model = cls.from_config(config, attn_implementation=attn, dtype=torch_dtype)
        else:
            model = cls._from_config(config, attn_implementation=attn, dtype=torch_dtype)
    model.tie_weights()
    return model


def _has_flash_attn() -> bool:
    try:
        importlib.import_module("flash_attn")
    except Exception:
        return False
    return True


def quantize_linears(model: Any, quant: str, compute_dtype: str) -> int:
    """Swap the model's ``nn.Linear`` layers for bitsandbytes' quantized ones, in place.

    What ``BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant,
    bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute_dtype)`` produces at
    ``from_pretrained``: every linear except the output embedding (``lm_head``; transformers'
    ``get_keys_to_not_convert``) becomes ``bnb.nn.Linear4bit`` (nf4/fp4, double quantization,
    uint8 storage) or ``bnb.nn.Linear8bitLt`` (int8, ``has_fp16_weights=False``). The weights
    are the random ones already on the GPU; each is quantized and its 16-bit copy freed.

    Source: transformers ``integrations/bitsandbytes.py`` (``replace_with_bnb_linear``) and
    ``quantizers/quantizer_bnb_4bit.py``.

    Returns:
        The number of linear layers replaced.

    """
    bnb: Any = importlib.import_module("bitsandbytes")
    import torch  # noqa: TID251
    from torch import nn  # noqa: TID251

    out_emb = model.get_output_embeddings()
    skip = {id(out_emb)} if out_emb is not None else set()
    cdtype = _dtype(torch, compute_dtype)
    replaced = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is not nn.Linear or id(child) in skip:
                continue
            dev = child.weight.device
            new: Any
            if quant in (Quant.NF4.value, Quant.FP4.value):
                new = bnb.nn.Linear4bit(
                    child.in_features,
                    child.out_features,
                    bias=child.bias is not None,
                    compute_dtype=cdtype,
                    compress_statistics=True,
                    quant_type=quant,
                    quant_storage=torch.uint8,
                    device="meta",
                )
                new.weight = bnb.nn.Params4bit(
                    child.weight.data,
                    requires_grad=False,
                    compress_statistics=True,
                    quant_type=quant,
                    quant_storage=torch.uint8,
                    module=new,
                ).to(dev)
            elif quant == Quant.INT8.value:
                new = bnb.nn.Linear8bitLt(
                    child.in_features,
                    child.out_features,
                    bias=child.bias is not None,
                    has_fp16_weights=False,
                    threshold=6.0,
                    device="meta",
                )
                new.weight = bnb.nn.Int8Params(
                    child.weight.data.to("cpu"), requires_grad=False, has_fp16_weights=False
                ).to(dev)
            else:
                raise InvalidConfigError(f"unknown quant '{quant}'; accepted: nf4, fp4, int8")
            if child.bias is not None:
                new.bias = nn.Parameter(child.bias.data, requires_grad=False)
            setattr(parent, child_name, new)
            del child
            replaced += 1
    model.is_loaded_in_4bit = quant != Quant.INT8.value
    model.is_loaded_in_8bit = quant == Quant.INT8.value
    model.quantization_method = "bitsandbytes"
    return replaced


def apply_peft(model: Any, plan: RunPlan, *, quantized: bool) -> Any:
    """Wrap ``model`` with a peft ``LoraConfig`` as the HF LoRA/QLoRA recipes do.

    QLoRA: ``prepare_model_for_kbit_training`` (casts the non-quantized parameters to fp32;
    checkpointing only if the scenario asks for it), then ``get_peft_model``. LoRA with
    checkpointing enables input gradients (the recipes' ``enable_input_require_grads``).
    """
    peft: Any = importlib.import_module("peft")

    if plan.peft is None:
        return model
    if quantized:
        model = peft.prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=plan.grad_ckpt,
            auto_clear_cache=True,  # the recipe's default: empties the allocator cache
        )
    elif plan.grad_ckpt:
        model.enable_input_require_grads()
    kwargs: dict[str, Any] = {"r": plan.peft["r"], "lora_dropout": plan.peft["dropout"]}
    if plan.peft.get("alpha") is not None:
        kwargs["lora_alpha"] = plan.peft["alpha"]
    if plan.peft.get("targets"):
        kwargs["target_modules"] = list(plan.peft["targets"])
    task = "SEQ_CLS" if "SequenceClassification" in type(model).__name__ else "CAUSAL_LM"
    cfg = peft.LoraConfig(task_type=task, **kwargs)
    return peft.get_peft_model(model, cfg)


def optimizer_class_and_kwargs(name: str, impl: str) -> tuple[Any, dict[str, Any]]:
    """Return the optimizer class and kwargs transformers' Trainer uses for ``--optim``.

    Source: ``transformers.Trainer.get_optimizer_cls_and_kwargs`` (the same mapping the
    Trainer applies to ``TrainingArguments.optim``). ``impl`` pins torch's implementation:
    ``foreach``/``fused``/``for-loop``; ``default`` leaves torch's own choice.
    """
    import tempfile

    from transformers import Trainer, TrainingArguments

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, optim=name, report_to=[])
        cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    kwargs = dict(kwargs)
    if impl != "default" and getattr(cls, "__module__", "").startswith("torch.optim"):
        kwargs.pop("fused", None)
        kwargs.pop("foreach", None)
        if impl == "fused":
            kwargs["fused"] = True
        elif impl == "foreach":
            kwargs["foreach"] = True
        elif impl == "for-loop":
            kwargs["foreach"] = False
    return cls, kwargs


def build_optimizer(model: Any, plan: RunPlan) -> Any:
    """Build the plan's optimizer over the trainable parameters (one parameter group)."""
    cls, kwargs = optimizer_class_and_kwargs(plan.optim, plan.optim_impl)
    params = [p for p in model.parameters() if p.requires_grad]
    return cls(params, **kwargs)


def make_batch(plan: RunPlan, model: Any, device: Any) -> dict[str, Any]:
    """Make a random unpadded batch (no attention mask, as real unpadded batches have)."""
    import torch  # noqa: TID251

    vocab = int(model.config.vocab_size)
    g = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(0, vocab, (plan.batch_size, plan.seq_len), generator=g)
    batch: dict[str, Any] = {"input_ids": ids.to(device)}
    name = type(_base_model(model)).__name__
    if "SequenceClassification" in name:
        n = int(getattr(model.config, "num_labels", 2))
        batch["labels"] = torch.randint(0, n, (plan.batch_size,), generator=g).to(device)
    else:
        batch["labels"] = batch["input_ids"].clone()  # as validation.build's batches
    return batch


def _base_model(model: Any) -> Any:
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def compute_loss(model: Any, logits: Any, labels: Any) -> Any:
    """Compute the loss the model's ``forward(labels=...)`` computes, as its own phase.

    Causal LMs: ``model.loss_function`` (transformers' ``ForCausalLMLoss``: fp32 upcast of the
    logits, shifted labels). Masked-LM and sequence-classification heads: plain cross-entropy
    over the logits, as their ``forward`` does.
    """
    import torch  # noqa: TID251
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    base = _base_model(model)
    if type(base).__name__ in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()):
        return base.loss_function(
            logits=logits, labels=labels, vocab_size=int(base.config.vocab_size)
        )
    return torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))


@contextlib.contextmanager
def sdpa_context(plan: RunPlan) -> Iterator[str]:
    """Restrict SDPA to the plan's backends; yields a label of the attention path."""
    if plan.sdpa_backends is None or _has_flash_attn():
        yield plan.attn_implementation
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: TID251

    backends = [getattr(SDPBackend, b) for b in plan.sdpa_backends]
    with sdpa_kernel(backends):
        yield "sdpa[" + "|".join(b.lower() for b in plan.sdpa_backends) + "]"


def _storage_bytes(tensors: Iterator[Any]) -> int:
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if t is None or t.device.type == "meta":
            continue
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr in seen:
            continue
        seen.add(ptr)
        total += int(st.nbytes())
    return total


def _state_tensors(optimizer: Any) -> Iterator[Any]:
    import torch  # noqa: TID251

    for state in optimizer.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor):
                yield v


# ----------------------------------------------------------------------------- the run


def uses_shared_builder(plan: RunPlan) -> bool:
    """Tell whether ``validation.build`` builds this model (the tracer's own construction).

    It builds causal LMs, full or LoRA. Quantized bases (QLoRA) and heads other than causal
    LM (e.g. ``BertForSequenceClassification``) are built here instead, then handed to
    ``validation.build.build_setup`` for the optimizer, scaler and step.
    """
    head = plan.model_class or ""
    causal = (not head or "CausalLM" in head or "LMHeadModel" in head) and (
        plan.model_type not in _ENCODER_TYPES
    )
    return causal and plan.quant is None


def _enable_checkpointing(model: Any) -> None:
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is None:
        enable = model.gradient_checkpointing_enable
    enable()


def build_for_run(scenario: Scenario, plan: RunPlan, dev: Any) -> tuple[Any, Any]:
    """Build model and ``validation.build.Setup`` for a real run on ``dev``.

    Causal LMs (full, LoRA) come from ``validation.build.build_model`` so the trace and the
    GPU run the same construction; QLoRA and other heads are built by ``build_model``,
    ``quantize_linears`` and ``apply_peft`` here. Flash attention without the flash-attn
    package is built as SDPA (``sdpa_context`` then restricts its kernels).

    Returns:
        ``(setup, n_params_before_quantization)``.

    """
    from validation import build

    attn = plan.attn_implementation
    if attn == Attention.FLASH_ATTENTION_2.value and not _has_flash_attn():
        attn = Attention.SDPA.value
    if uses_shared_builder(plan):
        model = build.build_model(scenario, dev, attn_implementation=attn)
        n_params = sum(p.numel() for p in model.parameters())
    else:
        model = build_model(plan, dev)
        n_params = sum(p.numel() for p in model.parameters())
        quantized = plan.quant is not None
        if quantized:
            compute = plan.param_dtype if plan.param_dtype != "float32" else "bfloat16"
            quantize_linears(model, str(plan.quant), compute)
        if plan.grad_ckpt and not quantized:
            _enable_checkpointing(model)
        model = apply_peft(model, plan, quantized=quantized)
    model.train(plan.train)
    setup = build.build_setup(scenario, dev, model=model) if plan.train else None
    return (setup if setup is not None else model), n_params


def run_scenario(scenario: Scenario, *, device_type: str = "cuda") -> Measurement:
    """Run ``scenario`` on the current CUDA device and measure it (see module docstring).

    Call once per process: the context size and the load phase are only meaningful in a
    fresh CUDA context. ``device_type="cpu"`` runs the same code path on the CPU with every
    memory figure 0 (a smoke test of the step pipeline for machines without a GPU).

    The step is ``validation.build.Setup.step`` (forward, loss, backward, optimizer step,
    ``zero_grad(set_to_none=True)``), whose ``on_phase`` hook marks where each phase starts;
    with gradient accumulation the same sequence runs per micro-batch and the optimizer
    steps after the last one.
    """
    plan = resolve_plan(scenario)
    if plan.uses_deepspeed:
        raise InvalidConfigError(
            f"scenario '{scenario.id}' needs DeepSpeed (zero={plan.zero_stage}, "
            f"gpus={plan.gpus}); run it through validation.deepspeed_run"
        )
    t_start = time.perf_counter()
    import torch  # noqa: TID251

    handle: Any | None = None
    used_before: int | None = None
    used_after_init: int | None = None
    context_bytes: int | None = None
    if device_type == "cpu":
        dev = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA is not available: the cuda backend needs a GPU")
        handle = _nvml_handle(None)
        used_before = nvml_used(handle)
        torch.cuda.init()  # type: ignore[no-untyped-call]
        dev = torch.device("cuda", torch.cuda.current_device())
        handle = _nvml_handle(torch) or handle
        torch.ones(1, device=dev)
        torch.cuda.synchronize()
        used_after_init = nvml_used(handle)
        if used_after_init is not None and used_before is not None:
            reserved_now = int(torch.cuda.memory_reserved(dev))
            context_bytes = used_after_init - used_before - reserved_now
    torch.manual_seed(0)

    rec = PhaseRecorder(torch, handle, device=dev)
    rec.begin("0/load")
    built, n_params_base = build_for_run(scenario, plan, dev)
    setup = built if plan.train else None
    model = setup.model if setup is not None else built
    batch = make_batch(plan, model, dev)
    rec.end("0/load")

    params_bytes = _storage_bytes(iter([*model.parameters(), *model.buffers()]))
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    marks = _PhaseMarks(rec)
    grads_bytes = 0
    states_bytes = 0
    step_s: list[float] = []
    with sdpa_context(plan) as attn_used:
        for step in range(1, plan.steps + 1):
            t0 = time.perf_counter()
            if setup is None:
                if scenario.request.new_tokens:
                    _generate(model, scenario.request, dev, rec, step)
                else:
                    with torch.no_grad(), rec.phase(f"{step}/forward"):
                        model(input_ids=batch["input_ids"])
                step_s.append(time.perf_counter() - t0)
                continue
            opt = setup.optimizer
            if plan.grad_accum == 1:
                grads_probe = _GradProbe(model)
                setup.on_phase = marks.hook(step, "", grads_probe)
                setup.step(batch)
                marks.close()
                grads_bytes = grads_probe.bytes
            else:
                grads_bytes = _accumulate(setup, batch, plan.grad_accum, step, marks)
            states_bytes = _storage_bytes(_state_tensors(opt))
            step_s.append(time.perf_counter() - t0)

    allocated = _fold_micro(rec.allocated)
    reserved = _fold_micro(rec.reserved)
    device_used = _fold_micro(rec.device_used)
    measured = measured_from_phases(allocated, reserved, device_used, context_bytes=context_bytes)
    measured = measured.model_copy(
        update={"by_category": _categories(measured, params_bytes, grads_bytes, states_bytes)}
    )
    fp = fingerprint(
        torch,
        dry_run=dev.type != "cuda",
        attn_used=attn_used,
        builder="validation.build" if uses_shared_builder(plan) else "validation.cuda",
        nvml_used_before_init_bytes=used_before,
        nvml_used_after_init_bytes=used_after_init,
        n_params=n_params_base,
        n_trainable_params=n_trainable,
        params_bytes=params_bytes,
        gradients_bytes=grads_bytes,
        optimizer_state_bytes=states_bytes,
        step_s=[round(s, 4) for s in step_s],
        phase_s={k: round(v, 4) for k, v in rec.seconds.items()},
        load_allocated_bytes=rec.allocated.get("0/load"),
        notes=list(plan.notes),
    )
    return Measurement(
        scenario=scenario,
        fingerprint=fp,
        measured=measured,
        created=_now(),
        wall_s=round(time.perf_counter() - t_start, 3),
    )


def _generate(model: Any, req: Any, dev: Any, rec: PhaseRecorder, step: int) -> None:
    """Run ``model.generate`` (greedy, exactly ``new_tokens`` new tokens) as two phases.

    The same inputs as the fake-CUDA tracer's ``validation.trace._trace_generate``: a batch
    of ``batch x prompt_len`` token ids with an all-ones attention mask, no EOS token. A
    forward pre-hook splits the call: the first forward is ``prefill``, the rest ``decode``;
    the recorder resets the peak counters at each boundary, so each phase keeps its own
    maximum of ``max_memory_allocated``.
    """
    import torch  # noqa: TID251

    prompt = req.prompt_len or req.seq_len
    model.eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    calls = [0]

    def pre_hook(_module: Any, _args: Any) -> None:
        calls[0] += 1
        if calls[0] == 1:
            rec.end(f"{step}/input")
            rec.begin(f"{step}/prefill")
        elif calls[0] == 2:
            rec.end(f"{step}/prefill")
            rec.begin(f"{step}/decode")

    rec.begin(f"{step}/input")
    ids = torch.zeros(req.batch_size, prompt, dtype=torch.long, device=dev)
    mask = torch.ones(req.batch_size, prompt, dtype=torch.long, device=dev)
    handle = model.register_forward_pre_hook(pre_hook)
    try:
        with torch.no_grad():
            out = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=req.new_tokens,
                min_new_tokens=req.new_tokens, do_sample=False,
            )  # fmt: skip
    finally:
        handle.remove()
    rec.end(f"{step}/decode" if calls[0] >= 2 else f"{step}/prefill")
    del out, ids, mask


class _GradProbe:
    """Measure gradient storage bytes when the optimizer phase begins (all grads live)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.bytes = 0

    def __call__(self) -> None:
        self.bytes = _storage_bytes(
            iter([p.grad for p in self.model.parameters() if p.grad is not None])
        )


class _PhaseMarks:
    """Turn ``Setup.on_phase(name)`` calls (phase starts) into recorder begin/end pairs."""

    def __init__(self, rec: PhaseRecorder) -> None:
        self.rec = rec
        self.current: str | None = None

    def start(self, key: str) -> None:
        if self.current is not None:
            self.rec.end(self.current)
        self.current = key
        self.rec.begin(key)

    def close(self) -> None:
        if self.current is not None:
            self.rec.end(self.current)
        self.current = None

    def hook(self, step: int, suffix: str, at_optimizer: Any = None) -> Any:
        def on_phase(name: str) -> None:
            if name == "optimizer" and at_optimizer is not None:
                at_optimizer()
            self.start(f"{step}/{name}{suffix}")

        return on_phase


def _accumulate(setup: Any, batch: dict[str, Any], ga: int, step: int, marks: _PhaseMarks) -> int:
    """One optimizer step over ``ga`` micro-batches (what ``Setup.step`` lacks).

    Mirrors ``Setup.step`` per micro-batch (autocast forward, fp32 outputs under AMP, loss
    scaled by ``1/ga`` as the Trainer does, backward), then the optimizer step and
    ``zero_grad(set_to_none=True)``. Returns the gradient bytes before the step.
    """
    from validation import build

    for micro in range(ga):
        hook = marks.hook(step, f"#{micro + 1}")
        setup.on_phase = hook
        hook("forward")
        with setup._autocast():
            out = setup.model(**batch)
        if setup.autocast_dtype is not None:
            out = build._to_fp32(out)
        loss = (out["loss"] if isinstance(out, dict) else out.loss) / ga
        del out
        hook("backward")
        (setup.scaler.scale(loss) if setup.scaler is not None else loss).backward()
        del loss
    probe = _GradProbe(setup.model)
    probe()
    marks.start(f"{step}/optimizer")
    if setup.scaler is not None:
        setup.scaler.step(setup.optimizer)
        setup.scaler.update()
    else:
        setup.optimizer.step()
    setup.optimizer.zero_grad(set_to_none=True)
    marks.close()
    return probe.bytes


def _fold_micro(values: dict[str, int]) -> dict[str, int]:
    """Fold ``'<s>/<phase>#<micro>'`` keys into ``'<s>/<phase>'`` by taking the maximum."""
    out: dict[str, int] = {}
    for k, v in values.items():
        base = k.split("#", 1)[0]
        out[base] = max(out.get(base, v), v)
    return out


def _categories(measured: Measured, params: int, grads: int, states: int) -> dict[str, int]:
    """Bytes of each component that are certainly live at the peak.

    Parameters are live throughout; gradients (all of them) only at an optimizer-phase peak;
    optimizer states at the optimizer phase and in every phase after step 1. ``other`` is the
    rest of the allocated peak (activations, temporaries, workspaces).
    """
    cats = {"params": params}
    if measured.phase == "optimizer":
        cats["gradients"] = grads
    if measured.phase == "optimizer" or measured.step > 1:
        cats["optimizer"] = states
    cats["other"] = max(measured.allocated_bytes - sum(cats.values()), 0)
    return cats


# ----------------------------------------------------------------------------- dry run


def check_scenario(scenario: Scenario) -> dict[str, Any]:
    """Validate a scenario without a GPU: resolve it, build on meta, wrap, pick the optimizer.

    Returns:
        Facts about the plan (parameter counts, classes) for the matrix's dry-run table.

    """
    plan = resolve_plan(scenario)
    info: dict[str, Any] = {"plan": asdict(plan)}
    import torch  # noqa: TID251

    from validation import build

    attn = plan.attn_implementation
    if attn == Attention.FLASH_ATTENTION_2.value and not _has_flash_attn():
        attn = Attention.SDPA.value
    info["builder"] = "validation.build" if uses_shared_builder(plan) else "validation.cuda"
    if uses_shared_builder(plan):
        model = build.build_model(scenario, on_meta=True, attn_implementation=attn)
        info["n_params"] = sum(p.numel() for p in _base_model(model).parameters())
        info["model_class"] = type(_base_model(model)).__name__
    else:
        model = build_model(plan, "meta")
        info["model_class"] = type(model).__name__
        info["n_params"] = sum(p.numel() for p in model.parameters())
        if plan.quant is not None:
            transformers: Any = importlib.import_module("transformers")
            compute = plan.param_dtype if plan.param_dtype != "float32" else "bfloat16"
            bnb_cfg = transformers.BitsAndBytesConfig(
                load_in_4bit=plan.quant != "int8",
                load_in_8bit=plan.quant == "int8",
                bnb_4bit_quant_type=plan.quant if plan.quant != "int8" else "nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=compute,
            )
            info["bnb_config"] = bnb_cfg.to_dict()
        if plan.peft is not None:
            with torch.device("meta"):
                model = apply_peft(model, plan, quantized=False)
    info["n_trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if plan.train:
        opt = build.build_optimizer(scenario, model)
        cls = type(opt)
        info["optimizer"] = f"{cls.__module__}.{cls.__name__}"
        info["optimizer_defaults"] = {
            k: v for k, v in opt.defaults.items() if isinstance(v, (bool, int, float, str))
        }
        info["optimizer_groups"] = [len(g["params"]) for g in opt.param_groups]
    return info


# ----------------------------------------------------------------------------- command line


def _write_result(path: Path, m: Measurement) -> None:
    path.write_text(m.model_dump_json() + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """``python -m validation.cuda --scenario FILE --result FILE [--dry-run]``."""
    ap = argparse.ArgumentParser(prog="python -m validation.cuda", description=__doc__)
    ap.add_argument("--scenario", required=True, type=Path, help="Scenario JSON file")
    ap.add_argument("--result", required=True, type=Path, help="where to write one JSON line")
    ap.add_argument("--dry-run", action="store_true", help="validate on the meta device")
    ap.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="cpu: smoke-run the same step pipeline on the CPU (memory figures are 0)",
    )
    args = ap.parse_args(argv)
    scenario = Scenario.model_validate_json(args.scenario.read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    if args.dry_run:
        try:
            info = check_scenario(scenario)
        except Exception as exc:
            _write_result(args.result, failure_measurement(scenario, _describe(exc)))
            return 1
        dry_fp = fingerprint(None, dry_run=True, dry_run_info=_jsonable(info))
        m = failure_measurement(
            scenario, "dry-run", fp=dry_fp, wall_s=round(time.perf_counter() - t0, 3)
        )
        _write_result(args.result, m)
        return 0
    try:
        m = run_scenario(scenario, device_type=args.device)
    except Exception as exc:
        fp: Fingerprint | None = None
        with contextlib.suppress(Exception):
            import torch  # noqa: TID251

            fp = fingerprint(torch)
        m = failure_measurement(
            scenario, _describe(exc), fp=fp, wall_s=round(time.perf_counter() - t0, 3)
        )
        _write_result(args.result, m)
        print(traceback.format_exc(), file=sys.stderr)
        return 1
    _write_result(args.result, m)
    return 0


def _describe(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    return f"{type(exc).__name__}: {exc}"[:2000] + where


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


if __name__ == "__main__":
    raise SystemExit(main())
