"""Published measured peaks as estimator requests (``validation/reference/``).

Every case of the reference file becomes a ``PublishedCase``: the measured value in bytes,
the kind of peak the source measured (``allocated`` = ``torch.cuda.max_memory_allocated``,
``reserved`` = ``max_memory_reserved``, ``device`` = NVML / nvidia-smi used memory), the
source's confidence, the GPU, and either an ``EstimateRequest`` that reproduces the run's
settings or the reason it cannot be expressed as one.

Rules of the mapping (each case's ``approximations`` lists what it had to assume):

- A case is expressed when every setting that the source says changes memory has a
  request field. It is *not expressible* when a memory-relevant setting has none (torch.compile,
  chunked cross-entropy at a 128k vocabulary, activation offloading, optimizer-in-backward,
  torchao NF4 tensors) or when the source does not say which peak it measured.
- Units follow each source: the seed's profiler and the HF guide print MiB labelled "MB"
  (``/ 1024 / 1024``), LitGPT prints decimal GB (``/ 1e9``: the bytes come from the quoted GB
  figure, not from the rounded ``measured_mib``), torchtune prints GiB (``/ 1024**3``).
- Optimizer names are transformers' ``OptimizerNames`` values; peft target names are the
  transformers module names of the same weights (LitGPT's fused ``query``/``value`` LoRA ->
  ``q_proj``/``v_proj``; GPT-NeoX's fused ``query_key_value``, which has the same trainable
  count); DeepSpeed cases carry the seed's DeepSpeed config, rebuilt from the case's
  ``extra_settings``.

``load_cases()`` reads the file (see ``reference_path``); ``case_to_published(raw)`` maps one.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vramcalc.specs import EstimateRequest, LoraOptions

__all__ = [
    "PublishedCase",
    "ReferenceMissing",
    "case_to_published",
    "cli_args",
    "load_cases",
    "measured_bytes",
    "metric_kind",
    "reference_path",
    "summarize_request",
]

MetricKind = Literal["allocated", "reserved", "device", "unknown"]
Confidence = Literal["high", "medium", "low"]

REPO = Path(__file__).resolve().parents[1]
REFERENCE_NAME = "published_measurements.json"
REFERENCE_DIR = Path(__file__).resolve().parent / "reference"
MIB = 2**20
GIB = 2**30

# GPU strings of the reference file -> vramcalc GPU catalog names (data/gpus.json).
_GPUS: tuple[tuple[str, str], ...] = (
    ("a100-sxm4-40gb", "a100-40gb"),
    ("a100 (80gb", "a100-80gb"),
    ("v100-sxm2 16gb", "v100-16gb"),
    ("rtx 4090", "rtx-4090"),
)


class ReferenceMissing(FileNotFoundError):
    """The reference file is not reachable from this checkout."""


@dataclass(frozen=True)
class PublishedCase:
    """One published measurement and the request that reproduces it (or why none can)."""

    id: str
    group: str
    model: str
    confidence: Confidence
    metric: MetricKind
    metric_text: str
    measured_bytes: int
    unit: str
    gpu: str | None
    gpu_text: str
    request: EstimateRequest | None
    reason: str | None = None
    approximations: tuple[str, ...] = field(default_factory=tuple)

    @property
    def expressible(self) -> bool:
        """Whether the case maps to a request (else ``reason`` says why not)."""
        return self.request is not None

    @property
    def settings(self) -> str:
        """A short summary of the settings (the request's, or the source's for the rest)."""
        if self.request is not None:
            return summarize_request(self.request)
        return "not expressible"


# ----------------------------------------------------------------------------- file


def reference_path() -> Path:
    """Locate ``published_measurements.json``.

    ``$VRAMCALC_REFERENCE`` (a file or a folder) when set, else the copy committed in this
    repository, ``validation/reference/`` (its README gives the sources), so a fresh clone
    needs nothing outside itself.

    Raises:
        ReferenceMissing: the file named by ``$VRAMCALC_REFERENCE`` or the committed copy
            does not exist.

    """
    env = os.environ.get("VRAMCALC_REFERENCE")
    if env:
        p = Path(env).expanduser()
        candidate = p / REFERENCE_NAME if p.is_dir() else p
    else:
        candidate = REFERENCE_DIR / REFERENCE_NAME
    if candidate.is_file():
        return candidate
    raise ReferenceMissing(
        f"{REFERENCE_NAME} not found at {candidate} "
        "(it is committed under validation/reference/; VRAMCALC_REFERENCE overrides the path)"
    )


def load_raw(path: Path | None = None) -> list[dict[str, Any]]:
    """Return the reference file's cases, as parsed JSON objects."""
    data = json.loads((path or reference_path()).read_text("utf-8"))
    if not isinstance(data, list):
        raise ValueError(f"{REFERENCE_NAME} must hold a JSON list of cases")
    return data


