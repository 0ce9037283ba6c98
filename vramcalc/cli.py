"""The ``vramcalc`` command: parse -> ``EstimateRequest`` -> engine -> rich table or JSON.

``vramcalc MODEL [options]`` estimates one job; ``models``, ``gpus``, ``optimizers``,
``serve``, ``validate`` and ``calibrate`` are subcommands (the first word decides, so a
model can never be named like a subcommand).

The parser is the standard library's ``argparse`` (not typer): it starts in milliseconds,
handles a positional MODEL next to subcommands without tricks, and adds no dependency.
rich, the engine and the catalogs are imported only when needed, so ``--help`` and errors
answer fast. Every bad input ends as one line on stderr (``vramcalc: error: ...``) and exit
status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from enum import Enum, StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from vramcalc.errors import InvalidConfigError, UnknownNameError, VramcalcError

if TYPE_CHECKING:
    from rich.console import Console

    from vramcalc.report import FitReport, MemoryReport
    from vramcalc.specs import EstimateRequest

__all__ = ["SUBCOMMANDS", "build_request", "main", "parse_spec", "run"]

PROG = "vramcalc"
EXIT_BAD_INPUT = 2
WIDTH = 80
SUBCOMMANDS = ("models", "gpus", "optimizers", "serve", "validate", "calibrate")

# Accepted keys of each PEFT spec and the EstimateRequest field they fill.
_LORA_KEYS = {"r": "r", "alpha": "alpha", "dropout": "dropout", "targets": "targets"}
_ADAPTER_KEYS = {"dim": "dim"}
_PROMPT_KEYS = {"tokens": "tokens"}


class _UsageError(VramcalcError):
    """A command-line usage error (argparse's own complaints)."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so every error takes the same one-line path."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see `{self.prog} --help`)")


# ----------------------------------------------------------------------------- parsing


def parse_spec(option: str, text: str, keys: dict[str, str]) -> dict[str, Any]:
    """Parse ``r=16,alpha=32,targets=q_proj+v_proj`` into a dict of request fields.

    Args:
        option: the option name, for messages (``--lora``).
        text: what the user typed; an empty string means all defaults.
        keys: accepted keys mapped to the request field names.

    Raises:
        UnknownNameError: a key that is not accepted (names the closest accepted key).
        InvalidConfigError: an item without ``=``.

    """
    out: dict[str, Any] = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        if "=" not in item:
            raise InvalidConfigError(
                f"{option} expects key=value items separated by commas, got '{item}'; "
                f"accepted keys: {', '.join(keys)}"
            )
        key, value = (s.strip() for s in item.split("=", 1))
        if key.lower() not in keys:
            raise UnknownNameError(f"{option} key", key, keys)
        out[keys[key.lower()]] = value
    return out


def _enum_value(option: str, value: str, enum: type[Enum]) -> str:
    accepted = [str(m.value) for m in enum]
    if value.lower() not in accepted:
        raise UnknownNameError(f"{option} value", value, accepted)
    return value.lower()


def _add_estimate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL",
                   help="catalog name or alias (see `vramcalc models`), a path to a "
                        "config.json or a model folder, or a Hugging Face Hub repo id "
                        "org/name[@revision] (needs huggingface_hub; HF_TOKEN for gated "
                        "repos, HF_HUB_OFFLINE=1 reads the cache)")  # fmt: skip
    g = p.add_argument_group("training")
    g.add_argument("-b", "--batch-size", type=int, default=1, metavar="N",
                   help="micro-batch per GPU (default 1)")  # fmt: skip
    g.add_argument("-s", "--seq-len", type=int, default=512, metavar="N",
                   help="sequence length in tokens (default 512)")  # fmt: skip
    g.add_argument("--grad-accum", type=int, default=1, metavar="N",
                   help="gradient accumulation steps (default 1)")  # fmt: skip
    g.add_argument("--dtype", default="fp32", metavar="{fp32,bf16,fp16}",
                   help="parameter storage dtype (default fp32)")  # fmt: skip
    g.add_argument("--mixed-precision", default="no", metavar="{no,fp16,bf16}",
                   help="autocast over fp32 weights (default no)")  # fmt: skip
    g.add_argument("--optim", default="adamw_torch", metavar="NAME",
                   help="transformers optimizer name (see `vramcalc optimizers`)")  # fmt: skip
    g.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing")
    g.add_argument("--attn", default="sdpa", metavar="{eager,sdpa,flash_attention_2}",
                   help="attention implementation (default sdpa)")  # fmt: skip
    g = p.add_argument_group("PEFT and quantization (one method at a time)")
    g.add_argument("--lora", metavar="SPEC", nargs="?", const="",
                   help="r=16,alpha=32,dropout=0.05,targets=q_proj+v_proj|all-linear")  # fmt: skip
    g.add_argument("--qlora", metavar="SPEC", nargs="?", const="",
                   help="LoRA over a 4-bit nf4 double-quant base (SPEC as --lora)")  # fmt: skip
    g.add_argument("--quant", metavar="{nf4,fp4,int8}",
                   help="bitsandbytes quantization of the frozen base")  # fmt: skip
    g.add_argument("--adapter", metavar="SPEC", nargs="?", const="",
                   help="bottleneck adapters: dim=64")  # fmt: skip
    g.add_argument("--prefix", metavar="SPEC", nargs="?", const="",
                   help="prefix tuning: tokens=20")  # fmt: skip
    g.add_argument("--prompt-tuning", metavar="SPEC", nargs="?", const="",
                   help="prompt tuning: tokens=20")  # fmt: skip
    g.add_argument("--ia3", action="store_true", help="IA3")
    g = p.add_argument_group("parallelism (DeepSpeed ZeRO)")
    g.add_argument("--zero", default="0", metavar="{0,1,2,3}", help="ZeRO stage (default 0)")
    g.add_argument("--offload-optimizer", default="none", metavar="{none,cpu,nvme}",
                   help="ZeRO optimizer-state offload")  # fmt: skip
    g.add_argument("--offload-param", default="none", metavar="{none,cpu,nvme}",
                   help="ZeRO-3 parameter offload")  # fmt: skip
    g.add_argument("--gpus", type=int, default=1, metavar="N", help="GPUs per node")
    g.add_argument("--nodes", type=int, default=1, metavar="N", help="nodes")
    g.add_argument("--deepspeed", metavar="FILE",
                   help="a DeepSpeed config JSON (stage, offload, buckets, precision)")  # fmt: skip
    g = p.add_argument_group("inference and serving (--task infer)")
    g.add_argument("--task", default="train", metavar="{train,infer}",
                   help="train (default) or infer: generate / serving memory")  # fmt: skip
    g.add_argument("--prompt-len", type=int, metavar="N",
                   help="prompt tokens (default: --seq-len)")  # fmt: skip
    g.add_argument("--new-tokens", type=int, metavar="N",
                   help="generated tokens, generate's max_new_tokens (default 1)")  # fmt: skip
    g.add_argument("--kv-dtype", metavar="{auto,fp16,bf16,fp8}",
                   help="KV-cache dtype (default auto: the compute dtype)")  # fmt: skip
    g.add_argument("--weights", metavar="{awq,gptq,fp8}",
                   help="weight-only quantized checkpoint (4-bit AWQ/GPTQ, FP8)")  # fmt: skip
    g.add_argument("--engine", metavar="{hf,vllm}",
                   help="hf: transformers generate (default); vllm: vLLM serving")  # fmt: skip
    g.add_argument("--gpu-memory-utilization", type=float, metavar="F",
                   help="vLLM: share of GPU memory it takes (default 0.9)")  # fmt: skip
    g.add_argument("--max-num-batched-tokens", type=int, metavar="N",
                   help="vLLM: tokens per step, sizes the profile run")  # fmt: skip
    g.add_argument("--max-model-len", type=int, metavar="N",
                   help="vLLM: context length (default: the model's)")  # fmt: skip
    g.add_argument("--concurrency", type=int, metavar="N",
                   help="vLLM: concurrent sequences to check")  # fmt: skip
    g = p.add_argument_group("hardware, time and cost")
    g.add_argument("--gpu", metavar="NAME", help="check the fit on this GPU (see `vramcalc gpus`)")
    g.add_argument("--max-batch", action="store_true",
                   help="find the largest micro-batch that fits --gpu")  # fmt: skip
    g.add_argument("--global-batch", type=int, metavar="N",
                   help="with --max-batch: grad-accum to reach this global batch")  # fmt: skip
    g.add_argument("--tokens", type=int, metavar="N", help="training tokens per epoch")
    g.add_argument("--epochs", type=float, default=1.0, metavar="X", help="epochs (default 1)")
    g.add_argument("--mfu", type=float, metavar="X", help="model FLOPs utilisation, 0-1")
    g.add_argument("--price-per-gpu-hour", type=float, metavar="USD",
                   help="override the catalog price")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")


