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
import os
import sys
from collections.abc import Callable, Sequence
from enum import Enum, StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from vramcalc.errors import InvalidConfigError, UnknownNameError, VramcalcError

if TYPE_CHECKING:
    from rich.console import Console

    from vramcalc.report import FitReport, Layout, MemoryReport
    from vramcalc.specs import EstimateRequest

__all__ = ["SUBCOMMANDS", "build_request", "main", "parse_spec", "run"]

PROG = "vramcalc"
EXIT_BAD_INPUT = 2
EXIT_BROKEN_PIPE = 141
"""Exit status when the reader of stdout went away (``vramcalc plan ... | head -3``): 128 +
SIGPIPE, what a shell reports for a coreutils command killed by SIGPIPE, so ``set -o
pipefail`` scripts see the same status as for ``cat``. Nothing is printed; stdout is pointed at
``os.devnull`` so that the interpreter's final flush stays quiet too."""
WIDTH = 80
SUBCOMMANDS = ("models", "gpus", "optimizers", "plan", "serve", "validate", "calibrate")

# Accepted keys of each PEFT spec and the EstimateRequest field they fill.
_LORA_KEYS = {"r": "r", "alpha": "alpha", "dropout": "dropout", "targets": "targets"}
_ADAPTER_KEYS = {"dim": "dim"}
_PROMPT_KEYS = {"tokens": "tokens"}


class _UsageError(VramcalcError):
    """A command-line usage error (argparse's own complaints)."""


def _once(base: type[argparse.Action]) -> type[argparse.Action]:
    """Wrap an argparse action so that a second occurrence of its option is refused."""

    class Once(base):  # type: ignore[valid-type,misc]
        def __call__(
            self,
            parser: argparse.ArgumentParser,
            namespace: argparse.Namespace,
            values: Any,
            option_string: str | None = None,
        ) -> None:
            seen: set[str] = namespace.__dict__.setdefault("_given", set())
            if self.dest in seen and self.option_strings:
                parser.error(
                    f"{'/'.join(self.option_strings)} given twice; give each option once "
                    "(the last one would silently win)"
                )
            seen.add(self.dest)
            super().__call__(parser, namespace, values, option_string)

    return Once


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so every error takes the same one-line path.

    Options given twice (``-b 4 -b 8``) are refused rather than letting the last one win.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        store = _once(argparse._StoreAction)
        self.register("action", None, store)
        self.register("action", "store", store)
        self.register("action", "store_true", _once(argparse._StoreTrueAction))

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
        InvalidConfigError: an item without ``=``, or a key given twice.

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
        if keys[key.lower()] in out:
            raise InvalidConfigError(
                f"{option}: key '{key}' given twice ({out[keys[key.lower()]]!r} and {value!r}); "
                "give each key once"
            )
        out[keys[key.lower()]] = value
    return out


# the type of each SPEC key: ints and floats are parsed here so the request stays strict
_SPEC_INTS = {"r", "dim", "tokens"}
_SPEC_FLOATS = {"alpha", "dropout"}


def _typed_spec(option: str, items: dict[str, Any]) -> dict[str, Any]:
    """Turn the SPEC strings into numbers (``r=16`` -> 16); a bad number names the key."""
    out: dict[str, Any] = {}
    for key, text in items.items():
        if key in _SPEC_INTS:
            t = text.strip()
            if not t.lstrip("+-").isdigit() or len(t) > 20:
                raise InvalidConfigError(f"{option} {key}: '{text}' is not an integer")
            out[key] = int(t)
        elif key in _SPEC_FLOATS:
            try:
                out[key] = float(text) if len(text) <= 40 else float("nan")
            except ValueError:
                raise InvalidConfigError(f"{option} {key}: '{text}' is not a number") from None
        else:
            out[key] = text
    return out


def _enum_value(option: str, value: str, enum: type[Enum]) -> str:
    accepted = [str(m.value) for m in enum]
    if value.lower() not in accepted:
        raise UnknownNameError(f"{option} value", value, accepted)
    return value.lower()