def load_cases(path: Path | None = None) -> list[PublishedCase]:
    """Every case of the reference file, mapped (in file order)."""
    return [case_to_published(raw) for raw in load_raw(path)]


# ----------------------------------------------------------------------------- metric, units


def metric_kind(metric_text: str) -> MetricKind:
    """Which of the three peaks a source's metric description measured.

    NVML / nvidia-smi used memory -> ``device``; ``max_memory_allocated`` -> ``allocated``;
    ``max_memory_reserved`` -> ``reserved``; torchtune's ``active_bytes.all.peak`` ->
    ``allocated`` (an active block is an allocated one, or one freed but awaiting a stream
    sync; without cross-stream frees the two peaks coincide). Anything else -> ``unknown``.
    """
    t = metric_text.lower()
    if "nvml" in t or "nvidia-smi" in t:
        return "device"
    if "max_memory_allocated" in t or "active_bytes" in t:
        return "allocated"
    if "max_memory_reserved" in t or "reserved_bytes" in t:
        return "reserved"
    return "unknown"


_GB_QUOTE = re.compile(r"([0-9]+(?:\.[0-9]+)?) GB \(1e9 bytes\) = ([0-9]+(?:\.[0-9]+)?) MiB")


def measured_bytes(raw: Mapping[str, Any]) -> tuple[int, str]:
    """Return the measured value in bytes and how it was converted from the source's unit.

    - ``/ 1e9`` (LitGPT's ``Memory used: X GB``): bytes = the quoted GB x 10**9, read from the
      notes (``measured_mib`` is that value rounded to 0.1 MiB; both are checked to agree).
    - ``/ 1024**3`` (torchtune's GiB) and MiB sources: bytes = ``measured_mib`` x 2**20.

    Raises:
        ValueError: a decimal-GB source whose notes lack the quoted figure, or disagree.

    """
    metric = str(raw["metric"])
    mib = float(raw["measured_mib"])
    if "1e9" in metric:
        m = _GB_QUOTE.search(str(raw.get("notes", "")))
        if m is None:
            raise ValueError(f"{raw['id']}: decimal-GB source without a quoted 'X GB' figure")
        gb, quoted_mib = float(m.group(1)), float(m.group(2))
        n = round(gb * 10**9)
        if abs(n / MIB - mib) > 0.06 or abs(quoted_mib - mib) > 1e-9:
            raise ValueError(f"{raw['id']}: {gb} GB is not {mib} MiB")
        return n, f"{m.group(1)} GB (10^9 B)"
    if "1024**3" in metric or "gib" in metric.lower():
        return round(mib * MIB), f"{mib / 1024:g} GiB"
    return round(mib * MIB), f"{mib:g} MiB"


def _gpu(text: str) -> str | None:
    t = text.lower()
    for needle, name in _GPUS:
        if needle in t:
            return name
    return None


# ----------------------------------------------------------------------------- mapping


_CATALOG_MODELS = {
    "openai-community/gpt2-medium": "gpt2-medium",
    "google-bert/bert-large-uncased": "bert-large-uncased",
    "meta-llama/Llama-2-7b-hf": "llama-2-7b",
    "meta-llama/Llama-2-13b-hf": "llama-2-13b",
    "meta-llama/Llama-2-70b-hf": "llama-2-70b",
    "microsoft/phi-1_5": "phi-1_5",
    "stabilityai/stablelm-base-alpha-3b": "stablelm-base-alpha-3b",
    "codellama/CodeLlama-34b-hf": "codellama-34b",
    "meta-llama/Llama-3.2-3B-Instruct": "llama-3.2-3b",
    "meta-llama/Llama-3.1-8B-Instruct": "llama-3.1-8b",
}

