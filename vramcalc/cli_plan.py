"""``vramcalc plan MODEL --tokens N [options]``: parse -> ``PlanRequest`` -> planner -> text/JSON.

Kept apart from ``cli.py`` (which only dispatches here) so the estimate's option groups and
the planner's can change independently. Output is plain text in 80 columns
(``plan.render_plan``) or ``--json`` with every evaluated candidate.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from vramcalc.errors import InvalidConfigError

__all__ = ["plan_main", "plan_parser"]

_TASKS = {"train": "train", "infer": "inference", "inference": "inference"}


def plan_parser(parser_cls: type[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Build the ``plan`` subcommand's parser (``parser_cls`` raises instead of exiting)."""
    p = parser_cls(
        prog="vramcalc plan",
        description="Search GPU type and count, parallel layout, PEFT method, gradient "
        "checkpointing and micro-batch for a training job and print the time-vs-cost front; "
        "with --task infer, search GPU type, engine, weight format, tensor parallelism and "
        "replicas for a serving workload and print the price-vs-throughput front.",
    )
    p.add_argument("model", help="catalog name, Hugging Face Hub id or path to a config.json")
    p.add_argument("--task", default="train", help="train or infer (serving)")
    t = p.add_argument_group("training (--task train)")
    t.add_argument("--tokens", type=int, help="training tokens per epoch (required)")
    t.add_argument("--epochs", type=float, default=None, help="default 1")
    t.add_argument("--global-batch", type=int, default=None, help="sequences per step (64)")
    t.add_argument("--seq-len", type=int, default=None, help="default 2048")
    t.add_argument("--methods", default=None, help="allowed methods: full,lora,qlora (lora)")
    t.add_argument("--lora", default="", metavar="SPEC", help="r=16,alpha=32,targets=...")
    t.add_argument("--mixed-precision", default=None, help="no, bf16, fp16")
    t.add_argument("--optim", default=None, help="default adamw_torch")
    t.add_argument("--grad-ckpt", default=None, help="auto (where needed), on, off")
    i = p.add_argument_group("serving (--task infer)")
    i.add_argument("--prompt-len", type=int, default=None, help="prompt tokens (required)")
    i.add_argument("--new-tokens", type=int, default=None, help="generated tokens (1)")
    i.add_argument("--concurrency", type=int, default=None, help="concurrent sequences (1)")
    i.add_argument("--engine", default=None, metavar="NAMES", help="hf,vllm (both)")
    i.add_argument("--weights", default=None, metavar="NAMES",
                   help="formats allowed: auto,int8,nf4,awq,gptq,fp8 (auto = --dtype)")  # fmt: skip
    i.add_argument("--kv-dtype", default=None, help="auto, fp16, bf16, fp8 (vllm)")
    i.add_argument("--gpu-memory-utilization", type=float, default=None, help="vLLM (0.9)")
    i.add_argument("--max-usd-per-hour", type=float, default=None, help="budget, all GPUs")
    p.add_argument("--dtype", default="bf16", help="fp32, bf16, fp16")
    p.add_argument("--attn", default="sdpa", help="eager, sdpa, flash_attention_2")
    p.add_argument(
        "--gpus-from",
        default=None,
        metavar="NAMES",
        help="GPU types to consider, e.g. a100-80gb,h100-sxm (default: the catalog)",
    )
    p.add_argument(
        "--layouts",
        default=None,
        metavar="NAMES",
        help="single,ddp,zero1,zero2,zero3,fsdp2_full_shard,fsdp2_shard_grad_op",
    )
    p.add_argument("--max-gpus", type=int, default=64)
    p.add_argument("--max-usd", type=float, default=None, help="training budget, USD")
    p.add_argument("--max-hours", type=float, default=None, help="training time limit")
    p.add_argument("--min-headroom", type=float, default=0.0, metavar="GIB",
                   help="GiB to leave free on every GPU")  # fmt: skip
    t.add_argument("--mfu", type=float, default=None)
    p.add_argument("--rows", type=int, default=12, help="front rows to print")
    p.add_argument("--json", action="store_true", help="every evaluated candidate as JSON")
    return p


def plan_main(argv: Sequence[str], parser_cls: type[argparse.ArgumentParser]) -> int:
    """Run ``vramcalc plan``; errors propagate to ``cli.run`` (one line, exit 2)."""
    ns = plan_parser(parser_cls).parse_args(list(argv))
    task = _TASKS.get(ns.task)
    if task is None:
        raise InvalidConfigError(f"--task must be train or infer, got '{ns.task}'")
    # only what was given: PlanRequest refuses options of the other task by name
    opts = {
        "tokens": ns.tokens,
        "epochs": ns.epochs,
        "global_batch": ns.global_batch,
        "seq_len": ns.seq_len,
        "methods": ns.methods,
        "mixed_precision": ns.mixed_precision,
        "optim": ns.optim,
        "grad_ckpt": ns.grad_ckpt,
        "layouts": ns.layouts,
        "max_usd": ns.max_usd,
        "max_hours": ns.max_hours,
        "mfu": ns.mfu,
        "prompt_len": ns.prompt_len,
        "new_tokens": ns.new_tokens,
        "concurrency": ns.concurrency,
        "engines": ns.engine,
        "weights": ns.weights,
        "kv_dtype": ns.kv_dtype,
        "gpu_memory_utilization": ns.gpu_memory_utilization,
        "max_usd_per_hour": ns.max_usd_per_hour,
    }
    fields: dict[str, Any] = {
        "model": ns.model,
        "task": task,
        "dtype": ns.dtype,
        "attn": ns.attn,
        "gpus_from": ns.gpus_from,
        "max_gpus": ns.max_gpus,
        "min_headroom": ns.min_headroom,
        **{k: v for k, v in opts.items() if v is not None},
    }
    if ns.lora:
        from vramcalc.cli import _LORA_KEYS, parse_spec

        fields["lora"] = parse_spec("--lora", ns.lora, _LORA_KEYS)
    from vramcalc.plan import PlanRequest, plan, render_plan

    report = plan(_request(PlanRequest, fields))
    if ns.json:
        print(json.dumps(report.model_dump(mode="json")))
    else:
        print(render_plan(report, rows=max(ns.rows, 1)))
    return 0


def _request(cls: Any, fields: dict[str, Any]) -> Any:
    """Build the ``PlanRequest``; a validation error becomes one line naming CLI options."""
    from pydantic import ValidationError

    from vramcalc.cli import _validation_message

    try:
        return cls(**fields)
    except ValidationError as exc:
        msg = _validation_message(exc).replace("--engines", "--engine")
        raise InvalidConfigError(msg) from None