def _estimate_parser() -> _Parser:
    p = _Parser(
        prog=PROG,
        description="Predict peak GPU memory, time and cost of an LLM training or fine-tuning job.",
        epilog="subcommands: vramcalc models [QUERY] | gpus | optimizers | "
        "serve [--host H --port P --workers N] | validate MODEL [options] --backend "
        "{trace,cuda} | calibrate [--help]",
    )
    _add_estimate_options(p)
    return p


def _load_deepspeed(path: str) -> dict[str, Any]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise InvalidConfigError(f"--deepspeed: no file at '{p}'")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidConfigError(f"--deepspeed: cannot read '{p}': {exc}") from None
    except json.JSONDecodeError as exc:
        raise InvalidConfigError(
            f"--deepspeed: '{p}' is not valid JSON: {exc.msg} at line {exc.lineno} "
            f"column {exc.colno}"
        ) from None
    if not isinstance(data, dict):
        raise InvalidConfigError(f"--deepspeed: '{p}' must hold a JSON object")
    return data


def build_request(ns: argparse.Namespace) -> EstimateRequest:
    """Turn parsed options into an ``EstimateRequest`` (validated by pydantic)."""
    from vramcalc.enums import Attention, DType, MixedPrecision, Offload, Quant, ZeroStage
    from vramcalc.specs import EstimateRequest

    fields: dict[str, Any] = {
        "model": ns.model,
        "batch_size": ns.batch_size,
        "seq_len": ns.seq_len,
        "grad_accum": ns.grad_accum,
        "dtype": _enum_value("--dtype", ns.dtype, DType),
        "mixed_precision": _enum_value("--mixed-precision", ns.mixed_precision, MixedPrecision),
        "optim": ns.optim,
        "ia3": ns.ia3,
        "grad_ckpt": ns.grad_ckpt,
        "attn": _enum_value("--attn", ns.attn, Attention),
        "offload_optimizer": _enum_value("--offload-optimizer", ns.offload_optimizer, Offload),
        "offload_param": _enum_value("--offload-param", ns.offload_param, Offload),
        "gpus": ns.gpus,
        "nodes": ns.nodes,
        "epochs": ns.epochs,
    }
    zero = ns.zero.strip()
    if zero not in [str(int(z)) for z in ZeroStage]:
        raise UnknownNameError("--zero stage", zero, [str(int(z)) for z in ZeroStage])
    fields["zero"] = int(zero)
    if ns.quant is not None:
        fields["quant"] = _enum_value("--quant", ns.quant, Quant)
    for name, option, keys in (
        ("lora", "--lora", _LORA_KEYS),
        ("qlora", "--qlora", _LORA_KEYS),
        ("adapter", "--adapter", _ADAPTER_KEYS),
        ("prefix", "--prefix", _PROMPT_KEYS),
        ("prompt_tuning", "--prompt-tuning", _PROMPT_KEYS),
    ):
        text = getattr(ns, name)
        if text is not None:
            fields[name] = parse_spec(option, text, keys)
    for name in ("gpu", "tokens", "mfu", "price_per_gpu_hour"):
        if getattr(ns, name) is not None:
            fields[name] = getattr(ns, name)
    if ns.deepspeed is not None:
        fields["deepspeed"] = _load_deepspeed(ns.deepspeed)
    fields.update(_inference_fields(ns))
    return EstimateRequest(**fields)


