"""The torchtune trace grid: torchtune 0.6.1's own recipe step on fake CUDA (``torchtune_trace``).

Small llama (tied embeddings, GQA) and qwen2 (q/k/v biases, untied head) shapes built by
torchtune's component builders; full fine-tuning, LoRA, QLoRA (torchao NF4), the recipes'
chunked cross-entropy and the full-logits loss, activation checkpointing, activation
offloading and optimizer-in-backward. ``torch.optim.AdamW(fused=True)`` as the recipes' configs
set it (``optim adamw_torch_fused``).

CLI::

    python -m validation.torchtune_grid [--only ID]
    python -m validation.torchtune_grid --out validation/measurements/trace-frameworks.jsonl

Writing ``--out`` replaces the file's torchtune lines (``scenario.request.framework``) and
keeps every other line, so the litgpt/hf generators can share the file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from validation.records import Scenario
from vramcalc.specs import EstimateRequest

__all__ = ["FRAMEWORK", "MEASUREMENTS", "scenario", "scenarios"]

FRAMEWORK = "torchtune"
MEASUREMENTS = Path(__file__).resolve().parent / "measurements" / "trace-frameworks.jsonl"

LLAMA: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 1024,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 2048,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
}
QWEN: dict[str, Any] = {
    "model_type": "qwen2",
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 3,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "vocab_size": 3072,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": False,
}
# deep and narrow: more checkpointed layer inputs than OffloadActivations' GPU stash keeps (5)
DEEP: dict[str, Any] = {
    **LLAMA,
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 12,
}
# a Llama-3.2-like vocabulary-to-width ratio (128256 / 3072 ~ 42): the chunked loss is the peak
WIDE_VOCAB: dict[str, Any] = {**LLAMA, "vocab_size": 12288}
QV = {"r": 8, "alpha": 16, "targets": ["q_proj", "v_proj"]}
ALL = {
    "r": 16,
    "alpha": 32,
    "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}

# id suffix -> request fields (besides model, framework, dtype, optim)
_CASES: dict[str, dict[str, Any]] = {
    "llama-full-b2s256": {"model": LLAMA},
    "llama-full-fullloss-b2s256": {"model": LLAMA, "loss": "full"},
    "llama-full-chunks16-b2s256": {"model": LLAMA, "loss_chunks": 16},
    "llama-full-ckpt-b2s256": {"model": LLAMA, "grad_ckpt": True},
    "llama-full-ckpt-offload-b2s256": {
        "model": LLAMA,
        "grad_ckpt": True,
        "activation_offload": True,
    },
    "llama-full-inbwd-b1s128": {
        "model": LLAMA,
        "optimizer_in_backward": True,
        "batch_size": 1,
        "seq_len": 128,
    },
    "llama-full-b1s128": {"model": LLAMA, "batch_size": 1, "seq_len": 128},
    "llama-full-ckpt-inbwd-b2s256": {
        "model": LLAMA,
        "grad_ckpt": True,
        "optimizer_in_backward": True,
    },
    "llama-lora-qv-b2s256": {"model": LLAMA, "lora": QV},
    "llama-lora-all-ckpt-b2s256": {"model": LLAMA, "lora": ALL, "grad_ckpt": True},
    "llama-lora-all-ckpt-offload-b2s256": {
        "model": LLAMA,
        "lora": ALL,
        "grad_ckpt": True,
        "activation_offload": True,
    },
    "llama-qlora-qv-b2s256": {"model": LLAMA, "qlora": QV},
    "llama-qlora-all-ckpt-b4s256": {
        "model": LLAMA,
        "qlora": ALL,
        "grad_ckpt": True,
        "batch_size": 4,
    },
    "deep-full-ckpt-b2s512": {"model": DEEP, "grad_ckpt": True, "seq_len": 512},
    "deep-full-ckpt-offload-b2s512": {
        "model": DEEP,
        "grad_ckpt": True,
        "activation_offload": True,
        "seq_len": 512,
    },
    "deep-lora-all-ckpt-offload-b2s512": {
        "model": DEEP,
        "lora": ALL,
        "grad_ckpt": True,
        "activation_offload": True,
        "seq_len": 512,
    },
    "widevocab-lora-all-ckpt-offload-b2s512": {
        "model": WIDE_VOCAB,
        "lora": ALL,
        "grad_ckpt": True,
        "activation_offload": True,
        "seq_len": 512,
    },
    "widevocab-qlora-all-ckpt-offload-b2s512": {
        "model": WIDE_VOCAB,
        "qlora": ALL,
        "grad_ckpt": True,
        "activation_offload": True,
        "seq_len": 512,
    },
    "qwen-full-b2s256": {"model": QWEN},
    "qwen-full-ckpt-offload-b2s256": {
        "model": QWEN,
        "grad_ckpt": True,
        "activation_offload": True,
    },
    "qwen-lora-all-b2s256": {"model": QWEN, "lora": ALL},
    "qwen-lora-qv-accum2-b2s256": {"model": QWEN, "lora": QV, "grad_accum": 2},
}


def _request(fields: dict[str, Any]) -> EstimateRequest:
    base: dict[str, Any] = {
        "framework": FRAMEWORK,
        "dtype": "bf16",
        "optim": "adamw_torch_fused",
        "batch_size": 2,
        "seq_len": 256,
    }
    return EstimateRequest.model_validate({**base, **fields})


def scenarios() -> list[Scenario]:
    """Every scenario of the torchtune grid (ids start with ``tt-``)."""
    return [
        Scenario(id=f"tt-{key}", request=_request(fields), steps=2, optim_impl="fused")
        for key, fields in _CASES.items()
    ]


def scenario(scenario_id: str) -> Scenario:
    """One scenario by id.

    Raises:
        KeyError: an unknown id.

    """
    for s in scenarios():
        if s.id == scenario_id:
            return s
    raise KeyError(f"no torchtune grid scenario {scenario_id!r}")


def _framework(line: str) -> str:
    """Return the ``framework`` of a measurement line (its scenario's request)."""
    return str(json.loads(line)["scenario"]["request"].get("framework", "hf"))


def _replace_lines(path: Path, lines: list[str]) -> None:
    """Write ``lines`` as the file's torchtune lines, keeping the other frameworks' lines."""
    keep: list[str] = []
    if path.exists():
        for line in path.read_text("utf-8").splitlines():
            if not line.strip():
                continue
            if _framework(line) != FRAMEWORK:
                keep.append(line)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(x + "\n" for x in keep + lines), encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m validation.torchtune_grid", description=__doc__
    )
    parser.add_argument("--only", action="append", help="a scenario id (repeatable)")
    parser.add_argument("--out", type=Path, help="the measurements file to update")
    args = parser.parse_args(argv)
    from validation.trace import TraceFailed, TraceSkipped, trace_scenarios

    chosen = [scenario(i) for i in args.only] if args.only else scenarios()
    results = trace_scenarios(chosen, keep_going=True)
    lines = []
    for res in results:
        if isinstance(res, TraceSkipped | TraceFailed):
            print(f"FAILED/SKIPPED {res}", file=sys.stderr)
            continue
        m = res.measured
        print(f"{res.scenario.id}: {m.allocated_bytes / 2**20:.2f} MiB step {m.step} {m.phase}")
        lines.append(res.model_dump_json())
    if args.out and lines:
        if args.only:
            raise SystemExit("--out rewrites every torchtune line: run the whole grid")
        _replace_lines(args.out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
