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
        "checkpointing and micro-batch for a training job; print the time-vs-cost front.",
    )
    p.add_argument("model", help="catalog name, Hugging Face Hub id or path to a config.json")
    p.add_argument("--task", default="train", help="train (inference: not yet)")
    p.add_argument("--tokens", type=int, help="training tokens per epoch (required)")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--global-batch", type=int, default=64, help="sequences per optimizer step")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--methods", default="lora", help="allowed methods: full,lora,qlora")
    p.add_argument("--lora", default="", metavar="SPEC", help="r=16,alpha=32,targets=...")
    p.add_argument("--dtype", default="bf16", help="fp32, bf16, fp16")
    p.add_argument("--mixed-precision", default="no", help="no, bf16, fp16")
    p.add_argument("--optim", default="adamw_torch")
    p.add_argument("--attn", default="sdpa", help="eager, sdpa, flash_attention_2")
    p.add_argument("--grad-ckpt", default="auto", help="auto (where needed), on, off")
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
    p.add_argument("--max-usd", type=float, default=None)
    p.add_argument("--max-hours", type=float, default=None)
    p.add_argument("--min-headroom", type=float, default=0.0, metavar="GIB",
                   help="GiB to leave free on every GPU")  # fmt: skip
    p.add_argument("--mfu", type=float, default=None)
    p.add_argument("--rows", type=int, default=12, help="front rows to print")
    p.add_argument("--json", action="store_true", help="every evaluated candidate as JSON")
    return p


def plan_main(argv: Sequence[str], parser_cls: type[argparse.ArgumentParser]) -> int:
    """Run ``vramcalc plan``; errors propagate to ``cli.run`` (one line, exit 2)."""
    ns = plan_parser(parser_cls).parse_args(list(argv))
    task = _TASKS.get(ns.task)
    if task is None:
        raise InvalidConfigError(f"--task must be train or infer, got '{ns.task}'")
    if ns.tokens is None:
        raise InvalidConfigError(
            "the plan compares time and cost: pass --tokens N (training tokens per epoch)"
        )
    fields: dict[str, Any] = {
        "model": ns.model,
        "task": task,
        "tokens": ns.tokens,
        "epochs": ns.epochs,
        "global_batch": ns.global_batch,
        "seq_len": ns.seq_len,
        "methods": ns.methods,
        "dtype": ns.dtype,
        "mixed_precision": ns.mixed_precision,
        "optim": ns.optim,
        "attn": ns.attn,
        "grad_ckpt": ns.grad_ckpt,
        "gpus_from": ns.gpus_from,
        "layouts": ns.layouts,
        "max_gpus": ns.max_gpus,
        "max_usd": ns.max_usd,
        "max_hours": ns.max_hours,
        "min_headroom": ns.min_headroom,
        "mfu": ns.mfu,
    }
    if ns.lora:
        from vramcalc.cli import _LORA_KEYS, parse_spec

        fields["lora"] = parse_spec("--lora", ns.lora, _LORA_KEYS)
    from vramcalc.plan import PlanRequest, plan, render_plan

    report = plan(PlanRequest(**fields))
    if ns.json:
        print(json.dumps(report.model_dump(mode="json")))
    else:
        print(render_plan(report, rows=max(ns.rows, 1)))
    return 0