def _inference_fields(ns: argparse.Namespace) -> dict[str, Any]:
    """Return the ``--task infer`` options as request fields (only those given)."""
    from vramcalc.enums import KvDtype, ServeEngine, WeightFormat

    out: dict[str, Any] = {}
    task = ns.task.strip().lower()
    if task not in ("train", "infer", "inference"):
        raise UnknownNameError("--task value", ns.task, ["train", "infer"])
    out["task"] = "inference" if task != "train" else "train"
    for name, option, enum in (
        ("kv_dtype", "--kv-dtype", KvDtype),
        ("weights", "--weights", WeightFormat),
        ("engine", "--engine", ServeEngine),
    ):
        if getattr(ns, name) is not None:
            out[name] = _enum_value(option, getattr(ns, name), enum)
    for name in (
        "prompt_len",
        "new_tokens",
        "gpu_memory_utilization",
        "max_num_batched_tokens",
        "max_model_len",
        "concurrency",
    ):
        if getattr(ns, name) is not None:
            out[name] = getattr(ns, name)
    return out


def _validation_message(exc: Any) -> str:
    """One line from a pydantic ``ValidationError``: the option and what is accepted."""
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if not str(x).isdigit()]
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if not loc:  # a whole-request rule (e.g. one PEFT method at a time)
            parts.append(msg)
            continue
        option = "--" + loc[0].replace("_", "-")
        if len(loc) > 1:
            option += " " + ".".join(loc[1:])
        got = err.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        parts.append(f"{option}: {msg}{shown}")
    return "; ".join(parts) or str(exc).splitlines()[0]