# Cases a request cannot express, with the reason (checked against the case's own fields in
# ``case_to_published``: the reason must name something the case really has).
_NOT_EXPRESSIBLE: dict[str, str] = {
    "tt-llama31-8b-full-4090": (
        "the metric is not stated (active, allocated or reserved), and optimizer-in-backward "
        "(no full gradient buffer), torch.compile and chunked cross-entropy have no request "
        "field"
    ),
    "tt-llama31-8b-lora-r8-4090": (
        "the metric is not stated (active, allocated or reserved), and torch.compile and "
        "chunked cross-entropy have no request field"
    ),
    "tt-llama31-8b-qlora-r8-4090": (
        "the metric is not stated, the base is a torchao NF4 tensor (not bitsandbytes), and "
        "torch.compile and chunked cross-entropy have no request field"
    ),
}


def _optimizer(text: str) -> tuple[str, list[str]]:
    """Return the transformers optimizer name for a case's ``optimizer`` text (and notes)."""
    t = text.lower()
    notes: list[str] = []
    if "paged_adamw_8bit" in t:
        return "paged_adamw_8bit", notes
    if "adamw_bnb_8bit" in t:
        return "adamw_bnb_8bit", notes
    if "adam8bit" in t:
        notes.append(
            "bnb.optim.Adam8bit as adamw_bnb_8bit (same 8-bit block-wise states; only the "
            "weight-decay rule differs)"
        )
        return "adamw_bnb_8bit", notes
    if "pagedadamw" in t and "32-bit" in t:
        return "paged_adamw_32bit", notes
    if "adafactor" in t:
        return "adafactor", notes
    if "adamw_hf" in t:
        notes.append(
            "adamw_hf (transformers <= 4.x AdamW: 2 fp32 states, a per-parameter loop) as "
            "adamw_torch (the same states; torch's CUDA default adds foreach temporaries "
            "during step())"
        )
        return "adamw_torch", notes
    if "adamw" in t:  # adamw_torch, torch.optim.AdamW (foreach default on CUDA)
        if "fused" in t:
            return "adamw_torch_fused", notes
        return "adamw_torch", notes
    raise ValueError(f"unrecognised optimizer text {text!r}")