def _add_estimate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", nargs="?", default=None,
                   help="catalog name or alias (see `vramcalc models`), a path to a "
                        "config.json or a model folder, or a Hugging Face Hub repo id "
                        "org/name[@revision] (needs huggingface_hub; HF_TOKEN for gated "
                        "repos, HF_HUB_OFFLINE=1 reads the cache); optional with a --config "
                        "that names the model")  # fmt: skip
    p.add_argument("--config", metavar="FILE",
                   help="dry run from a trainer's own config: a LitGPT fine-tune YAML, a "
                        "torchtune recipe YAML, an axolotl YAML, a LLaMA-Factory YAML, a "
                        "TRL/transformers TrainingArguments JSON or an accelerate config; "
                        "options given here override the file")  # fmt: skip
    g = p.add_argument_group("training")
    g.add_argument("-b", "--batch-size", type=int, metavar="N",
                   help="micro-batch per GPU (default 1)")  # fmt: skip
    g.add_argument("-s", "--seq-len", type=int, metavar="N",
                   help="sequence length in tokens (default 512)")  # fmt: skip
    g.add_argument("--target-len", type=int, metavar="N",
                   help="decoder (target) length of an encoder-decoder model such as T5; "
                        "--seq-len is then the encoder (source) length "
                        "(default: --seq-len)")  # fmt: skip
    g.add_argument("--grad-accum", type=int, metavar="N",
                   help="gradient accumulation steps (default 1)")  # fmt: skip
    g.add_argument("--dtype", metavar="{fp32,bf16,fp16}",
                   help="parameter storage dtype (default fp32)")  # fmt: skip
    g.add_argument("--mixed-precision", metavar="{no,fp16,bf16}",
                   help="autocast over fp32 weights (default no)")  # fmt: skip
    g.add_argument("--optim", metavar="NAME",
                   help="transformers optimizer name (see `vramcalc optimizers`)")  # fmt: skip
    g.add_argument("--grad-ckpt", action=argparse.BooleanOptionalAction, default=None,
                   help="gradient checkpointing (default off; on for --trainer grpo/rloo, "
                        "as TRL's configs default)")  # fmt: skip
    g.add_argument("--images", type=int, metavar="N",
                   help="images per training row of a vision-language model (default 0); "
                        "their tokens are added to --seq-len")  # fmt: skip
    g.add_argument("--image-size", metavar="HxW",
                   help="image height x width in pixels (default: the processor's size; "
                        "Qwen-VL tokens grow with it, LLaVA/Gemma 3 resize to a fixed "
                        "square)")  # fmt: skip
    g.add_argument("--freeze-vision", action="store_true",
                   help="freeze the vision tower (the projector still trains)")  # fmt: skip
    g.add_argument("--attn", metavar="{eager,sdpa,flash_attention_2}",
                   help="attention implementation (default: what transformers picks for the "
                        "model: sdpa, or eager for Gemma-2, GPT-OSS, BLOOM)")  # fmt: skip
    g = p.add_argument_group(
        "framework and memory features",
        "the trainer whose code runs the step, and the memory features its recipes switch on "
        "(each refused where the framework does not have it; see docs/model.md)",
    )
    g.add_argument("--framework", metavar="{hf,litgpt,torchtune,unsloth}",
                   help="hf = transformers Trainer + PEFT, TRL, axolotl, LLaMA-Factory "
                        "(default)")  # fmt: skip
    g.add_argument("--loss", metavar="{full,chunked,fused_linear}",
                   help="loss implementation (default: the framework's)")  # fmt: skip
    g.add_argument("--loss-chunks", type=int, metavar="N",
                   help="chunks of a chunked/fused loss (default: the framework's)")  # fmt: skip
    g.add_argument("--activation-offload", action="store_true",
                   help="saved activations offloaded to CPU (torchtune, TRL, axolotl)")  # fmt: skip
    g.add_argument("--optimizer-in-backward", action="store_true",
                   help="optimizer step in each gradient's hook (torchtune)")  # fmt: skip
    g.add_argument("--packing", action="store_true",
                   help="samples packed into full seq-len rows, no padding")  # fmt: skip
    g.add_argument("--liger", action="store_true",
                   help="Liger kernels: RMSNorm, RoPE, SwiGLU, fused linear CE (hf)")  # fmt: skip
    g.add_argument("--compile", action="store_true",
                   help="torch.compile (an approximation, see notes)")  # fmt: skip
    g.add_argument("--checkpoint-offload", action="store_true",
                   help="offloaded checkpointing (Unsloth; needs --grad-ckpt)")  # fmt: skip
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
    g = p.add_argument_group(
        "parallelism",
        "--gpus x --nodes is the world size; data parallelism takes what tp, cp and pp leave",
    )
    g.add_argument("--gpus", type=int, metavar="N", help="GPUs per node (default 1)")
    g.add_argument("--nodes", type=int, metavar="N", help="nodes (default 1)")
    g.add_argument("--zero", metavar="{0,1,2,3}", help="DeepSpeed ZeRO stage (default 0)")
    g.add_argument("--offload-optimizer", metavar="{none,cpu,nvme}",
                   help="ZeRO optimizer-state offload")  # fmt: skip
    g.add_argument("--offload-param", metavar="{none,cpu,nvme}",
                   help="ZeRO-3 parameter offload")  # fmt: skip
    g.add_argument("--deepspeed", metavar="FILE",
                   help="a DeepSpeed config JSON (stage, offload, buckets, precision)")  # fmt: skip
    g.add_argument("--fsdp", metavar="{full_shard,shard_grad_op,hybrid_shard,no_shard}",
                   help="PyTorch FSDP sharding strategy (not with --zero/--deepspeed)")  # fmt: skip
    g.add_argument("--fsdp-version", metavar="{1,2}",
                   help="1 = FullyShardedDataParallel, 2 = fully_shard (default 2)")  # fmt: skip
    g.add_argument("--fsdp-offload", action="store_true",
                   help="FSDP CPU offload: parameters, gradients, optimizer states")  # fmt: skip
    g.add_argument("--fsdp-lora-in-blocks", action="store_true",
                   help="FSDP1 + LoRA: adapters inside their block's flat parameter "
                        "(transformer wrap policy alone, as Lightning Fabric wraps), so the "
                        "block's whole flat gradient is kept")  # fmt: skip
    g.add_argument("--fsdp-sync-each-batch", action="store_true",
                   help="with --grad-accum > 1: reduce-scatter gradients every micro-batch "
                        "(accelerate sync_each_batch) instead of accumulating them unsharded "
                        "under no_sync")  # fmt: skip
    g.add_argument("--fsdp-reshard-after-forward", metavar="{true,false}",
                   help="free gathered parameters after each layer's forward (default: true "
                        "for full_shard/hybrid_shard, false for shard_grad_op)")  # fmt: skip
    g.add_argument("--fsdp-use-orig-params", metavar="{true,false}",
                   help="FSDP1 use_orig_params (default true)")  # fmt: skip
    g.add_argument("--fsdp-limit-all-gathers", metavar="{true,false}",
                   help="FSDP1 limit_all_gathers (default true)")  # fmt: skip
    g.add_argument("--fsdp-backward-prefetch", metavar="{backward_pre,backward_post,none}",
                   help="FSDP1 backward prefetch (default backward_pre)")  # fmt: skip
    g.add_argument("--tp", type=int, metavar="N", help="tensor-parallel degree (default 1)")
    g.add_argument("--sequence-parallel", action="store_true",
                   help="Megatron sequence parallelism (needs --tp 2 or more)")  # fmt: skip
    g.add_argument("--cp", type=int, metavar="N", help="context-parallel degree (default 1)")
    g.add_argument("--pp", type=int, metavar="N", help="pipeline-parallel stages (default 1)")
    g.add_argument("--pp-schedule", metavar="{1f1b,interleaved}",
                   help="pipeline schedule (default 1f1b)")  # fmt: skip
    g.add_argument("--pp-virtual-stages", type=int, metavar="N",
                   help="model chunks per rank, --pp-schedule interleaved (default 2)")  # fmt: skip
    g.add_argument("--ep", type=int, metavar="N", help="expert-parallel degree (default 1)")
    g.add_argument("--accelerate-config", metavar="FILE",
                   help="an accelerate config YAML (distributed_type, fsdp_config, "
                        "deepspeed_config, mixed_precision, num_processes); options given "
                        "here must agree with it")  # fmt: skip
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
    g = p.add_argument_group("preference and RL trainers (TRL 1.16 names)")
    g.add_argument("--trainer", metavar="{sft,dpo,orpo,kto,simpo,cpo,reward,ppo,grpo,rloo}",
                   help="TRL trainer (default sft: a plain causal-LM step); -b counts "
                        "pairs (dpo/orpo/simpo/cpo/reward) or examples (kto)")  # fmt: skip
    g.add_argument("--beta", type=float, metavar="F",
                   help="TRL beta (DPO family; GRPO/RLOO: a reference model when > 0)")  # fmt: skip
    g.add_argument("--ref-model", metavar="{auto,copy}",
                   help="auto (default): as TRL does without ref_model (PEFT: the base with "
                        "adapters disabled; full: a second copy); copy: a separate reference "
                        "model")  # fmt: skip
    g.add_argument("--precompute-ref-log-probs", action="store_true",
                   help="reference log-probs computed before training (no reference "
                        "model in the step)")  # fmt: skip
    g.add_argument("--padding-free", action="store_true",
                   help="TRL padding_free (TRL 1.16 DPO falls back to padding)")  # fmt: skip
    g.add_argument("--padded-batch", action=argparse.BooleanOptionalAction, default=None,
                   help="dpo/kto/orpo/simpo/cpo/reward: rows of different lengths padded to "
                        "the longest, so an attention mask reaches SDPA (default: yes; "
                        "--no-padded-batch: every row is -s tokens)")  # fmt: skip
    g.add_argument("--num-generations", type=int, metavar="G",
                   help="grpo/rloo: completions per prompt (TRL default: grpo 8, rloo 2); "
                        "-b counts completions and b x GPUs x steps_per_generation must be "
                        "a multiple of G")  # fmt: skip
    g.add_argument("--max-completion-length", type=int, metavar="L",
                   help="grpo/rloo/ppo: generated tokens per completion (default 512; "
                        "ppo 53)")  # fmt: skip
    g.add_argument("--max-prompt-length", type=int, metavar="P",
                   help="grpo/rloo/ppo: prompt tokens (default 512; TRL 1.16 does not "
                        "truncate prompts)")  # fmt: skip
    g.add_argument("--steps-per-generation", type=int, metavar="N",
                   help="grpo/rloo: micro-batches generated at once (default: "
                        "--grad-accum)")  # fmt: skip
    g.add_argument("--vllm", metavar="{none,colocate,server}",
                   help="grpo/rloo generation: none (transformers generate, default), "
                        "colocate (a vLLM engine on the training GPU), server "
                        "(elsewhere)")  # fmt: skip
    g.add_argument("--vllm-gpu-memory-utilization", type=float, metavar="F",
                   help="grpo/rloo --vllm colocate: the engine's share of GPU memory "
                        "(TRL default 0.3)")  # fmt: skip
    g = p.add_argument_group("hardware, time and cost")
    g.add_argument("--gpu", metavar="NAME", help="check the fit on this GPU (see `vramcalc gpus`)")
    g.add_argument("--max-batch", action="store_true",
                   help="find the largest micro-batch that fits --gpu")  # fmt: skip
    g.add_argument("--global-batch", type=int, metavar="N",
                   help="with --max-batch: grad-accum to reach this global batch")  # fmt: skip
    g.add_argument("--tokens", type=int, metavar="N", help="training tokens per epoch")
    g.add_argument("--epochs", type=float, metavar="X", help="epochs (default 1)")
    g.add_argument("--mfu", type=float, metavar="X", help="model FLOPs utilisation, 0.001-1")
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


