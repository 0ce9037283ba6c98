"""The prepared GPU measurement matrix: one command, a few minutes on one H200.

::

    python -m validation.matrix --out-dir $OUT [--budget-s 420] [--only PATTERN] [--dry-run]
    python -m validation.matrix --out validation/measurements/cuda-h200-2026-11-28.jsonl

Cases run in priority order, so that a budget cut-off leaves the most valuable complete
lines: (1) small configs of several families, for comparing the fake-cuda trace with real
``max_memory_allocated``; (2) gpt2-medium fp32 AdamW b1 s512 (the MEMORY_MODEL figures) over
attention kernels, optimizer implementations, checkpointing, AMP and the bitsandbytes
optimizers; (3) Llama-2-7B-shaped LoRA/QLoRA as in the LitGPT reference cases, and
bert-large b4 s512 as in the HF performance guide; (4) DeepSpeed ZeRO 1/2/3 (+offload) of
gpt2-medium on one GPU. Every case runs in a fresh process with a clean CUDA context (a
fork of a parent that imported torch and transformers but never touched CUDA, or a fresh
interpreter with ``--spawn``; DeepSpeed cases through DeepSpeed's launcher) under a
per-case timeout, and appends one JSON line (``validation.records.Measurement``), failures
included (``error`` set). A case whose estimated time no longer fits the budget is skipped
and listed.

``--dry-run`` needs no GPU: each case is resolved, built on the meta device, wrapped with
PEFT and given its optimizer class in its own forked process; DeepSpeed cases build their
config through ``validation/deepspeed_run.py --print-config`` in a subprocess; every line
is validated against the JSONL schema; the plan with estimated times is printed.

``--wheels DIR`` installs carried wheels (``pip --no-index --target``) before anything else
imports pydantic; ``--prepare-wheels DIR`` (run where PyPI is reachable) downloads them.
This module imports only the standard library at import time for that reason.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import fnmatch
import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from validation.records import Measurement

__all__ = [
    "Case",
    "cases",
    "compare",
    "compare_rows",
    "default_out_name",
    "main",
    "plan_table",
    "prepare_wheels",
    "run_matrix",
    "select",
]

REPO = Path(__file__).resolve().parents[1]
SITE = Path("/tmp/vramcalc_site")
"""Where ``--wheels`` installs carried packages on the GPU machine."""

# ----------------------------------------------------------------------------- model configs
# HF config.json objects (random init from config; never the hub). Sources: the model cards'
# config.json on the Hugging Face hub, copied by hand.

GPT2_MEDIUM: dict[str, Any] = {
    "model_type": "gpt2",
    "architectures": ["GPT2LMHeadModel"],
    "n_layer": 24,
    "n_embd": 1024,
    "n_head": 16,
    "n_positions": 1024,
    "vocab_size": 50257,
}
"""openai-community/gpt2-medium config.json (354,823,168 parameters, tied head)."""

LLAMA2_7B: dict[str, Any] = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-05,
    "tie_word_embeddings": False,
}
"""meta-llama/Llama-2-7b-hf config.json (6,738,415,616 parameters)."""

BERT_LARGE_CLS: dict[str, Any] = {
    "model_type": "bert",
    "architectures": ["BertForSequenceClassification"],
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "vocab_size": 30522,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
}
"""google-bert/bert-large-uncased config.json with the 2-label classification head that the
HF "Efficient training on a single GPU" guide measured (``hf-bertL-*`` reference cases)."""


def _small(model_type: str, arch: str, **cfg: Any) -> dict[str, Any]:
    return {"model_type": model_type, "architectures": [arch], **cfg}


# Small configs of several families: cheap to trace on CPU, large enough that memory
# figures are far above allocator granularity.
SMALL: dict[str, dict[str, Any]] = {
    "gpt2": _small(
        "gpt2", "GPT2LMHeadModel", n_layer=4, n_embd=256, n_head=4, n_positions=1024,
        vocab_size=50257,
    ),
    "llama": _small(
        "llama", "LlamaForCausalLM", hidden_size=512, intermediate_size=1376,
        num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=8, vocab_size=32000,
        max_position_embeddings=2048, tie_word_embeddings=False,
    ),
    "mistral": _small(
        "mistral", "MistralForCausalLM", hidden_size=512, intermediate_size=1792,
        num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2, vocab_size=32000,
        max_position_embeddings=2048, sliding_window=None,
    ),
    "qwen2": _small(
        "qwen2", "Qwen2ForCausalLM", hidden_size=512, intermediate_size=1376,
        num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2, vocab_size=151936,
        max_position_embeddings=2048, tie_word_embeddings=True,
    ),
    "phi": _small(
        "phi", "PhiForCausalLM", hidden_size=512, intermediate_size=2048,
        num_hidden_layers=4, num_attention_heads=8, vocab_size=51200,
        partial_rotary_factor=0.5, max_position_embeddings=2048,
    ),
    "gemma": _small(
        "gemma", "GemmaForCausalLM", hidden_size=512, intermediate_size=2048,
        num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=1, head_dim=64,
        vocab_size=256000, max_position_embeddings=2048,
    ),
    "opt": _small(
        "opt", "OPTForCausalLM", hidden_size=512, ffn_dim=2048, num_hidden_layers=4,
        num_attention_heads=8, vocab_size=50272, word_embed_proj_dim=512,
        max_position_embeddings=2048,
    ),
    "bert": _small(
        "bert", "BertForSequenceClassification", hidden_size=512, num_hidden_layers=4,
        num_attention_heads=8, intermediate_size=2048, vocab_size=30522,
        max_position_embeddings=512,
    ),
}  # fmt: skip


# ----------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    """One row of the matrix: a scenario, how it is launched, its priority and time."""

    group: int
    scenario: dict[str, Any]
    est_s: float
    kind: str = "cuda"  # "cuda" (validation.cuda) or "deepspeed" (validation.deepspeed_run)
    reference: str | None = None  # id in validation/reference/published_measurements.json

    @property
    def id(self) -> str:
        """The scenario id."""
        return str(self.scenario["id"])


def _sc(
    sid: str, model: dict[str, Any], *, steps: int = 2, impl: str = "default", **request: Any
) -> dict[str, Any]:
    return {"id": sid, "steps": steps, "optim_impl": impl, "request": {"model": model, **request}}


def _group1() -> list[Case]:
    s = SMALL
    rows = [
        _sc("cmp-gpt2-fp32-adamw-sdpa-b2s256", s["gpt2"], batch_size=2, seq_len=256),
        _sc("cmp-gpt2-fp32-adamw-eager-b2s256", s["gpt2"], batch_size=2, seq_len=256,
            attn="eager"),
        _sc("cmp-gpt2-fp32-adamw-forloop-ckpt-b2s256", s["gpt2"], batch_size=2, seq_len=256,
            grad_ckpt=True, impl="for-loop"),
        _sc("cmp-llama-bf16-adamw-fused-b2s512", s["llama"], batch_size=2, seq_len=512,
            dtype="bf16", optim="adamw_torch_fused"),
        _sc("cmp-llama-amp-bf16-ckpt-flash-b2s512", s["llama"], batch_size=2, seq_len=512,
            mixed_precision="bf16", grad_ckpt=True, attn="flash_attention_2"),
        _sc("cmp-mistral-fp32-lora-r16-b2s512", s["mistral"], batch_size=2, seq_len=512,
            lora={"r": 16, "alpha": 32}),
        _sc("cmp-qwen2-amp-fp16-adafactor-b2s256", s["qwen2"], batch_size=2, seq_len=256,
            mixed_precision="fp16", optim="adafactor"),
        _sc("cmp-phi-fp32-sgd-eager-b2s256", s["phi"], batch_size=2, seq_len=256, optim="sgd",
            attn="eager"),
        _sc("cmp-gemma-bf16-lora-ckpt-b1s512", s["gemma"], seq_len=512, dtype="bf16",
            lora={"r": 8}, grad_ckpt=True),
        _sc("cmp-opt-fp32-adamw-b2s256", s["opt"], batch_size=2, seq_len=256),
        _sc("cmp-bert-fp32-adamw-b4s256", s["bert"], batch_size=4, seq_len=256),
        _sc("cmp-llama-bf16-qlora-nf4-b2s512", s["llama"], batch_size=2, seq_len=512,
            dtype="bf16", qlora={"r": 8, "alpha": 16}, optim="paged_adamw_32bit"),
    ]  # fmt: skip
    return [Case(1, r, 3.0) for r in rows]


def _group2() -> list[Case]:
    m = GPT2_MEDIUM
    base: dict[str, Any] = {"batch_size": 1, "seq_len": 512}
    amp16: dict[str, Any] = {"mixed_precision": "fp16", "grad_ckpt": True}
    rows: list[tuple[dict[str, Any], str | None]] = [
        (_sc("gpt2m-fp32-adamw-sdpa-b1s512", m, **base), "seed-gpt2m-baseline-fp32-bs1-run1"),
        (_sc("gpt2m-fp32-adamw-eager-b1s512", m, attn="eager", **base), None),
        (_sc("gpt2m-fp32-adamw-flash-b1s512", m, attn="flash_attention_2", **base), None),
        (_sc("gpt2m-fp32-adamw-fused-b1s512", m, optim="adamw_torch_fused", **base), None),
        (_sc("gpt2m-fp32-adamw-forloop-b1s512", m, impl="for-loop", **base), None),
        (_sc("gpt2m-fp32-adamw-ckpt-b1s512", m, grad_ckpt=True, **base), None),
        (_sc("gpt2m-amp-fp16-adamw-b1s512", m, mixed_precision="fp16", **base), None),
        (_sc("gpt2m-amp-bf16-adamw-b1s512", m, mixed_precision="bf16", **base), None),
        (_sc("gpt2m-amp-bf16-adamw-flash-b1s512", m, mixed_precision="bf16",
             attn="flash_attention_2", **base), None),
        (_sc("gpt2m-bf16-adamw-b1s512", m, dtype="bf16", **base), None),
        (_sc("gpt2m-fp32-adamw-ckpt-ga4-b1s512", m, grad_ckpt=True, grad_accum=4, **base),
         "seed-gpt2m-gc-ga4-fp32-bs1"),
        (_sc("gpt2m-amp-fp16-adamw-ckpt-ga4-b1s512", m, grad_accum=4, **amp16, **base),
         "seed-gpt2m-gc-ga4-fp16amp-bs1"),
        (_sc("gpt2m-fp32-adafactor-b1s512", m, optim="adafactor", **base), None),
        (_sc("gpt2m-amp-fp16-ckpt-adafactor-b1s512", m, optim="adafactor", **amp16, **base),
         "seed-gpt2m-optbench-adafactor-fp16-gc"),
        (_sc("gpt2m-amp-fp16-ckpt-adamw_bnb_8bit-b1s512", m, optim="adamw_bnb_8bit", **amp16,
             **base), "seed-gpt2m-optbench-adamw-bnb-8bit-fp16-gc"),
        (_sc("gpt2m-amp-fp16-ckpt-paged_adamw_8bit-b1s512", m, optim="paged_adamw_8bit",
             **amp16, **base), "seed-gpt2m-optbench-paged-adamw-8bit-fp16-gc"),
        (_sc("gpt2m-fp32-adamw_bnb_8bit-b1s512", m, optim="adamw_bnb_8bit", **base), None),
    ]  # fmt: skip
    return [Case(2, r, 4.0, reference=ref) for r, ref in rows]


def _group3() -> list[Case]:
    lora = {"r": 8, "alpha": 16, "dropout": 0.05, "targets": ["q_proj", "v_proj"]}
    llama: dict[str, Any] = {"seq_len": 1304, "dtype": "bf16"}
    bert: dict[str, Any] = {"batch_size": 4, "seq_len": 512}
    return [
        Case(3, _sc("llama2-7b-bf16-lora-r8-b1s1304", LLAMA2_7B, lora=lora, **llama), 20.0,
             reference="litgpt-rt-llama2-7b-lora-mb1"),
        Case(3, _sc("llama2-7b-qlora-nf4dq-r8-pagedadamw32-b1s1304", LLAMA2_7B, qlora=lora,
                    optim="paged_adamw_32bit", **llama), 25.0,
             reference="litgpt-rt-llama2-7b-qlora-nf4dq-mb1"),
        Case(3, _sc("bert-large-cls-fp32-adamw-b4s512", BERT_LARGE_CLS, **bert), 6.0,
             reference="hf-bertL-bs4-fp32-adamw"),
        Case(3, _sc("bert-large-cls-amp-fp16-adamw-b4s512", BERT_LARGE_CLS,
                    mixed_precision="fp16", **bert), 6.0, reference="hf-bertL-bs4-fp16-adamw"),
        Case(3, _sc("bert-large-cls-fp32-adafactor-b4s512", BERT_LARGE_CLS, optim="adafactor",
                    **bert), 6.0, reference="hf-bertL-bs4-fp32-adafactor"),
        Case(3, _sc("bert-large-cls-fp32-adamw_bnb_8bit-b4s512", BERT_LARGE_CLS,
                    optim="adamw_bnb_8bit", **bert), 6.0, reference="hf-bertL-bs4-fp32-adam8bit"),
        Case(3, _sc("bert-large-cls-fp32-adamw-ckpt-ga4-b1s512", BERT_LARGE_CLS, batch_size=1,
                    seq_len=512, grad_accum=4, grad_ckpt=True), 6.0,
             reference="hf-bertL-bs1-ga4-gc-fp32-adamw"),
        Case(3, _sc("llama2-7b-bf16-lora-r8-b2s1304", LLAMA2_7B, lora=lora, batch_size=2,
                    **llama), 20.0, reference="litgpt-rt-llama2-7b-lora-mb2"),
    ]  # fmt: skip


def _seed_deepspeed(stage: int, offload_optimizer: bool, offload_param: bool) -> dict[str, Any]:
    """Return the DeepSpeed config of the seed's gpt2-medium runs (``seed-gpt2m-dsbench-*``).

    Source: validation/reference/published_measurements.json, ``extra_settings.ds_common``:
    micro-batch 1, accumulation 4, fp16 with auto_cast and dynamic loss scale (initial scale
    power 16), contiguous gradients, overlapped communication, reduce-scatter, 2e8-element
    reduce and all-gather buckets, no optimizer block (the Trainer's AdamW is the client).
    """
    zero: dict[str, Any] = {
        "stage": stage,
        "contiguous_gradients": True,
        "overlap_comm": True,
        "reduce_scatter": True,
        "reduce_bucket_size": 200_000_000,
        "allgather_bucket_size": 200_000_000,
    }
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 4,
        "fp16": {"enabled": True, "auto_cast": True, "loss_scale": 0, "initial_scale_power": 16},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
    }


def _group4() -> list[Case]:
    m = GPT2_MEDIUM
    ds: dict[str, Any] = {"batch_size": 1, "seq_len": 512, "mixed_precision": "fp16"}
    seed: dict[str, Any] = {"grad_ckpt": True, "grad_accum": 4, **ds}  # the seed's runs
    rows: list[tuple[dict[str, Any], float, str | None]] = [
        (_sc("ds-gpt2m-zero1-fp16-ckpt-ga4-b1s512", m, zero=1,
             deepspeed=_seed_deepspeed(1, False, False), **seed), 35.0,
         "seed-gpt2m-dsbench-zero1"),
        (_sc("ds-gpt2m-zero2-offloadopt-fp16-ckpt-ga4-b1s512", m, zero=2,
             offload_optimizer="cpu", deepspeed=_seed_deepspeed(2, True, False), **seed), 45.0,
         "seed-gpt2m-dsbench-zero2-offload-opt"),
        (_sc("ds-gpt2m-zero3-offloadall-fp16-ckpt-ga4-b1s512", m, zero=3,
             offload_optimizer="cpu", offload_param="cpu", deepspeed=_seed_deepspeed(3, True, True),
             **seed), 50.0, "seed-gpt2m-dsbench-zero3-full-offload"),
        (_sc("ds-gpt2m-zero2-fp16-b1s512", m, zero=2, **ds), 35.0, None),
        (_sc("ds-gpt2m-zero3-fp16-b1s512", m, zero=3, **ds), 40.0, None),
    ]  # fmt: skip
    return [Case(4, r, est, kind="deepspeed", reference=ref) for r, est, ref in rows]


MIXTRAL_SMALL: dict[str, Any] = {
    "model_type": "mixtral", "hidden_size": 256, "intermediate_size": 512,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "num_local_experts": 4, "num_experts_per_tok": 2, "vocab_size": 16000,
    "max_position_embeddings": 512, "sliding_window": None, "tie_word_embeddings": False,
}  # fmt: skip
"""The small Mixtral of the fake-CUDA grid (``mixtral-*`` in trace-grid.jsonl)."""


def _group1_more() -> list[Case]:
    """Return the generation and MoE cases: fake-CUDA generate traces and a small Mixtral.

    The generate cases reuse the exact requests of ``measurements/trace-generate.jsonl`` (so
    tracer and GPU can be compared line by line), plus two 7B-class HF ``generate`` runs.
    On a real GPU transformers may take its grouped-GEMM MoE path, which the CPU tracer
    cannot (it falls back to the per-expert loop); the Mixtral cases measure that difference.
    """
    rows: list[Case] = []
    path = REPO / "validation" / "measurements" / "trace-generate.jsonl"
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        req = {k: v for k, v in rec["scenario"]["request"].items() if v is not None}
        sc = {"id": f"cmp-gen-{rec['scenario']['id']}", "steps": 1, "optim_impl": "default",
              "request": req}  # fmt: skip
        rows.append(Case(1, sc, 4.0))
    gen: dict[str, Any] = {"task": "inference", "dtype": "bf16", "batch_size": 1, "seq_len": 2048}
    rows += [
        Case(1, _sc("gen-llama2-7b-bf16-b1-p2048-n128", LLAMA2_7B, steps=1, prompt_len=2048,
                    new_tokens=128, **gen), 20.0),
        Case(1, _sc("gen-llama2-7b-bf16-b8-p1024-n256", LLAMA2_7B, steps=1, prompt_len=1024,
                    new_tokens=256, **(gen | {"batch_size": 8, "seq_len": 1024})), 25.0),
        Case(1, _sc("cmp-mixtral-bf16-adamw-b2s256", MIXTRAL_SMALL, batch_size=2, seq_len=256,
                    dtype="bf16"), 3.0),
        Case(1, _sc("cmp-mixtral-bf16-lora-ckpt-b2s256", MIXTRAL_SMALL, batch_size=2,
                    seq_len=256, dtype="bf16", grad_ckpt=True,
                    lora={"r": 8, "alpha": 16, "targets": ["q_proj", "v_proj"]}), 3.0),
    ]  # fmt: skip
    return rows


def cases() -> list[Case]:
    """Every case of the matrix, in priority order."""
    return [*_group1(), *_group1_more(), *_group2(), *_group3(), *_group4()]


def select(all_cases: Sequence[Case], only: str | None) -> list[Case]:
    """Cases whose id matches one of the comma-separated glob patterns (all if ``None``)."""
    if not only:
        return list(all_cases)
    pats = [p.strip() for p in only.split(",") if p.strip()]
    return [c for c in all_cases if any(fnmatch.fnmatchcase(c.id, p) for p in pats)]


def plan_table(selected: Sequence[Case], budget_s: float, *, overhead_s: float = 0.0) -> str:
    """Render the plan: order, group, launcher, estimated and cumulative seconds, id."""
    lines = [f"{'#':>3} {'grp':>3} {'kind':<9} {'est_s':>6} {'cum_s':>7}  id"]
    cum = overhead_s
    for i, c in enumerate(selected, 1):
        cum += c.est_s
        flag = "" if cum <= budget_s else "  (over budget: skipped if estimates hold)"
        lines.append(f"{i:>3} {c.group:>3} {c.kind:<9} {c.est_s:>6.0f} {cum:>7.0f}  {c.id}{flag}")
    lines.append(
        f"{len(selected)} cases, estimated {cum:.0f} s against a budget of {budget_s:.0f} s"
    )
    return "\n".join(lines)


def default_out_name(gpu_name: str, date: _dt.date | None = None) -> str:
    """``cuda-<gpu>-<date>.jsonl`` from a device name ('NVIDIA H200' -> 'cuda-h200-...')."""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower().replace("nvidia", "")).strip("-")
    day = (date or _dt.datetime.now(_dt.UTC).date()).isoformat()
    return f"cuda-{slug or 'gpu'}-{day}.jsonl"


# ----------------------------------------------------------------------------- wheels


PINNED_WHEELS = ("bitsandbytes==0.50.0", "hjson==3.1.0")
PARITY_PACKAGES = (
    "pydantic",
    "pydantic_core",
    "annotated-types",
    "typing-inspection",
    "typing_extensions",
    "transformers",
    "peft",
)
BNB_KEEP = re.compile(r"libbitsandbytes_(cpu|cuda13\d)\.so$")


def prepare_wheels(dest: Path, *, python_version: str = "3.12") -> list[Path]:
    """Download the wheels the GPU image lacks (run where PyPI is reachable).

    pydantic (the records), transformers and peft at this checkout's versions (parity with
    the CPU tracer), bitsandbytes slimmed to its CPU and CUDA 13 libraries (the image's torch
    is a cu130 build; the full wheel is 40 MB), and DeepSpeed built into a pure wheel.
    """
    dest.mkdir(parents=True, exist_ok=True)
    pins = list(PINNED_WHEELS)
    for name in PARITY_PACKAGES:
        pins.append(f"{name}=={importlib.metadata.version(name)}")
    platforms = ["manylinux_2_28_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
                 "manylinux2014_x86_64"]  # fmt: skip
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps",
           "--only-binary=:all:", "--python-version", python_version,
           "--implementation", "cp", "-d", str(dest)]  # fmt: skip
    for p in platforms:
        cmd += ["--platform", p]
    subprocess.run([*cmd, *pins], check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(dest), f"deepspeed=={importlib.metadata.version('deepspeed')}"],
        check=True,
    )  # fmt: skip
    for whl in dest.glob("bitsandbytes-*.whl"):
        _slim_wheel(whl, keep=BNB_KEEP, drop=re.compile(r"libbitsandbytes_.*\.so$"))
    return sorted(dest.glob("*.whl"))


def _slim_wheel(whl: Path, *, keep: re.Pattern[str], drop: re.Pattern[str]) -> None:
    """Rewrite a wheel without the members ``drop`` matches unless ``keep`` matches too."""
    tmp = whl.with_suffix(".tmp")
    with zipfile.ZipFile(whl) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
        gone = {n for n in zin.namelist() if drop.search(n) and not keep.search(n)}
        for item in zin.infolist():
            if item.filename in gone:
                continue
            data = zin.read(item.filename)
            if item.filename.endswith(".dist-info/RECORD"):
                rows = data.decode().splitlines()
                data = (
                    "\n".join(r for r in rows if r.split(",", 1)[0] not in gone) + "\n"
                ).encode()
            zout.writestr(item, data)
    tmp.replace(whl)


def install_wheels(src: Path, target: Path = SITE) -> list[str]:
    """Install carried wheels into ``target`` and put it first on this process's path.

    Children inherit it through ``PYTHONPATH``. A package that then fails to import is
    removed again (so the image's own copy is used) and named in the returned notes.
    """
    wheels = sorted(str(p) for p in src.glob("*.whl"))
    notes: list[str] = []
    if not wheels:
        return [f"no wheels in {src}"]
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
         "--no-cache-dir", "--upgrade", "--target", str(target), *wheels],
        check=True,
    )  # fmt: skip
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(target), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    for module, dist in (("transformers", "transformers"), ("peft", "peft")):
        probe = subprocess.run(
            [sys.executable, "-c", f"import {module}"], capture_output=True, text=True
        )
        if probe.returncode != 0:
            for p in target.glob(f"{dist}*"):
                shutil.rmtree(p, ignore_errors=True)
            notes.append(f"carried {dist} failed to import, image copy used: "
                         f"{probe.stderr.strip().splitlines()[-1:]}")  # fmt: skip
    return notes


# ----------------------------------------------------------------------------- running


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, n: int = 4000) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(encoding="utf-8", errors="replace")[-n:]
    return ""


def _fork_child(
    scenario_file: str, result_file: str, log_file: str, dry_run: bool, device: str
) -> None:
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    from validation import cuda

    args = ["--scenario", scenario_file, "--result", result_file, "--device", device]
    code = cuda.main([*args, "--dry-run"] if dry_run else args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _preimport(dry_run: bool) -> bool:
    """Import torch/transformers/peft once in the parent so forks start fast.

    Returns False (and nothing is forked) when CUDA was initialized here, since a CUDA
    context does not survive a fork.
    """
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # fork-safe is_available
    try:
        import torch  # noqa: TID251
        import transformers

        importlib.import_module("peft")
        for mod in ("gpt2", "llama", "mistral", "qwen2", "phi", "gemma", "opt", "bert"):
            importlib.import_module(f"transformers.models.{mod}.modeling_{mod}")
        transformers.AutoConfig  # noqa: B018 - resolve the lazy attribute
    except Exception as exc:
        print(f"no fork: pre-import failed: {type(exc).__name__}: {exc}"[:300], flush=True)
        return False
    if torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        print("no fork: CUDA was initialized while importing", flush=True)
        return False
    if dry_run or not torch.cuda.is_available():
        return True
    ok = _fork_probe()
    if not ok:
        print("no fork: a forked child could not create a CUDA context", flush=True)
    return ok


def _probe_child() -> None:
    import torch  # noqa: TID251

    torch.ones(1, device="cuda").add_(1)
    torch.cuda.synchronize()
    os._exit(0)


def _fork_probe() -> bool:
    """Check that a forked child can create a CUDA context (nothing here touched CUDA)."""
    import multiprocessing as mp

    proc = mp.get_context("fork").Process(target=_probe_child)
    proc.start()
    proc.join(120)
    if proc.is_alive():
        proc.kill()
        proc.join(10)
        return False
    return proc.exitcode == 0


def _run_case_fork(
    case: Case, work: Path, timeout_s: float, dry_run: bool, device: str = "cuda"
) -> tuple[str | None, str, int | None]:
    import multiprocessing as mp

    sc = work / f"{case.id}.scenario.json"
    res = work / f"{case.id}.result.json"
    log = work / f"{case.id}.log"
    sc.write_text(json.dumps(case.scenario), encoding="utf-8")
    ctx = mp.get_context("fork")
    proc = ctx.Process(target=_fork_child, args=(str(sc), str(res), str(log), dry_run, device))
    proc.start()
    proc.join(timeout_s)
    if proc.is_alive():
        proc.kill()
        proc.join(10)
        return None, f"timeout after {timeout_s:.0f} s\n{_tail(log)}", None
    line = res.read_text(encoding="utf-8").strip() if res.exists() else None
    return line, _tail(log), proc.exitcode


def _run_case_subprocess(
    case: Case, work: Path, timeout_s: float, dry_run: bool, device: str = "cuda"
) -> tuple[str | None, str, int | None]:
    sc = work / f"{case.id}.scenario.json"
    res = work / f"{case.id}.result.json"
    log = work / f"{case.id}.log"
    sc.write_text(json.dumps(case.scenario), encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("PYTHONUNBUFFERED", "1")
    if case.kind == "deepspeed":
        from validation.deepspeed_run import launch_command

        if dry_run:
            cmd = [sys.executable, str(REPO / "validation" / "deepspeed_run.py"),
                   "--scenario", str(sc), "--result", str(res), "--print-config"]  # fmt: skip
        else:
            gpus = int(case.scenario["request"].get("gpus", 1))
            cmd = launch_command(sc, res, gpus=gpus, master_port=_free_port())
            env.setdefault("DS_ACCELERATOR", "cuda")
    else:
        cmd = [sys.executable, "-m", "validation.cuda", "--scenario", str(sc), "--result",
               str(res), "--device", device] + (["--dry-run"] if dry_run else [])  # fmt: skip
    with log.open("w", encoding="utf-8") as fh:
        # A session of its own, so that a timeout ends the launcher's ranks too (they hold
        # the GPU), not only the launcher.
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
            return None, f"timeout after {timeout_s:.0f} s\n{_tail(log)}", None
    line = res.read_text(encoding="utf-8").strip() if res.exists() else None
    if dry_run and case.kind == "deepspeed" and proc.returncode == 0:
        line = _dry_deepspeed_line(case, log)
    return line, _tail(log), proc.returncode


def _dry_deepspeed_line(case: Case, log: Path) -> str:
    from validation.cuda import failure_measurement, fingerprint
    from validation.records import Scenario

    text = log.read_text(encoding="utf-8")
    ds_config = json.loads(text[text.index("{") :])
    fp = fingerprint(
        None,
        dry_run=True,
        launcher="deepspeed.launcher.runner",
        launcher_importable=importlib.util.find_spec("deepspeed") is not None,
        deepspeed_config=ds_config,
    )
    m = failure_measurement(Scenario.model_validate(case.scenario), "dry-run", fp=fp)
    return m.model_dump_json()


def _finalize_line(
    case: Case, line: str | None, log_tail: str, code: int | None, wall_s: float
) -> Measurement:
    from validation.cuda import failure_measurement
    from validation.records import Measurement, Scenario

    if line:
        try:
            m = Measurement.model_validate_json(line)
        except Exception as exc:
            m = failure_measurement(
                Scenario.model_validate(case.scenario), f"bad result line: {exc}", wall_s=wall_s
            )
    else:
        why = f"no result (exit code {code})" if code is not None else "no result"
        m = failure_measurement(
            Scenario.model_validate(case.scenario),
            f"{why}; log tail:\n{log_tail[-1500:]}",
            wall_s=wall_s,
        )
    extra = {"matrix_group": case.group, "matrix_kind": case.kind}
    if case.reference:
        extra["reference_id"] = case.reference
    fp = m.fingerprint.model_copy(update=extra)
    return m.model_copy(update={"fingerprint": fp})


def run_matrix(
    selected: Sequence[Case],
    out: Path | None,
    *,
    out_dir: Path | None = None,
    budget_s: float = 420.0,
    dry_run: bool = False,
    spawn: bool = False,
    log_path: Path | None = None,
    device: str = "cuda",
) -> tuple[list[Measurement], list[str], Path]:
    """Run the cases in order within ``budget_s`` and append one JSON line per case.

    Returns:
        The measurements written, the ids skipped for lack of budget, and the JSONL path.

    """
    t0 = time.monotonic()
    can_fork = not spawn and _preimport(dry_run)
    print(f"case processes: {'fork' if can_fork else 'fresh interpreter'}", flush=True)
    if out is None and dry_run:
        out = (out_dir or Path(tempfile.gettempdir())) / "vramcalc-matrix-dry-run.jsonl"
    elif out is None:
        out = (out_dir or REPO / "validation" / "measurements") / default_out_name(_gpu_name())
    out.parent.mkdir(parents=True, exist_ok=True)
    if log_path is None:
        log_path = out.with_suffix(".log")
    done: list[Measurement] = []
    skipped: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="vramcalc-matrix-") as tmp,
        log_path.open("a", encoding="utf-8") as log,
    ):
        work = Path(tmp)
        for i, case in enumerate(selected, 1):
            elapsed = time.monotonic() - t0
            if not dry_run and elapsed + case.est_s > budget_s:
                skipped.append(case.id)
                continue
            timeout = max(60.0, 4.0 * case.est_s)
            if not dry_run:
                timeout = min(timeout, max(30.0, budget_s + 60.0 - elapsed))
            started = time.monotonic()
            runner = _run_case_fork if (can_fork and case.kind == "cuda") else _run_case_subprocess
            line, tail, code = runner(case, work, timeout, dry_run, device)
            wall = round(time.monotonic() - started, 2)
            m = _finalize_line(case, line, tail, code, wall)
            with out.open("a", encoding="utf-8") as fh:
                fh.write(m.model_dump_json() + "\n")
            done.append(m)
            log.write(f"===== [{i}/{len(selected)}] {case.id} ({wall} s, exit {code})\n{tail}\n")
            log.flush()
            status = "ok" if m.error in (None, "dry-run") else f"FAILED: {m.error[:160]!r}"
            print(f"[{i:>2}/{len(selected)}] {wall:6.1f}s {case.id}: {status}", flush=True)
    return done, skipped, out


def _gpu_name() -> str:
    with contextlib.suppress(Exception):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    return "gpu"


def summary_table(measurements: Iterable[Measurement]) -> str:
    """Render a short fixed-width table of the results (MiB = 2**20 bytes)."""
    mib = 2**20
    rows = [f"{'id':<48} {'alloc':>9} {'reserved':>9} {'device':>9} {'ctx':>6} {'peak at':<12}"]
    for m in measurements:
        if m.error:
            rows.append(f"{m.scenario.id:<48} {'-':>9} {'-':>9} {'-':>9} {'-':>6} {m.error[:40]}")
            continue
        r = m.measured

        def f(v: int | None, width: int = 9) -> str:
            return f"{v / mib:>{width}.1f}" if v is not None else f"{'-':>{width}}"

        rows.append(
            f"{m.scenario.id:<48} {f(r.allocated_bytes)} {f(r.reserved_bytes)} "
            f"{f(r.device_bytes)} {f(r.context_bytes, 6)} {r.step}/{r.phase}"
        )
    return "\n".join(rows)


def compare_rows(
    real: Sequence[Measurement], traced: dict[str, Measurement | str]
) -> list[dict[str, Any]]:
    """Pair real CUDA measurements with fake-cuda traces of the same scenarios.

    ``traced`` maps a scenario id to its trace, or to the reason it has none. Each row has
    the real and traced allocated peaks (bytes), the signed error of the trace in percent of
    the real peak, and both peaks' ``step/phase``.
    """
    rows: list[dict[str, Any]] = []
    for m in real:
        t = traced.get(m.scenario.id, "not traced")
        row: dict[str, Any] = {
            "id": m.scenario.id,
            "real_allocated_bytes": m.measured.allocated_bytes,
            "real_peak": f"{m.measured.step}/{m.measured.phase}",
            "traced_allocated_bytes": None,
            "traced_peak": None,
            "error_pct": None,
            "note": t if isinstance(t, str) else None,
        }
        if not isinstance(t, str):
            row["traced_allocated_bytes"] = t.measured.allocated_bytes
            row["traced_peak"] = f"{t.measured.step}/{t.measured.phase}"
            if m.measured.allocated_bytes:
                diff = t.measured.allocated_bytes - m.measured.allocated_bytes
                row["error_pct"] = round(100.0 * diff / m.measured.allocated_bytes, 3)
        rows.append(row)
    return rows


def compare(path: Path, only: str | None = None) -> list[dict[str, Any]]:
    """Trace (fake cuda, on this CPU) every successful single-GPU case of a GPU JSONL file.

    Uses ``validation.trace.trace_scenarios``; QLoRA cases come back as skipped.
    """
    from validation import trace
    from validation.records import Measurement

    real = [
        m
        for m in trace.load_measurements(path)
        if m.error is None
        and m.fingerprint.backend == "cuda"
        and (m.fingerprint.model_extra or {}).get("matrix_kind", "cuda") == "cuda"
        and (not only or any(fnmatch.fnmatchcase(m.scenario.id, p) for p in only.split(",")))
    ]
    traced: dict[str, Measurement | str] = {}
    for m in real:
        try:
            (res,) = trace.trace_scenarios([m.scenario])
        except Exception as exc:  # one failing trace must not hide the others
            traced[m.scenario.id] = f"trace failed: {exc}"[:300]
            continue
        traced[m.scenario.id] = res if isinstance(res, Measurement) else str(res)
    return compare_rows(real, traced)


def _print_compare(rows: Sequence[dict[str, Any]]) -> None:
    mib = 2**20
    print(f"{'id':<48} {'real MiB':>9} {'trace MiB':>9} {'err %':>7}  real/trace peak")
    for r in rows:
        t = r["traced_allocated_bytes"]
        tr = f"{t / mib:9.1f}" if t is not None else f"{'-':>9}"
        err = f"{r['error_pct']:7.2f}" if r["error_pct"] is not None else f"{'-':>7}"
        tail = f"{r['real_peak']} / {r['traced_peak']}" if t is not None else str(r["note"])
        print(f"{r['id']:<48} {r['real_allocated_bytes'] / mib:9.1f} {tr} {err}  {tail}")


def main(argv: list[str] | None = None) -> int:
    """Command line of the matrix (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m validation.matrix", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--out", type=Path, help="JSONL file to append to")
    ap.add_argument("--out-dir", type=Path, help="folder for cuda-<gpu>-<date>.jsonl and log")
    ap.add_argument("--budget-s", type=float, default=420.0, help="wall-clock budget (s)")
    ap.add_argument("--only", help="comma-separated glob patterns of case ids")
    ap.add_argument("--dry-run", action="store_true", help="validate everything without CUDA")
    ap.add_argument("--spawn", action="store_true", help="fresh interpreter per case, no fork")
    ap.add_argument("--list", action="store_true", help="print the plan and exit")
    ap.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="cpu: smoke-run the cases' step pipeline on the CPU (figures are 0)",
    )
    ap.add_argument("--wheels", type=Path, help="install carried wheels from this folder first")
    ap.add_argument("--prepare-wheels", type=Path, help="download the wheels into this folder")
    ap.add_argument(
        "--compare",
        type=Path,
        help="trace (fake cuda, CPU) the cases of a GPU JSONL file and print real vs traced",
    )
    args = ap.parse_args(argv)

    if args.compare:
        rows = compare(args.compare, args.only)
        _print_compare(rows)
        if args.out:
            args.out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return 0

    if args.prepare_wheels:
        for w in prepare_wheels(args.prepare_wheels):
            print(f"{w.stat().st_size / 2**20:8.2f} MiB  {w.name}")
        return 0
    t0 = time.monotonic()
    notes = install_wheels(args.wheels) if args.wheels else []
    for n in notes:
        print(f"note: {n}", flush=True)
    overhead = time.monotonic() - t0
    selected = select(cases(), args.only)
    if not selected:
        print(f"no case matches {args.only!r}", file=sys.stderr)
        return 2
    budget = max(args.budget_s - overhead, 0.0)
    print(plan_table(selected, budget), flush=True)
    if args.list:
        return 0
    if args.dry_run and args.out is not None:
        meas = (REPO / "validation" / "measurements").resolve()
        if meas in args.out.resolve().parents:
            print("refusing to write dry-run lines into validation/measurements/", file=sys.stderr)
            return 2
    done, skipped, out = run_matrix(
        selected, args.out, out_dir=args.out_dir, budget_s=budget, dry_run=args.dry_run,
        spawn=args.spawn, device=args.device,
    )  # fmt: skip
    print(summary_table(done))
    if skipped:
        print(f"skipped for budget ({len(skipped)}): {', '.join(skipped)}")
    failed = [m.scenario.id for m in done if m.error not in (None, "dry-run")]
    print(f"wrote {len(done)} lines to {out} ({len(failed)} failed) in "
          f"{time.monotonic() - t0:.0f} s")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