def _lora_targets(model: str, targets: Sequence[str]) -> tuple[tuple[str, ...], list[str]]:
    """Return the transformers module names for a source's LoRA target names."""
    names = [t.lower() for t in targets]
    if names == ["query", "value"]:
        if model == "stablelm-base-alpha-3b":
            return ("query_key_value",), [
                "LitGPT's LoRA on the query and value slices of the fused QKV projection as PEFT "
                "LoRA on GPT-NeoX's fused query_key_value (identical trainable count: "
                "16 x 8 x (4096 + 3 x 4096) = 2,097,152)"
            ]
        return ("q_proj", "v_proj"), [
            "LitGPT's LoRA on the query and value slices of its fused QKV projection as PEFT "
            "LoRA on q_proj and v_proj (identical trainable count)"
        ]
    if names == ["q_proj", "v_proj"]:
        return ("q_proj", "v_proj"), []
    if names[:3] == ["q_proj", "v_proj", "output_proj"] and any("w1" in n for n in names):
        # torchtune: lora_attn_modules [q_proj, v_proj, output_proj] + apply_lora_to_mlp
        return ("q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), []
    raise ValueError(f"unrecognised LoRA targets {targets!r}")


def _deepspeed_config(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Rebuild the seed's DeepSpeed config from the case (``extra_settings`` and ``zero``).

    Source: the case's ``extra_settings.ds_common`` ("train_micro_batch_size_per_gpu=1,
    gradient_accumulation_steps=4, fp16 enabled (auto_cast True, dynamic loss scale,
    initial_scale_power 16); zero_optimization: contiguous_gradients, overlap_comm,
    reduce_scatter; no 'optimizer' block") and its bucket-size fields.
    """
    es = raw["extra_settings"]
    zero = raw["zero"]
    zo: dict[str, Any] = {
        "stage": int(zero["stage"]),
        "contiguous_gradients": True,
        "overlap_comm": True,
        "reduce_scatter": True,
    }
    for key in (
        "reduce_bucket_size",
        "allgather_bucket_size",
        "sub_group_size",
        "stage3_prefetch_bucket_size",
        "stage3_param_persistence_threshold",
        "stage3_max_live_parameters",
        "stage3_max_reuse_distance",
    ):
        if key in es:
            zo[key] = int(es[key])
    for key in ("offload_optimizer", "offload_param"):
        value = zero.get(key)
        if value and str(value).startswith("cpu"):
            zo[key] = {"device": "cpu", "pin_memory": "pin_memory" in str(value)}
    return {
        "train_micro_batch_size_per_gpu": int(raw["batch_size"]),
        "gradient_accumulation_steps": int(raw["grad_accum"]),
        "fp16": {"enabled": True, "auto_cast": True, "loss_scale": 0, "initial_scale_power": 16},
        "zero_optimization": zo,
        "zero_allow_untested_optimizer": True,
    }


def _request(raw: Mapping[str, Any], model: str) -> tuple[EstimateRequest, list[str]]:
    """Return the request of one expressible case and the approximations it needed."""
    notes: list[str] = []
    group = str(raw["group"])
    dtype_text = str(raw["dtype"]).lower()
    mp_text = str(raw["mixed_precision"]).lower()
    fields: dict[str, Any] = {
        "model": model,
        "batch_size": int(raw["batch_size"]),
        "seq_len": int(raw["seq_len"]),
        "grad_accum": int(raw["grad_accum"] or 1),
        "grad_ckpt": bool(raw["grad_checkpointing"]),
        "gpus": int(raw["n_gpus"]),
    }
    gpu = _gpu(str(raw["gpu"]))
    if gpu is not None:
        fields["gpu"] = gpu

    # precision: storage dtype and autocast
    if "deepspeed fp16" in mp_text:
        fields["mixed_precision"] = "fp16"  # fp32 model; DeepSpeed keeps fp16 copies + fp32 master
    elif "amp" in mp_text and "fp16" in mp_text:
        fields["mixed_precision"] = "fp16"
    elif "bf16" in mp_text and "pure" in mp_text:
        fields["dtype"] = "bf16"
    elif not (mp_text.startswith("no") and dtype_text.startswith("fp32")):
        raise ValueError(f"{raw['id']}: unrecognised precision {dtype_text!r} / {mp_text!r}")

    # attention
    attn_text = str(raw["attention"]).lower()
    fields["attn"] = "eager" if attn_text.startswith("eager") else "sdpa"

    # task, optimizer, PEFT, quantization
    if raw["task"] == "inference":
        fields["task"] = "inference"
        if group == "litgpt-resource-tables":
            # generate/base.py: max_new_tokens=50, the KV cache sized prompt + 50 (seq_len)
            fields["new_tokens"] = 50
            fields["prompt_len"] = int(raw["seq_len"]) - 50
        if "nf4" in dtype_text:
            fields["quant"] = "nf4"
            if "nf4-dq" not in dtype_text:
                notes.append(
                    "bnb.nf4 without double quantization; the request's nf4 cannot say "
                    "whether absmax scales are double-quantized (0.37 bit/weight apart)"
                )
    else:
        fields["optim"], opt_notes = _optimizer(str(raw["optimizer"]))
        notes += opt_notes
        peft = raw.get("peft")
        if peft:
            targets, t_notes = _lora_targets(model, peft["targets"])
            notes += t_notes
            opts = LoraOptions(
                r=int(peft["r"]),
                alpha=float(peft["alpha"]),
                dropout=float(raw["extra_settings"].get("lora_dropout", 0.0)),
                targets=targets,
            )
            if peft["method"] == "qlora":
                fields["qlora"] = opts
                if group == "litgpt-resource-tables":
                    if "dq" in str(peft.get("quant")):
                        notes.append(
                            "bnb.nf4-dq: the litgpt profile models bnb.nf4 (no double "
                            "quantization; 0.37 bit/weight more than the run's absmax)"
                        )
                elif "dq" not in str(peft.get("quant")):
                    notes.append(
                        "bnb.nf4 without double quantization; the request's QLoRA base is nf4 "
                        "(double quantization cannot be switched off: 0.37 bit/weight apart, "
                        "0.30 GB on Llama-2-7B by the source's own two rows)"
                    )
            else:
                fields["lora"] = opts

    # distributed: DeepSpeed (the seed) or FSDP (LitGPT multi-GPU)
    fsdp = raw.get("fsdp")
    if fsdp:
        strategy = str(fsdp.get("sharding_strategy", "FULL_SHARD")).split()[0].lower()
        fields["fsdp"] = strategy
        # Lightning's FSDPStrategy in 2023 (torch 2.1) is FSDP1: FullyShardedDataParallel
        fields["fsdp_version"] = 1
        fields["gpus"] = int(raw["n_gpus"])
        fields["fsdp_offload"] = bool(fsdp.get("cpu_offload"))
        fields["fsdp_limit_all_gathers"] = bool(fsdp.get("limit_all_gathers", True))
        if "every" in str(fsdp.get("activation_checkpointing", "")):
            fields["grad_ckpt"] = True
        if fields.get("lora") is not None or fields.get("qlora") is not None:
            # FSDPStrategy(auto_wrap_policy={Block}) with Lightning's use_orig_params=True:
            # the LoRA matrices share their Block's flat parameter (litgpt 8641822
            # finetune/lora.py; lightning fabric/strategies/fsdp.py)
            fields["fsdp_lora_in_blocks"] = True
        notes.append(
            "FSDP1 wrapping each Block as LitGPT's FSDPStrategy does (LoRA inside the Block's "
            "flat parameter; gradient accumulation under no_backward_sync, i.e. FSDP1 "
            "no_sync); the rank-0 peak is estimated"
        )
    zero = raw.get("zero")
    if zero:
        fields["zero"] = int(zero["stage"])
        if str(zero.get("offload_optimizer") or "").startswith("cpu"):
            fields["offload_optimizer"] = "cpu"
        if str(zero.get("offload_param") or "").startswith("cpu"):
            fields["offload_param"] = "cpu"
        fields["deepspeed"] = _deepspeed_config(raw)
    # source-specific settings the request cannot carry but that change the peak little
    if group == "litgpt-resource-tables" and raw["task"] == "train":
        # issue 10: LitGPT's own model code, chunked cross-entropy, adapters in bf16, its
        # QLoRA load path and peak counter are the litgpt framework profile
        fields["framework"] = "litgpt"
        notes.append(
            "framework litgpt: LitGPT's model code, chunked cross-entropy "
            "(lm_head_chunk_size=128), LoRA adapters in bf16, BitsandbytesPrecision "
            "(vramcalc/frameworks/litgpt.py)"
        )
    if group == "litgpt-resource-tables" and raw["task"] == "inference":
        notes.append(
            "LitGPT's generate/base.py (its own model code, a static KV cache of prompt + 50 "
            "tokens allocated up front, all prompt positions' logits) as transformers "
            "generate (DynamicCache, last-position logits): prompt 6 tokens ('Hello, my name "
            "is' + BOS) + 50 new; the two differ by under 1 MiB here"
        )
    if group == "torchtune":
        # issue 10: torchtune's recipes are the torchtune framework profile; the table's
        # flags are request fields now (vramcalc/frameworks/torchtune.py)
        extra = raw["extra_settings"]
        fields["framework"] = "torchtune"
        fields["packing"] = "packed" in str(extra.get("dataset", ""))
        chunked = "CEWithChunkedOutputLoss" in str(extra.get("loss", ""))
        fields["loss"] = "chunked" if chunked else "full"
        fields["compile"] = bool(extra.get("compile"))
        fields["activation_offload"] = bool(extra.get("activation_offloading"))
        fields["optimizer_in_backward"] = bool(extra.get("optimizer_in_bwd"))
        notes.append(
            "framework torchtune: torchtune's own Llama code (vramcalc/frameworks/torchtune.py) "
            "on packed 4096-token samples (flex attention, a flash-like kernel; sdpa assumed)"
        )
        if fields["compile"]:
            notes.append(
                "torch.compile: the compiled chunked cross-entropy as the torchtune profile "
                "models it (16-bit chunks and per-row statistics saved, no fp32 "
                "log-softmax); the compiled layers as eager (an upper bound)"
            )
        if raw.get("peft") and raw["peft"].get("method") == "qlora":
            notes.append(
                "torchao NF4 (block 64 absmax quantized per 256 blocks) as the request's nf4 "
                "base (bitsandbytes nf4 with double quantization: the same storage widths)"
            )
    if group == "hf-transformers-docs" and model == "bert-large-uncased":
        notes.append(
            "BertForSequenceClassification (2 labels) as the catalog's bert-large-uncased "
            "(the 2,050-parameter head is left out)"
        )
    if gpu is None:
        notes.append("GPU not stated: the engine's default GPU-side constants are used")
    if "inferred" in attn_text:
        notes.append("attention implementation inferred by the reference, not printed")
    return EstimateRequest(**fields), notes


def case_to_published(raw: Mapping[str, Any]) -> PublishedCase:
    """Map one reference case to a ``PublishedCase``.

    Raises:
        ValueError: a case whose free-text settings match no rule (a new kind of case).

    """
    cid = str(raw["id"])
    metric_text = str(raw["metric"])
    kind = metric_kind(metric_text)
    n_bytes, unit = measured_bytes(raw)
    gpu_text = str(raw["gpu"])
    common: dict[str, Any] = {
        "id": cid,
        "group": str(raw["group"]),
        "model": str(raw["model"]),
        "confidence": raw["confidence"],
        "metric": kind,
        "metric_text": metric_text,
        "measured_bytes": n_bytes,
        "unit": unit,
        "gpu": _gpu(gpu_text),
        "gpu_text": gpu_text,
    }
    model = _CATALOG_MODELS.get(str(raw["model"]))
    reason: str | None = _NOT_EXPRESSIBLE.get(cid)
    if reason is None and model is None:
        reason = f"model {raw['model']} is not in the vramcalc catalog"
    if reason is None and kind == "unknown":
        reason = "the source does not say which peak it measured"
    if reason is not None:
        return PublishedCase(**common, request=None, reason=reason)
    assert model is not None
    request, notes = _request(raw, model)
    return PublishedCase(**common, request=request, approximations=tuple(notes))


# ----------------------------------------------------------------------------- display


def summarize_request(req: EstimateRequest) -> str:
    """Summarize a request's memory-relevant settings in one line."""
    parts: list[str] = []
    if req.task.value == "inference":
        parts.append("infer")
    prec = req.dtype.value if req.mixed_precision.value == "no" else f"amp-{req.mixed_precision}"
    parts.append(prec)
    if req.quant is not None:
        parts.append(req.quant.value)
    for name in ("lora", "qlora"):
        opts: LoraOptions | None = getattr(req, name)
        if opts is not None:
            tg = "+".join(opts.targets) if opts.targets else "default"
            parts.append(f"{name} r{opts.r} {tg}")
    if req.task.value != "inference":
        parts.append(req.optim)
    shape = f"b{req.batch_size} s{req.seq_len}"
    if req.task.value == "inference" and req.prompt_len:
        shape = f"b{req.batch_size} p{req.prompt_len}+{req.new_tokens}"
    if req.grad_accum > 1:
        shape += f" ga{req.grad_accum}"
    parts.append(shape)
    if req.grad_ckpt:
        parts.append("ckpt")
    parts.append(req.attn.value if req.attn else "attn-default")
    if req.zero:
        z = f"zero{int(req.zero)}"
        if req.offload_optimizer.value != "none":
            z += f" off-opt {req.offload_optimizer}"
        if req.offload_param.value != "none":
            z += f" off-param {req.offload_param}"
        parts.append(z)
    if req.gpus * req.nodes > 1:
        parts.append(f"{req.gpus * req.nodes} GPUs")
    return ", ".join(parts)


def cli_args(req: EstimateRequest) -> list[str]:
    """Return the ``vramcalc`` command-line arguments of an inference request.

    Raises:
        ValueError: a request that uses fields this renderer does not cover (training).

    """
    if req.task.value != "inference" or not isinstance(req.model, str):
        raise ValueError("cli_args covers inference requests on catalog models")
    args = [req.model, "--task", "infer", "--dtype", req.dtype.value, "-b", str(req.batch_size)]
    if req.prompt_len:
        args += ["--prompt-len", str(req.prompt_len)]
    args += ["--new-tokens", str(req.new_tokens)]
    if req.attn is not None:
        args += ["--attn", req.attn.value]
    if req.quant is not None:
        args += ["--quant", req.quant.value]
    if req.weights is not None:
        args += ["--weights", req.weights.value]
    if req.gpu:
        args += ["--gpu", req.gpu]
    return args