def _load_deepspeed(path: str | Path, option: str = "--deepspeed") -> dict[str, Any]:
    from vramcalc.limits import load_json

    data = load_json(str(path), option)
    if not isinstance(data, dict):
        raise InvalidConfigError(f"{option}: '{path}' must hold a JSON object")
    return data


def _load_accelerate(path: str) -> tuple[dict[str, Any], Path]:
    """Read an accelerate config YAML (``yaml.safe_load``); return it and the file's path."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InvalidConfigError(f"--accelerate-config: no file at '{p}'")
    try:
        import yaml
    except ImportError:
        raise InvalidConfigError(
            "--accelerate-config needs PyYAML; install it with `pip install pyyaml`"
        ) from None
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidConfigError(f"--accelerate-config: cannot read '{p}': {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InvalidConfigError(
            f"--accelerate-config: '{p}' is not valid YAML: {problem}{where}"
        ) from None
    if not isinstance(data, dict):
        raise InvalidConfigError(
            f"--accelerate-config: '{p}' must hold a mapping of keys to values (accelerate "
            f"config format), got {type(data).__name__}"
        )
    return data, p


def _bool_value(option: str, value: str) -> bool:
    text = value.strip().lower()
    if text not in ("true", "false"):
        raise UnknownNameError(f"{option} value", value, ["true", "false"])
    return text == "true"


def _int_choice(option: str, value: str, accepted: Sequence[int]) -> int:
    text = value.strip()
    if text not in [str(a) for a in accepted]:
        raise UnknownNameError(f"{option} value", value, [str(a) for a in accepted])
    return int(text)


def _layout_fields(ns: argparse.Namespace) -> dict[str, Any]:
    """Return the parallel-layout options the user gave (options not given stay unset)."""
    from vramcalc.enums import FsdpBackwardPrefetch, FsdpStrategy, Offload, PipelineSchedule

    fields: dict[str, Any] = {}
    for name in ("gpus", "nodes", "tp", "cp", "pp", "pp_virtual_stages", "ep"):
        if getattr(ns, name) is not None:
            fields[name] = getattr(ns, name)
    if ns.zero is not None:
        zero = ns.zero.strip()
        fields["zero"] = _int_choice("--zero stage", zero, range(4))
    for name, option, enum in (
        ("offload_optimizer", "--offload-optimizer", Offload),
        ("offload_param", "--offload-param", Offload),
        ("fsdp", "--fsdp", FsdpStrategy),
        ("fsdp_backward_prefetch", "--fsdp-backward-prefetch", FsdpBackwardPrefetch),
        ("pp_schedule", "--pp-schedule", PipelineSchedule),
    ):
        if getattr(ns, name) is not None:
            fields[name] = _enum_value(option, getattr(ns, name), enum)
    if ns.fsdp_version is not None:
        fields["fsdp_version"] = _int_choice("--fsdp-version", ns.fsdp_version, (1, 2))
    for name in ("fsdp_reshard_after_forward", "fsdp_use_orig_params", "fsdp_limit_all_gathers"):
        if getattr(ns, name) is not None:
            option = "--" + name.replace("_", "-")
            fields[name] = _bool_value(option, getattr(ns, name))
    flags = ("fsdp_offload", "fsdp_sync_each_batch", "fsdp_lora_in_blocks", "sequence_parallel")
    for name in flags:
        if getattr(ns, name):
            fields[name] = True
    if ns.deepspeed is not None:
        fields["deepspeed"] = _load_deepspeed(ns.deepspeed)
    if ns.accelerate_config is not None:
        fields.update(_accelerate_fields(ns))
    return fields


def _accelerate_fields(ns: argparse.Namespace) -> dict[str, Any]:
    """``accelerate_config`` (and the DeepSpeed JSON its ``deepspeed_config_file`` names)."""
    from vramcalc.accelerate_config import request_fields_from_accelerate

    cfg, path = _load_accelerate(ns.accelerate_config)
    out: dict[str, Any] = {"accelerate_config": cfg}
    ds_file = request_fields_from_accelerate(cfg).deepspeed_config_file
    if ds_file is not None:
        # accelerate opens the path from the launch directory; relative to the YAML's own
        # folder is what the file means when it travels with its JSON
        ds_path = Path(ds_file).expanduser()
        if not ds_path.is_absolute():
            ds_path = path.parent / ds_path
        if ns.deepspeed is not None and Path(ns.deepspeed).expanduser().resolve() != (
            ds_path.resolve()
        ):
            raise InvalidConfigError(
                f"--deepspeed {ns.deepspeed} and --accelerate-config's deepspeed_config_file "
                f"{ds_file} name two DeepSpeed configs; give one"
            )
        out["deepspeed"] = _load_deepspeed(ds_path, "--accelerate-config deepspeed_config_file")
    return out


def _config_names_model(cfg: dict[str, Any]) -> bool:
    from vramcalc.trainer_config import model_from_config

    return model_from_config(cfg) is not None


def _config_fields(ns: argparse.Namespace) -> dict[str, Any]:
    """``--config FILE``: the parsed file as ``config`` (+ the DeepSpeed JSON it names)."""
    from vramcalc.trainer_config import parse_config_text, request_fields_from_config

    p = Path(ns.config).expanduser()
    if not p.is_file():
        raise InvalidConfigError(f"--config: no file at '{p}'")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidConfigError(f"--config: cannot read '{p}': {exc}") from None
    cfg = parse_config_text(text, f"--config '{p}'")
    out: dict[str, Any] = {"config": cfg}
    ds_file = request_fields_from_config(cfg).deepspeed_config_file
    if ds_file is not None and ns.deepspeed is None:
        # the trainers open the path from the launch directory; next to the config file is
        # what it means when the two travel together
        ds_path = Path(ds_file).expanduser()
        if not ds_path.is_absolute():
            ds_path = p.parent / ds_path
        out["deepspeed"] = _load_deepspeed(ds_path, "--config deepspeed")
    return out


def build_request(ns: argparse.Namespace) -> EstimateRequest:
    """Turn parsed options into an ``EstimateRequest`` (validated by pydantic).

    Only the options the user gave become request fields; the rest keep the request's
    defaults and stay unset, so a flag that contradicts a ``--deepspeed`` file is told apart
    from a default (``vramcalc.checks``).
    """
    from vramcalc.enums import Attention, DType, MixedPrecision, Quant
    from vramcalc.specs import FEATURES, FRAMEWORKS, LOSS_KINDS, EstimateRequest

    fields: dict[str, Any] = {} if ns.model is None else {"model": ns.model}
    if getattr(ns, "config", None) is not None:
        fields.update(_config_fields(ns))
    if "model" not in fields and not ("config" in fields and _config_names_model(fields["config"])):
        raise _UsageError(
            "MODEL is required (a catalog name, config.json path or hub id), or a --config "
            f"file that names the model (see `{PROG} --help`)"
        )
    for name in ("batch_size", "seq_len", "target_len", "grad_accum", "optim", "epochs",
                 "gpu", "tokens", "mfu", "price_per_gpu_hour", "images",
                 "image_size"):  # fmt: skip
        if getattr(ns, name) is not None:
            fields[name] = getattr(ns, name)
    for name, enum in (
        ("dtype", DType),
        ("mixed_precision", MixedPrecision),
        ("attn", Attention),
        ("quant", Quant),
    ):
        if getattr(ns, name) is not None:
            option = "--" + name.replace("_", "-")
            fields[name] = _enum_value(option, getattr(ns, name), enum)
    if ns.ia3:
        fields["ia3"] = True
    if ns.grad_ckpt is not None:
        fields["grad_ckpt"] = ns.grad_ckpt
    if getattr(ns, "freeze_vision", False):
        fields["freeze_vision"] = True
    for flag in FEATURES:
        if getattr(ns, flag):
            fields[flag] = True
    for name, accepted in (("framework", FRAMEWORKS), ("loss", LOSS_KINDS)):
        value = getattr(ns, name)
        if value is not None:
            if value.strip().lower() not in accepted:
                raise UnknownNameError(f"--{name} value", value, list(accepted))
            fields[name] = value.strip().lower()
    if ns.loss_chunks is not None:
        fields["loss_chunks"] = ns.loss_chunks
    fields.update(_layout_fields(ns))
    for name, option, keys in (
        ("lora", "--lora", _LORA_KEYS),
        ("qlora", "--qlora", _LORA_KEYS),
        ("adapter", "--adapter", _ADAPTER_KEYS),
        ("prefix", "--prefix", _PROMPT_KEYS),
        ("prompt_tuning", "--prompt-tuning", _PROMPT_KEYS),
    ):
        text = getattr(ns, name)
        if text is not None:
            fields[name] = _typed_spec(option, parse_spec(option, text, keys))
    fields.update(_inference_fields(ns))
    fields.update(_trainer_fields(ns))
    return EstimateRequest(**fields)


def _trainer_fields(ns: argparse.Namespace) -> dict[str, Any]:
    """Return the ``--trainer`` options as request fields (only those given)."""
    from vramcalc.enums import Trainer

    out: dict[str, Any] = {}
    if getattr(ns, "trainer", None) is not None:
        out["trainer"] = _enum_value("--trainer", ns.trainer, Trainer)
    if getattr(ns, "ref_model", None) is not None:
        value = ns.ref_model.strip().lower()
        if value not in ("auto", "copy"):
            raise UnknownNameError("--ref-model value", ns.ref_model, ["auto", "copy"])
        out["ref_model"] = value
    if getattr(ns, "beta", None) is not None:
        out["beta"] = ns.beta
    for flag in ("precompute_ref_log_probs", "padding_free"):
        if getattr(ns, flag, False):
            out[flag] = True
    if getattr(ns, "padded_batch", None) is not None:
        out["padded_batch"] = ns.padded_batch
    for name in (
        "num_generations",
        "max_completion_length",
        "max_prompt_length",
        "steps_per_generation",
        "vllm_gpu_memory_utilization",
    ):
        if getattr(ns, name, None) is not None:
            out[name] = getattr(ns, name)
    if getattr(ns, "vllm", None) is not None:
        value = ns.vllm.strip().lower()
        accepted = ["none", "colocate", "server"]
        if value not in accepted:
            raise UnknownNameError("--vllm value", ns.vllm, accepted)
        out["vllm"] = value
    return out


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

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            # rich's default exits with status 1; ``run`` owns the broken-pipe exit
            self.quiet = True
            raise BrokenPipeError(32, "Broken pipe")

    width = min(Console().width, WIDTH)
    # emoji=False: text is printed as given (a model folder named ``a:rocket:b`` is not an
    # emoji), and rich does not import its 3,600-entry emoji table (~4 % of a cold table)
    return _Console(width=width, highlight=False, soft_wrap=False, emoji=False)


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


def _money(usd: float) -> str:
    return f"{usd:,.2f}" if usd < 1e12 else f"{usd:.3g}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    if seconds < 1e9 * 86400:
        return f"{seconds / 86400:.1f} days"
    return f"{seconds / 86400:.3g} days"


def _render_trainer(report: MemoryReport, console: Console) -> None:
    """Print a trainer's models and the allocated peak of each phase (steady state)."""
    from rich.table import Table

    models = Table(title=f"Models on the GPU ({report.assumptions['trainer']})",
                   title_justify="left", padding=(0, 1))  # fmt: skip
    models.add_column("model")
    models.add_column("GiB", justify="right")
    for key, v in report.details.items():
        if key.startswith("params/") and key not in ("params/inputs", "params/gathered"):
            models.add_row(key.split("/", 1)[1], f"{v / 2**30:.2f}")
    ref = report.assumptions.get("reference")
    if ref in ("adapter_disabled", "precomputed"):
        label = "the PEFT base, adapters disabled" if ref == "adapter_disabled" else (
            "precomputed log-probs"
        )  # fmt: skip
        models.add_row(f"reference ({label})", "0.00")
    console.print(models)
    phases = Table(title="Allocated peak by phase (steady state)", title_justify="left",
                   padding=(0, 1))  # fmt: skip
    phases.add_column("phase")
    phases.add_column("GiB", justify="right")
    phases.add_column("at", style="dim")
    last = max((e.step for e in report.timeline), default=1)
    best: dict[str, tuple[int, str]] = {}
    for e in report.timeline:
        if e.step == last and e.allocated_bytes > best.get(e.phase.value, (-1, ""))[0]:
            best[e.phase.value] = (e.allocated_bytes, e.event)
    for phase, (n, event) in best.items():
        phases.add_row(phase, f"{n / 2**30:.2f}", event)
    console.print(phases)


