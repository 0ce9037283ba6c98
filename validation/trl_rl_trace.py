"""Trace TRL 1.16's real ``GRPOTrainer`` / ``RLOOTrainer`` step (generation included).

What runs: ``trainer.train()`` for two optimizer steps of a small llama model built from a
config (random weights, saved to a temporary folder so TRL can load its reference copy from
it), a tokenizer built in memory (``tokenizers`` WordLevel, one token per word, no hub), an
in-memory ``datasets.Dataset`` of prompts of exactly ``max_prompt_length`` tokens and a
trivial reward function. Generation is transformers' ``generate`` (sampling, DynamicCache);
``generation_kwargs={"min_new_tokens": L}`` makes every completion exactly
``max_completion_length`` tokens long, which is the worst case the estimate models.

How it is measured: the step runs for real on the CPU (TRL's generation, tokenisation,
reward and metric code reads tensor values, which fake tensors cannot give) under the same
storage tracker as ``validation/trace.py`` (every storage an op returns, rounded to 512 B;
released through a weakref). What would differ from a CUDA GPU is replaced by what a GPU
runs, so the bytes are a GPU's:

- TRL's fused LM head (``trl/kernels/chunked_logprob.py``) takes its Triton path on CUDA: it
  scores only the completion positions (``compact``, ``trl/trainer/utils.py``
  ``add_fused_lm_head``) and its kernels fold each ``[tokens, 32768]`` logits tile in place.
  Here ``_use_triton`` answers True and the two kernels are stand-ins that run TRL's own
  torch fold of the tile (``_forward_tile`` / ``_backward_tile``) with the tracker paused
  (a Triton kernel's work lives in registers); ``_addmm_fp32`` accumulates in place as
  ``torch.addmm(..., out_dtype=float32, out=acc)`` does on CUDA.
- the optimizer is what TRL's config asks for (``adamw_torch_fused``: torch's fused AdamW,
  which has a CPU kernel with the same allocations).

Phases: ``generation`` (``_generate_single_turn``), ``logprobs`` (the no-grad old/reference
log-prob forwards in ``_generate_and_score_completions``), ``forward`` (the policy's
log-prob forward in ``_compute_loss``), ``backward``, ``optimizer``. Step n is the n-th
optimizer step; its generation belongs to it.

Run::

    python -m validation.trl_rl_trace --out validation/measurements/trace-trl.jsonl
    python -m validation.trl_rl_trace --only grpo-g4-lora-beta

vLLM is not traced (it needs a GPU; the colocate reservation is derived from vLLM's
documented memory profiling, see ``vramcalc/formulas/rl.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "SCENARIOS",
    "TRACE_PHASES",
    "as_measurement",
    "phase_peak",
    "print_result",
    "run_child",
    "run_rl_trace",
    "scenario_request",
    "trace",
    "trace_cli",
]

REPO = Path(__file__).resolve().parents[1]
LAST_TRACKER: Any = None  # the last in-process trace's tracker (for debugging)

# A small llama (GQA) whose LM head, KV cache and activations are all visible next to the
# weights: hidden 128, 2 layers, 4 heads (2 KV), vocabulary 4096, untied.
MODEL: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 128,
    "intermediate_size": 344,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 4096,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": False,
}

# id -> trainer fields (TRL's names); batch_size = per_device_train_batch_size (completions)
SCENARIOS: dict[str, dict[str, Any]] = {
    "grpo-g2-full-beta0-ckpt": {"trainer": "grpo", "num_generations": 2, "beta": 0.0},
    "grpo-g4-full-beta-ckpt": {"trainer": "grpo", "num_generations": 4, "beta": 0.04},
    "grpo-g4-full-beta0-nockpt": {
        "trainer": "grpo", "num_generations": 4, "beta": 0.0, "grad_ckpt": False,
    },
    "grpo-g4-lora-beta-ckpt": {
        "trainer": "grpo", "num_generations": 4, "beta": 0.04, "lora": True,
    },
    "grpo-g2-lora-beta0-nockpt": {
        "trainer": "grpo", "num_generations": 2, "beta": 0.0, "lora": True, "grad_ckpt": False,
    },
    "grpo-g4-full-beta0-spg2": {
        "trainer": "grpo", "num_generations": 4, "beta": 0.0, "steps_per_generation": 2,
    },
    "rloo-g4-full-beta-ckpt": {"trainer": "rloo", "num_generations": 4, "beta": 0.05},
}  # fmt: skip

BATCH = 8
PROMPT = 16
COMPLETION = 48
LORA_R = 8
LORA_TARGETS = ["q_proj", "v_proj"]


def scenario_request(sid: str) -> dict[str, Any]:
    """Return the ``EstimateRequest`` fields of scenario ``sid`` (what the estimate is asked)."""
    s = SCENARIOS[sid]
    req: dict[str, Any] = {
        "model": dict(MODEL),
        "trainer": s["trainer"],
        "batch_size": BATCH,
        "dtype": "bf16",
        "optim": "adamw_torch_fused",
        "grad_ckpt": s.get("grad_ckpt", True),
        "attn": "sdpa",
        "num_generations": s["num_generations"],
        "max_prompt_length": PROMPT,
        "max_completion_length": COMPLETION,
        "beta": s["beta"],
        "steps_per_generation": s.get("steps_per_generation", 1),
    }
    if s.get("lora"):
        req["lora"] = {"r": LORA_R, "alpha": 16, "dropout": 0.05, "targets": list(LORA_TARGETS)}
    return req


# ----------------------------------------------------------------------------- stand-ins


@contextlib.contextmanager
def _gpu_kernels(tracker: Any) -> Iterator[None]:
    """Make TRL's fused LM head take its CUDA/Triton path, with Triton's in-place kernels."""
    import torch  # noqa: TID251
    from trl.kernels import chunked_logprob as cl
    from trl.trainer import utils as trl_utils

    class _Kernel:
        def __init__(self, fn: Any) -> None:
            self.fn = fn

        def __getitem__(self, _grid: Any) -> Any:
            def run(*args: Any, **kwargs: Any) -> None:
                tracker.ignore += 1  # a Triton program keeps its tile work in registers
                try:
                    self.fn(*args, **kwargs)
                finally:
                    tracker.ignore -= 1

            return run

    def addmm_fp32(acc: Any, a: Any, b: Any) -> None:
        # CUDA: torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc), no temporary
        tracker.ignore += 1
        try:
            acc.addmm_(a.float(), b.float())
        finally:
            tracker.ignore -= 1

    class _Triton:
        @staticmethod
        def cdiv(a: int, b: int) -> int:
            return -(-a // b)

    saved = [
        (cl, "_use_triton", cl._use_triton),
        (trl_utils, "_use_triton", trl_utils._use_triton),
        (cl, "_addmm_fp32", cl._addmm_fp32),
    ]
    had_fwd = hasattr(cl, "_forward_kernel")
    fwd, bwd = cl._forward_kernel, cl._backward_kernel
    had_triton = hasattr(cl, "triton")
    cl._use_triton = lambda device: True
    trl_utils._use_triton = lambda device: True
    cl._addmm_fp32 = addmm_fp32
    cl._forward_kernel = _Kernel(cl._forward_tile)
    cl._backward_kernel = _Kernel(cl._backward_tile)
    if not had_triton:
        cl.triton = _Triton  # type: ignore[attr-defined]
    del torch
    try:
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)
        if had_fwd:
            cl._forward_kernel, cl._backward_kernel = fwd, bwd
        if not had_triton:
            del cl.triton


@contextlib.contextmanager
def _eos_never() -> Iterator[None]:
    """Keep every completion ``max_completion_length`` long without extra sampling buffers.

    ``min_new_tokens`` adds transformers' ``MinLength``/``MinNewTokensLength`` logits
    processors, which clone the ``B x V`` scores and build a masked copy; a real GRPO run
    (temperature 1, top_k 0, top_p 1) runs no processor. The stand-ins mask the EOS column of
    the scores in place, which allocates nothing, like the processor-free path.
    """
    import math

    from transformers.generation import logits_process as lp

    def masked(self: Any, input_ids: Any, scores: Any) -> Any:
        eos = self.eos_token_id
        ids = eos.tolist() if hasattr(eos, "tolist") else eos
        scores[:, ids] = -math.inf
        return scores

    saved = [
        (c, c.__call__) for c in (lp.MinLengthLogitsProcessor, lp.MinNewTokensLengthLogitsProcessor)
    ]
    for cls, _ in saved:
        cls.__call__ = masked  # type: ignore[method-assign]
    try:
        yield
    finally:
        for cls, call in saved:
            cls.__call__ = call  # type: ignore[method-assign]


# ----------------------------------------------------------------------------- one trace


def _tokenizer(vocab_size: int) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"t{i}": i for i in range(vocab_size - 3)}
    words.update({"<pad>": vocab_size - 3, "<eos>": vocab_size - 2, "<unk>": vocab_size - 1})
    tk = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def run_rl_trace(sid: str) -> dict[str, Any]:
    """Run scenario ``sid`` in THIS process and return the ``Measured`` fields."""
    import torch  # noqa: TID251
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, LlamaConfig, TrainerCallback

    from validation.trace import ROUND_BYTES, _make_tracker

    s = SCENARIOS[sid]
    V = MODEL["vocab_size"]
    cfg_kw = {k: v for k, v in MODEL.items() if k != "model_type"}
    cfg = LlamaConfig(**cfg_kw, eos_token_id=V - 2, pad_token_id=V - 3, bos_token_id=None)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa")
    tmp = tempfile.mkdtemp(prefix="vramcalc-trl-")
    model.save_pretrained(tmp)
    del model
    tok = _tokenizer(V)
    prompts = [" ".join(f"t{(i * 7 + j) % (V - 3)}" for j in range(PROMPT)) for i in range(256)]
    ds = Dataset.from_dict({"prompt": prompts})

    def reward(completions: list[str], **_kw: Any) -> list[float]:
        return [float(len(c) % 7) for c in completions]

    common = {
        "output_dir": f"{tmp}/out",
        "per_device_train_batch_size": BATCH,
        "num_generations": s["num_generations"],
        "max_completion_length": COMPLETION,
        "beta": s["beta"],
        "use_cpu": True,
        "report_to": [],
        "max_steps": 2,
        "logging_steps": 1,
        "save_strategy": "no",
        "generation_kwargs": {"min_new_tokens": COMPLETION},
        "bf16": True,
        "gradient_checkpointing": s.get("grad_ckpt", True),
        "steps_per_generation": s.get("steps_per_generation", 1),
        "seed": 0,
        # ``--dtype bf16``: the weights are loaded in bf16 (TRL's ``create_model_from_path``
        # defaults to float32); ``bf16=True`` (GRPOConfig's default) adds autocast
        "model_init_kwargs": {"dtype": "bfloat16"},
    }
    peft_config = None
    if s.get("lora"):
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=LORA_R, lora_alpha=16, lora_dropout=0.05, target_modules=LORA_TARGETS,
            task_type="CAUSAL_LM",
        )  # fmt: skip
    if s["trainer"] == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        args: Any = GRPOConfig(**common)
        trainer: Any = GRPOTrainer(
            model=tmp, reward_funcs=reward, args=args, train_dataset=ds,
            processing_class=tok, peft_config=peft_config,
        )  # fmt: skip
    else:
        from trl import RLOOConfig, RLOOTrainer

        args = RLOOConfig(**common)
        trainer = RLOOTrainer(
            model=tmp, reward_funcs=reward, args=args, train_dataset=ds,
            processing_class=tok, peft_config=peft_config,
        )  # fmt: skip

    tracker = _make_tracker("cpu", ROUND_BYTES)
    models = [trainer.model] + ([trainer.ref_model] if trainer.ref_model is not None else [])

    def classify() -> None:
        params = [p for m in models for p in m.parameters()]
        tracker.mark([p.grad for p in params if p.grad is not None], "gradients")
        opt = trainer.optimizer
        if opt is not None:
            inner = getattr(opt, "optimizer", opt)
            states = [v for st in inner.state.values() for v in st.values() if hasattr(v, "device")]
            tracker.mark(states, "optimizer")

    def phase(name: str) -> None:
        classify()
        tracker.set_phase(tracker.step, name)

    gen = trainer._generate_single_turn
    logps = trainer._get_per_token_logps_and_entropies

    def generate(*a: Any, **k: Any) -> Any:
        phase("generation")
        out = gen(*a, **k)
        phase("logprobs")
        return out

    def per_token_logps(*a: Any, **k: Any) -> Any:
        phase("forward" if torch.is_grad_enabled() else "logprobs")
        return logps(*a, **k)

    backward = trainer.accelerator.backward

    def accel_backward(*a: Any, **k: Any) -> Any:
        phase("backward")
        return backward(*a, **k)

    class Phases(TrainerCallback):  # type: ignore[misc]
        def on_step_begin(self, *_a: Any, **_k: Any) -> None:
            classify()
            tracker.set_phase(tracker.step + 1, "input")

        def on_pre_optimizer_step(self, *_a: Any, **_k: Any) -> None:
            phase("optimizer")

        def on_optimizer_step(self, *_a: Any, **_k: Any) -> None:
            phase("optimizer")

    trainer._generate_single_turn = generate
    trainer._get_per_token_logps_and_entropies = per_token_logps
    trainer.accelerator.backward = accel_backward
    trainer.add_callback(Phases())
    with _gpu_kernels(tracker), _eos_never(), tracker:
        for m in models:
            tracker.mark(m.parameters(), "params")
            tracker.mark(m.buffers(), "params")
        trainer.train()
    global LAST_TRACKER
    LAST_TRACKER = tracker
    step, ph = tracker.peak_step, tracker.peak_phase
    return {
        "allocated_bytes": tracker.peak,
        "phase": ph,
        "step": step,
        "per_phase_peak": {k: v for k, v in tracker.per_phase.items() if not k.startswith("0/")},
        "by_category": tracker.at_peak(),
    }


# ----------------------------------------------------------------------------- records


def _fingerprint() -> dict[str, Any]:
    import importlib.metadata as md

    def ver(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    return {
        "backend": "trace",
        "device": "cpu step, CUDA kernels' allocations (TRL fused LM head on its Triton path)",
        "torch": ver("torch"),
        "transformers": ver("transformers"),
        "peft": ver("peft"),
        "trl": ver("trl"),
        "python": platform.python_version(),
    }


def as_measurement(
    sid: str, measured: dict[str, Any], *, created: str, wall_s: float | None
) -> dict[str, Any]:
    """Return one ``trace-trl.jsonl`` line (``validation.records.Measurement`` + ``trainer``)."""
    from validation.records import Measurement

    line = {
        "scenario": {"id": sid, "request": scenario_request(sid), "steps": 2},
        "fingerprint": _fingerprint(),
        "measured": measured,
        "created": created,
        "wall_s": wall_s,
        "trainer": SCENARIOS[sid]["trainer"],
    }
    Measurement.model_validate(line)  # the shared record format of validation/measurements
    return line


def _child(sid: str) -> int:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TQDM_DISABLE", "1")
    t0 = time.perf_counter()
    measured = run_rl_trace(sid)
    line = as_measurement(
        sid, measured, created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        wall_s=round(time.perf_counter() - t0, 2),
    )  # fmt: skip
    return print_result(line)


# the tracers name the no-grad scoring passes (old / reference log-probs) "logprobs"; the
# estimate files them under its rollout phase, "generation"
TRACE_PHASES = {"logprobs": "generation"}


def phase_peak(report: Any, step: int, phase: str, event_prefix: str = "") -> int:
    """Return the most bytes a timeline event of ``step``/``phase`` holds (0 if none).

    Only events whose name starts with ``event_prefix`` count.
    """
    return max(
        (
            e.allocated_bytes
            for e in report.timeline
            if e.step == step and e.phase.value == phase and e.event.startswith(event_prefix)
        ),
        default=0,
    )


def print_result(line: dict[str, Any]) -> int:
    """Print a child's result line for ``run_child`` to pick up; return the exit status."""
    print("RESULT " + json.dumps(line, sort_keys=True), flush=True)
    return 0