# ----------------------------------------------------------------------------- rendering


def _console() -> Console:
    from rich.console import Console

    width = min(Console().width, WIDTH)
    return Console(width=width, highlight=False, soft_wrap=False)


def _count(n: int) -> str:
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _gib(n: int) -> str:
    from vramcalc.units import format_gib

    return format_gib(n)


def _bar(n: int, total: int, width: int = 20) -> str:
    if total <= 0 or n <= 0:
        return ""
    cells = n / total * width
    full = int(cells)
    return "█" * full + ("▌" if cells - full >= 0.5 else "")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def render_report(report: MemoryReport, console: Console) -> None:
    """Print a ``MemoryReport`` as tables that fit ``console.width`` (80 columns)."""
    from rich.table import Table

    from vramcalc.report import COMPONENTS

    m = report.model
    pct = 100 * m.n_trainable_params / m.n_params if m.n_params else 0.0
    title = m.name + (f" ({m.hf_id})" if m.hf_id and m.hf_id != m.name else "")
    console.print(f"[bold]{title}[/] · {m.model_type}")
    console.print(
        f"{_count(m.n_params)} parameters, {_count(m.n_trainable_params)} trainable ({pct:.2f}%)"
    )
    pk = report.peak
    peaks = Table(title="Peak GPU memory per GPU", title_justify="left", show_header=False,
                  box=None, padding=(0, 2))  # fmt: skip
    peaks.add_column("kind")
    peaks.add_column("GiB", justify="right")
    peaks.add_column("meaning", style="dim")
    peaks.add_row("allocated", _gib(pk.allocated_bytes), "torch.cuda.max_memory_allocated")
    peaks.add_row("reserved", _gib(pk.reserved_bytes), "torch.cuda.max_memory_reserved")
    peaks.add_row("[bold]device[/]", f"[bold]{_gib(pk.device_bytes)}[/]",
                  "nvidia-smi: reserved + CUDA context")  # fmt: skip
    console.print(peaks)
    step = "first step" if pk.step == 1 else "steady state"
    if pk.phase.value in ("prefill", "decode"):  # inference: one pass, no steps
        console.print(f"peak during [bold]{pk.phase.value}[/] ({pk.event})")
    else:
        console.print(f"peak during [bold]{pk.phase.value}[/] ({pk.event}, {step})")

    total = report.breakdown.total
    table = Table(title="At the peak", title_justify="left", padding=(0, 1))
    table.add_column("component")
    table.add_column("GiB", justify="right")
    table.add_column("%", justify="right")
    table.add_column("", width=20, no_wrap=True)
    for comp in COMPONENTS:
        n = getattr(report.breakdown, comp)
        share = 100 * n / total if total else 0.0
        table.add_row(comp, f"{n / 2**30:.2f}", f"{share:.1f}", f"[cyan]{_bar(n, total)}[/]")
        finer = sorted(
            ((k, v) for k, v in report.details.items() if k.split("/")[0] == comp and v > 0),
            key=lambda kv: (-kv[1], kv[0]),
        )
        for key, v in finer[:4]:
            label = key.split("/", 1)[1] if "/" in key else key
            table.add_row(f"[dim]  {label}[/]", f"[dim]{v / 2**30:.2f}[/]",
                          f"[dim]{100 * v / total:.1f}[/]" if total else "", "")  # fmt: skip
        if len(finer) > 4:
            rest = sum(v for _, v in finer[4:])
            table.add_row(f"[dim]  +{len(finer) - 4} more[/]", f"[dim]{rest / 2**30:.2f}[/]",
                          "", "")  # fmt: skip
    table.add_section()
    table.add_row("[bold]total[/]", f"[bold]{total / 2**30:.2f}[/]", "100.0", "")
    console.print(table)
    if report.cpu_bytes > 0:
        console.print(f"CPU memory (offloaded): {_gib(report.cpu_bytes)}")
    if report.serving is not None:
        _render_serving(report, console)
    if report.fit is not None:
        _render_fit_line(report.fit, console)
    if report.cost is not None:
        c = report.cost
        console.print(
            f"Time: {_duration(c.time_s)} for {c.tokens:,} tokens x {c.epochs:g} epochs on "
            f"{c.n_gpus} x {c.gpu}"
        )
        console.print(
            f"Cost: ${c.cost_usd:,.2f} at ${c.price_usd_per_gpu_hour:g} per GPU-hour "
            f"(MFU {c.mfu:g}, {c.flops_per_token / 1e9:.2f} GFLOP/token)"
        )
        for note in c.notes:
            console.print(f"[dim]  {note}[/]")
    for note in report.notes:
        console.print(f"[dim]note: {note}[/]")