def render_report(report: MemoryReport, console: Console) -> None:
    """Print a ``MemoryReport`` as tables that fit ``console.width`` (80 columns)."""
    from rich.markup import escape
    from rich.table import Table

    from vramcalc.report import COMPONENTS

    m = report.model
    pct = 100 * m.n_trainable_params / m.n_params if m.n_params else 0.0
    title = m.name + (f" ({m.hf_id})" if m.hf_id and m.hf_id != m.name else "")
    # the name comes from the user (a folder, a config): shown as text, never as markup
    console.print(f"[bold]{escape(title)}[/] · {escape(m.model_type)}")
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
    layout = report.layout
    if layout is not None and not _trivial_layout(layout):
        console.print(f"layout: {layout.summary}", markup=False)

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
    if report.assumptions.get("trainer", "sft") != "sft":
        _render_trainer(report, console)
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
            f"Cost: ${_money(c.cost_usd)} at ${c.price_usd_per_gpu_hour:g} per GPU-hour "
            f"(MFU {c.mfu:g}, {c.flops_per_token / 1e9:.2f} GFLOP/token)"
        )
        for note in c.notes:
            console.print(f"[dim]  {note}[/]")
    for note in report.notes:
        console.print(f"[dim]note: {note}[/]")


def _trivial_layout(layout: Layout) -> bool:
    """One GPU, no sharding and no model parallelism: nothing worth a line."""
    return layout.world_size <= 1 and layout.engine == "none"


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
    if s.kv_layout:
        console.print(
            f"Sliding-window layers: {s.kv_layout}; vLLM reserves {s.kv_blocks_per_sequence:,} "
            f"blocks for a sequence of {s.request_len:,} tokens (a window plus "
            f"max_num_batched_tokens per windowed group), {s.kv_blocks_per_sequence_decode:,} "
            "once it decodes"
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
        f"[bold]{fit.max_batch_size}[/]" + (" or more" if fit.search_cap else "")
    )
    if fit.search_cap:
        console.print(
            f"[yellow]the search stops at {fit.search_cap}[/]: larger micro-batches were not tried"
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
            print(json.dumps(fit.model_dump(mode="json"), allow_nan=False))
        else:
            render_fit(fit, request, _console())
        return 0
    if ns.global_batch is not None:
        raise InvalidConfigError("--global-batch only applies with --max-batch")
    report = engine.estimate(request)
    if ns.json:
        print(json.dumps(report.model_dump(mode="json"), allow_nan=False))
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


def _cmd_plan(argv: Sequence[str]) -> int:
    from vramcalc.cli_plan import plan_main

    return plan_main(argv, _Parser)


def _cmd_calibrate(argv: Sequence[str]) -> int:
    calibrate = _repo_import("validation.calibrate", "validation")
    code: int = calibrate.calibrate_main(list(argv))
    return code


_COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "models": _cmd_models,
    "gpus": _cmd_gpus,
    "optimizers": _cmd_optimizers,
    "plan": _cmd_plan,
    "serve": _cmd_serve,
    "validate": _cmd_validate,
    "calibrate": _cmd_calibrate,
}


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (2 on bad input, with one stderr line)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "serve":
        # pydantic looks plugins up through every installed distribution's entry points
        # (importlib.metadata) the first time a model class is built: ~8 % of a cold
        # ``vramcalc MODEL --json`` (benchmarks/bench_cold.py). A one-shot command has no use
        # for them; the service keeps them. A value the user set wins.
        os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "1")
        _skip_plugin_loader()
    try:
        if args and args[0] in _COMMANDS:
            code = _COMMANDS[args[0]](args[1:])
        else:
            code = _cmd_estimate(args)
        # a reader that went away shows here, not in the interpreter's flush at exit
        if sys.stdout is not None:  # None when started with stdout closed (``>&-``)
            sys.stdout.flush()
        return code
    except BrokenPipeError:
        _stdout_to_devnull()
        return EXIT_BROKEN_PIPE
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
    print(f"{PROG}: error: {_one_line(message)}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _stdout_to_devnull() -> None:
    """Point stdout's file descriptor at ``os.devnull`` after a broken pipe.

    The recipe of the Python docs (signal module, "Note on SIGPIPE"): what is still buffered
    then goes nowhere at exit instead of raising ``BrokenPipeError`` a second time.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout without a descriptor (captured in tests)
        pass


def _one_line(message: str) -> str:
    """Escape line breaks and control characters a user's input brought into a message."""
    return "".join(
        ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii")
        for ch in message
    )


# pydantic's own test for "plugins disabled" (pydantic/plugin/_loader.py, get_plugins)
_PLUGINS_OFF = ("__all__", "1", "true")
_LOADER = "pydantic.plugin._loader"


def _skip_plugin_loader() -> None:
    """With plugins disabled, give pydantic a plugin loader that does not import importlib.metadata.

    pydantic 2.14 imports ``pydantic.plugin._loader`` when it builds the first model class,
    and that module imports ``importlib.metadata`` (email, zipfile, csv, ...: about 5 % of the
    instructions of a cold ``vramcalc gpt2 --json``) only to read entry points that
    ``PYDANTIC_DISABLE_PLUGINS`` then ignores. The stand-in has the one name pydantic takes
    from that module (``pydantic/plugin/_schema_validator.py``: ``from ._loader import
    get_plugins``; tests/test_cli.py checks this against the installed pydantic) and answers
    what the real one answers when plugins are off: no plugins. Nothing happens when pydantic
    is already imported or plugins are on.
    """
    if os.environ.get("PYDANTIC_DISABLE_PLUGINS") not in _PLUGINS_OFF or "pydantic" in sys.modules:
        return
    import types

    loader = types.ModuleType(_LOADER, "vramcalc's stand-in: plugins are disabled")
    loader.get_plugins = _no_plugins  # type: ignore[attr-defined]
    sys.modules.setdefault(_LOADER, loader)


def _no_plugins() -> tuple[()]:
    return ()


# one-shot commands that end through os._exit (below); serve/validate/calibrate/plan do not
_QUICK = ("models", "gpus", "optimizers")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console-script entry point: ``sys.exit(run(argv))``.

    A one-shot command (an estimate, ``models``, ``gpus``, ``optimizers``) runs with the
    cyclic garbage collector off (it allocates a few MB, and collections during the imports
    of pydantic and the model classes cost ~3 % of a cold start) and ends with ``os._exit``
    once its output is flushed, skipping the interpreter's teardown (module clean-up and a
    final collection: ~5 %) when no ``atexit`` handler and no other thread is there to need
    it. The output is the same bytes (tests/test_cli.py compares with ``run``).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    quick = not args or args[0] in _QUICK or args[0] not in _COMMANDS
    if not quick:
        sys.exit(run(args))
    import gc

    gc.disable()
    code = run(args)
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except BrokenPipeError:
        _stdout_to_devnull()
        code = EXIT_BROKEN_PIPE
    import atexit
    import threading

    ncallbacks = getattr(atexit, "_ncallbacks", None)
    if ncallbacks is not None and ncallbacks() == 0 and threading.active_count() == 1:
        os._exit(code)
    gc.enable()
    sys.exit(code)


if __name__ == "__main__":
    main()