def run_child(
    module: str, sid: str, *, timeout_s: float, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run ``python -m module --child sid`` from the repository root; return its result line.

    ``env`` defaults to this process's environment with the repository on ``PYTHONPATH``.
    """
    import subprocess

    if env is None:
        env = dict(os.environ)
        path = [str(REPO), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(path).rstrip(os.pathsep)
    proc = subprocess.run(
        [sys.executable, "-m", module, "--child", sid],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout_s, check=False,
    )  # fmt: skip
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            out: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return out
    raise RuntimeError(f"tracing {sid} failed (rc={proc.returncode}): {proc.stderr[-3000:]}")


def trace(sid: str, timeout_s: float = 900) -> dict[str, Any]:
    """Trace scenario ``sid`` in a fresh subprocess; returns the JSON line's object."""
    return run_child("validation.trl_rl_trace", sid, timeout_s=timeout_s)


def trace_cli(
    ids: Sequence[str],
    known: Sequence[str],
    trace_one: Callable[[str], dict[str, Any]],
    out: Path | None,
    *,
    digits: int = 2,
) -> int:
    """Trace ``ids`` one by one, print each peak and append the lines to ``out``."""
    for sid in ids:
        if sid not in known:
            print(f"error: unknown scenario {sid!r}; known: {', '.join(known)}", file=sys.stderr)
            return 2
    for sid in ids:
        line = trace_one(sid)
        m = line["measured"]
        cats = " ".join(f"{k}={v / 2**20:.2f}" for k, v in m["by_category"].items())
        peak = m["allocated_bytes"] / 2**20
        print(f"{sid}: {peak:.{digits}f} MiB step {m['step']} {m['phase']} [{cats}] "
              f"{line['wall_s']}s", flush=True)  # fmt: skip
        if out:
            with out.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(line, sort_keys=True) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m validation.trl_rl_trace", description=__doc__)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--only", action="append", help="scenario id (repeatable; default all)")
    parser.add_argument("--out", type=Path, help="append one JSON line per scenario to this file")
    args = parser.parse_args(argv)
    if args.child:
        return _child(args.child)
    return trace_cli(args.only or list(SCENARIOS), list(SCENARIOS), trace, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