def _render_serving(report: MemoryReport, console: Console) -> None:
    """Print vLLM's budget and what it buys (``--engine vllm``)."""
    from rich.table import Table

    s = report.serving
    assert s is not None
    t = Table(title=f"vLLM budget per GPU ({s.gpu_memory_utilization:g} x {s.gpu})",
              title_justify="left", padding=(0, 1))  # fmt: skip
    t.add_column("part")
    t.add_column("GiB", justify="right")
    t.add_column("note", style="dim")
    t.add_row("weights", _gib(s.weights_bytes), "")
    t.add_row("profile activations", _gib(s.activation_peak_bytes),
              f"{s.max_num_batched_tokens} tokens, {s.max_num_seqs} seqs")  # fmt: skip
    t.add_row("CUDA graphs", _gib(s.cuda_graph_bytes), "prior estimate")
    t.add_row("non-torch", _gib(s.non_torch_bytes), "cuBLAS workspace")
    t.add_row("KV cache", _gib(s.kv_cache_bytes),
              f"{s.kv_blocks:,} blocks x {s.block_size} tokens")  # fmt: skip
    t.add_section()
    t.add_row("[bold]budget[/]", f"[bold]{_gib(s.budget_bytes)}[/]", "")
    console.print(t)
    console.print(
        f"KV cache: {s.kv_bytes_per_token / 2**10:,.0f} KiB per token; one sequence fits up to "
        f"[bold]{s.max_model_len_fit:,}[/] tokens (max_model_len {s.max_model_len:,})"
    )
    console.print(
        f"Concurrent sequences of {s.request_len:,} tokens: [bold]{s.max_concurrency:,}[/]"
        + (f" (asked {s.concurrency:,})" if s.concurrency is not None else "")
    )
    if s.fits:
        console.print("[green]Fits[/] the vLLM budget")
    else:
        console.print(f"[red]Does not fit:[/] {s.reason}")


def _render_fit_line(fit: FitReport, console: Console) -> None:
    if fit.fits:
        console.print(
            f"[green]Fits[/] {fit.gpu} ({_gib(fit.usable_bytes)} usable): "
            f"headroom {_gib(fit.headroom_bytes)}"
        )
    else:
        console.print(
            f"[red]Does not fit[/] {fit.gpu} ({_gib(fit.usable_bytes)} usable): "
            f"over by {_gib(-fit.headroom_bytes)}"
        )


def render_fit(fit: FitReport, request: EstimateRequest, console: Console) -> None:
    """Print the ``--max-batch`` result."""
    if not fit.max_batch_size:
        console.print(
            f"[red]Even micro-batch 1 does not fit[/] {fit.gpu} "
            f"({_gib(fit.usable_bytes)} usable) at seq-len {request.seq_len}: over by "
            f"{_gib(-fit.headroom_bytes)}"
        )
        return
    console.print(
        f"Largest micro-batch on {fit.gpu} at seq-len {request.seq_len}: "
        f"[bold]{fit.max_batch_size}[/]"
    )
    console.print(f"headroom at that batch: {_gib(fit.headroom_bytes)} of "
                  f"{_gib(fit.usable_bytes)} usable")  # fmt: skip
    if fit.suggested_grad_accum is not None:
        console.print(f"suggested --grad-accum: {fit.suggested_grad_accum}")


# ----------------------------------------------------------------------------- commands


def _cmd_estimate(argv: Sequence[str]) -> int:
    ns = _estimate_parser().parse_args(list(argv))
    request = build_request(ns)
    from vramcalc import engine

    if ns.max_batch:
        fit = engine.fit(request, target_global_batch=ns.global_batch)
        if ns.json:
            print(json.dumps(fit.model_dump(mode="json")))
        else:
            render_fit(fit, request, _console())
        return 0
    if ns.global_batch is not None:
        raise InvalidConfigError("--global-batch only applies with --max-batch")
    report = engine.estimate(request)
    if ns.json:
        print(json.dumps(report.model_dump(mode="json")))
    else:
        render_report(report, _console())
    return 0


HUB_POINTER = (
    "Any Hugging Face Hub repo id works too: `vramcalc Qwen/Qwen3-8B` or "
    "`vramcalc org/name@revision` reads config.json (and safetensors headers, never weights) "
    "through huggingface_hub and its cache (HF_HOME); HF_TOKEN for gated or private repos; "
    "HF_HUB_OFFLINE=1 answers from the cache only; a path to a config.json also works."
)


def _cmd_models(argv: Sequence[str]) -> int:
    p = _Parser(prog=f"{PROG} models", description="List the model catalog (any Hugging Face "
                "Hub repo id works as MODEL too).")  # fmt: skip
    p.add_argument("query", nargs="?", default="", help="substring of a name, alias or HF id")
    p.add_argument("--json", action="store_true")
    ns = p.parse_args(list(argv))
    from vramcalc import catalog

    q = ns.query.lower()
    rows = [
        r for r in catalog.model_rows()
        if not q or any(q in str(s).lower()
                        for s in (r["name"], r.get("hf_id") or "", *r.get("aliases", [])))
    ]  # fmt: skip
    if ns.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "config"} for r in rows]))
        return 0
    from rich.table import Table

    table = Table(title=f"{len(rows)} models", title_justify="left", padding=(0, 1))
    table.add_column("name", no_wrap=True)
    table.add_column("HF id", overflow="fold")
    table.add_column("params", justify="right")
    table.add_column("type")
    for r in rows:
        table.add_row(r["name"], r.get("hf_id") or "", _count(int(r.get("n_params") or 0)),
                      str(r["config"].get("model_type", "")))  # fmt: skip
    if not rows:
        print(f"no model matches '{ns.query}'; `vramcalc models` lists all. {HUB_POINTER}",
              file=sys.stderr)  # fmt: skip
        return 1
    console = _console()
    console.print(table)
    console.print(HUB_POINTER, soft_wrap=False)
    return 0


def _cmd_gpus(argv: Sequence[str]) -> int:
    p = _Parser(prog=f"{PROG} gpus", description="List the GPU catalog.")
    p.add_argument("--json", action="store_true")
    ns = p.parse_args(list(argv))
    from vramcalc import catalog

    gpus = catalog.gpus()
    if ns.json:
        print(json.dumps([g.model_dump(mode="json") for g in gpus]))
        return 0
    from rich.table import Table

    table = Table(title=f"{len(gpus)} GPUs (prices as of {gpus[0].as_of})" if gpus else "GPUs",
                  title_justify="left", padding=(0, 1))  # fmt: skip
    table.add_column("name", no_wrap=True)
    table.add_column("memory GiB", justify="right")
    table.add_column("bf16 TFLOPS", justify="right")
    table.add_column("GB/s", justify="right")
    table.add_column("$/GPU-h", justify="right")
    for g in gpus:
        tf = g.tflops.get("bf16")
        table.add_row(g.name, f"{g.memory_bytes / 2**30:.1f}", "-" if tf is None else f"{tf:g}",
                      f"{g.bandwidth_gb_s:g}", f"{g.price_usd_per_gpu_hour:.2f}")  # fmt: skip
    _console().print(table)
    return 0


def _optimizer_summary(row: dict[str, Any]) -> str:
    if row.get("alias_of"):
        return f"alias of {row['alias_of']}"
    if row.get("unsupported"):
        reason = str(row["unsupported"]).split(";")[0]
        return "not modelled: " + (reason if len(reason) <= 60 else reason[:57] + "...")
    states = row.get("states") or []
    if not states:
        text = "no states"
    else:
        widths = ", ".join(
            f"{s.get('name', '?')} {s['bits']}-bit" if isinstance(s.get("bits"), int)
            else f"{s.get('name', '?')} param dtype"
            for s in states
        )  # fmt: skip
        text = widths
    if row.get("factored"):
        text += " (factored)"
    if row.get("paged"):
        text += ", paged"
    return text


def _cmd_optimizers(argv: Sequence[str]) -> int:
    p = _Parser(prog=f"{PROG} optimizers", description="List the --optim values.")
    p.add_argument("--json", action="store_true")
    ns = p.parse_args(list(argv))
    from vramcalc import catalog

    table_rows: dict[str, dict[str, Any]] = catalog.load("optimizers")["optimizers"]
    if ns.json:
        print(json.dumps({k: _optimizer_summary(v) for k, v in sorted(table_rows.items())}))
        return 0
    from rich.table import Table

    table = Table(title=f"{len(table_rows)} optimizers (--optim)", title_justify="left",
                  padding=(0, 1))  # fmt: skip
    table.add_column("name", no_wrap=True)
    table.add_column("states per parameter", overflow="fold")
    for name in sorted(table_rows):
        table.add_row(name, _optimizer_summary(table_rows[name]))
    _console().print(table)
    return 0


def _repo_import(module: str, extra: str) -> Any:
    """Import ``api.*`` / ``validation.*``, which live at the repository root."""
    import importlib

    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.append(root)
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise InvalidConfigError(
            f"`{module}` is not available ({exc}); run from a vramcalc checkout with "
            f"`pip install -e .[{extra}]`"
        ) from None


def _cmd_serve(argv: Sequence[str]) -> int:
    p = _Parser(prog=f"{PROG} serve", description="Start the REST service and web page.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1)
    ns = p.parse_args(list(argv))
    if not 0 < ns.port < 65536:
        raise InvalidConfigError(f"--port must be 1-65535, got {ns.port}")
    if ns.workers < 1:
        raise InvalidConfigError(f"--workers must be >= 1, got {ns.workers}")
    serve_mod = _repo_import("api.serve", "api")
    serve_mod.serve(ns.host, ns.port, ns.workers)
    return 0


def _cmd_validate(argv: Sequence[str]) -> int:
    p = _Parser(prog=f"{PROG} validate",
                description="Compare the estimate with a traced or measured step.")  # fmt: skip
    _add_estimate_options(p)
    p.add_argument("--backend", default="trace", metavar="{trace,cuda}",
                   help="trace (GPU-free, fake CUDA) or cuda (a real GPU)")  # fmt: skip
    ns = p.parse_args(list(argv))
    backend = _enum_value("--backend", ns.backend, _Backend)
    request = build_request(ns)
    compare = _repo_import("validation.compare", "validation")
    code: int = compare.validate_main(request, backend, ns.json)
    return code


class _Backend(StrEnum):
    TRACE = "trace"
    CUDA = "cuda"


def _cmd_calibrate(argv: Sequence[str]) -> int:
    calibrate = _repo_import("validation.calibrate", "validation")
    code: int = calibrate.calibrate_main(list(argv))
    return code


_COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "models": _cmd_models,
    "gpus": _cmd_gpus,
    "optimizers": _cmd_optimizers,
    "serve": _cmd_serve,
    "validate": _cmd_validate,
    "calibrate": _cmd_calibrate,
}


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (2 on bad input, with one stderr line)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] in _COMMANDS:
            return _COMMANDS[args[0]](args[1:])
        return _cmd_estimate(args)
    except VramcalcError as exc:
        message = str(exc)
    except FileNotFoundError as exc:
        message = f"no such file: {exc.filename}"
    except json.JSONDecodeError as exc:
        message = f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        if type(exc).__name__ == "ValidationError":
            message = _validation_message(exc)
        else:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    except KeyboardInterrupt:
        return 130
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console-script entry point: ``sys.exit(run(argv))``."""
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
