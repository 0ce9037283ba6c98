"""Trace TRL's real ``PPOTrainer`` step (trl 1.12.0, its last release with PPO).

PPO left TRL in 1.13 (``trl/experimental/ppo`` is in 1.12.0's wheel, not in 1.13.0's); the
installed trl (1.16) has none. trl 1.12.0 declares ``transformers>=4.56.2`` and imports
unmodified against transformers 5.24 / peft 0.21.2 / accelerate 1.15, so the tracer installs
that wheel alone (``pip install --no-deps --target DIR trl==1.12.0``, ``ensure_trl``; the
other packages are the environment's) and runs each scenario in a subprocess with ``DIR``
first on ``sys.path``. Nothing of the trainer is patched: ``PPOTrainer.train()`` runs as
released; the tracer only wraps module functions to name phases.

What runs: ``train()`` for two PPO updates (``total_episodes = 2 x b``, one PPO epoch, one
mini-batch, no gradient accumulation: each update is one rollout and one optimizer step) of
the small llama of ``validation/trl_rl_trace.py`` (random weights, built from a config):
policy ``AutoModelForCausalLM``, value and reward models ``AutoModelForSequenceClassification``
(``num_labels=1``) of the same checkpoint, the reference a ``create_reference_model`` copy
(full) or the policy's disabled adapter (LoRA), a tokenizer and a dataset of prompts of
exactly ``PROMPT`` tokens built in memory. ``stop_token`` is unset (TRL's default), so the
policy's ``eos_token_id`` is None and every response is ``response_length`` tokens long.
The step runs for real on the CPU under the storage tracker of ``validation/trace.py``
(every storage an op returns, rounded to 512 B, released through a weakref); PPO has no
fused head or other CUDA-only kernel to substitute. The optimizer is ``adamw_torch_fused``
(torch's fused AdamW has a CPU kernel with a GPU's allocations; ``adamw_torch`` would take the
for-loop path on a CPU where a GPU takes foreach). The one stand-in (``_no_pad``) keeps a
sampled pad token from cutting a response short.

What TRL 1.12 does with these options (read from its code, and what the trace shows):
``PPOTrainer.__init__`` builds its own ``Accelerator(gradient_accumulation_steps=...)`` and
never calls ``Trainer.__init__``, so ``bf16=True`` and ``gradient_checkpointing=True``
(PPOConfig's defaults) have no effect under transformers 5 (``TrainingArguments`` no longer
exports ``ACCELERATE_MIXED_PRECISION``): no autocast, no checkpointing; the request says so
(``grad_ckpt`` false, weights in bf16).

Phases: ``generation`` (``batch_generation``: ``generate`` with ``output_scores=True``),
``logprobs`` (the no-grad rollout scoring: the generation scores' log-probs, the reference
forward, the value and reward models, advantages), ``forward`` (the policy+value forward and
the PPO loss), ``backward``, ``optimizer``. Step n is the n-th PPO update. The ``logprobs``
phase starts when ``batch_generation`` returns, before ``train`` rebinds ``logitss``: its
recorded peak is that instant, the previous and the new rollout's scores both alive (the
estimate counts it in its last generation event).

Run::

    python -m validation.trl_ppo_trace --out validation/measurements/trace-trl.jsonl
    python -m validation.trl_ppo_trace --only ppo-lora
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from validation.trl_rl_trace import print_result, run_child, trace_cli

__all__ = ["SCENARIOS", "TRL_VERSION", "ensure_trl", "run_ppo_trace", "scenario_request", "trace"]

REPO = Path(__file__).resolve().parents[1]
TRL_VERSION = "1.12.0"  # the last trl release with trl/experimental/ppo (1.13.0 has none)
LAST_TRACKER: Any = None

# id -> shape; b = per_device_train_batch_size, L = response_length
SCENARIOS: dict[str, dict[str, Any]] = {
    "ppo-full": {"batch": 8, "response": 48},
    "ppo-lora": {"batch": 8, "response": 48, "lora": True},
    "ppo-full-b4-r96": {"batch": 4, "response": 96},
    "ppo-lora-b16-r24": {"batch": 16, "response": 24, "lora": True},
}
PROMPT = 16
LORA_R = 8
LORA_TARGETS = ["q_proj", "v_proj"]


def _model() -> dict[str, Any]:
    from validation.trl_rl_trace import MODEL

    return dict(MODEL)


def scenario_request(sid: str) -> dict[str, Any]:
    """Return the ``EstimateRequest`` fields of scenario ``sid``."""
    s = SCENARIOS[sid]
    req: dict[str, Any] = {
        "model": _model(),
        "trainer": "ppo",
        "batch_size": s["batch"],
        "dtype": "bf16",
        "optim": "adamw_torch_fused",
        "grad_ckpt": False,
        "attn": "sdpa",
        "max_prompt_length": PROMPT,
        "max_completion_length": s["response"],
    }
    if s.get("lora"):
        # PPOTrainer runs disable_dropout_in_model on the policy: LoRA's dropout is p=0
        req["lora"] = {"r": LORA_R, "alpha": 16, "dropout": 0.0, "targets": list(LORA_TARGETS)}
    return req


# ----------------------------------------------------------------------------- trl 1.12


def default_dir() -> Path:
    """Where ``ensure_trl`` installs trl 1.12.0 (``VRAMCALC_PPO_TRL`` overrides)."""
    env = os.environ.get("VRAMCALC_PPO_TRL")
    if env:
        return Path(env)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "vramcalc" / f"trl-{TRL_VERSION}"


def ensure_trl(target: Path | None = None) -> Path:
    """Install trl 1.12.0 alone into ``target`` (once) and return it.

    ``pip install --no-deps --target``: only TRL's own files; torch, transformers, peft,
    accelerate and datasets stay the environment's. Raises ``RuntimeError`` if pip fails
    (no network).
    """
    target = target or default_dir()
    if (target / "trl" / "experimental" / "ppo" / "ppo_trainer.py").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # into a fresh sibling folder, renamed when complete: an interrupted install leaves no
    # half-filled target behind
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp),
         f"trl=={TRL_VERSION}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"pip install trl=={TRL_VERSION} failed: {proc.stderr[-2000:]}")
    try:
        tmp.rename(target)
    except OSError:  # another process installed it first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# ----------------------------------------------------------------------------- one trace


@contextlib.contextmanager
def _no_pad() -> Iterator[None]:
    """Suppress the pad token in place, allocating nothing (a processor-free sampling step).

    transformers' ``SuppressTokensLogitsProcessor`` builds a vocabulary mask and a
    ``torch.where`` copy of the scores; the stand-in masks the column of the step's fresh fp32
    scores in place, so the rollout allocates what TRL's own generation config does.
    """
    import math

    from transformers.generation import logits_process as lp

    def masked(self: Any, input_ids: Any, scores: Any) -> Any:
        scores[:, self.suppress_tokens.tolist()] = -math.inf
        return scores

    call = lp.SuppressTokensLogitsProcessor.__call__
    lp.SuppressTokensLogitsProcessor.__call__ = masked  # type: ignore[method-assign]
    try:
        yield
    finally:
        lp.SuppressTokensLogitsProcessor.__call__ = call  # type: ignore[method-assign]


def run_ppo_trace(sid: str) -> dict[str, Any]:
    """Run scenario ``sid`` in THIS process (trl 1.12 importable) and return ``Measured``."""
    import torch  # noqa: TID251
    import trl
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        LlamaConfig,
    )
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as pt

    from validation.trace import ROUND_BYTES, _make_tracker
    from validation.trl_rl_trace import _tokenizer

    assert trl.__version__ == TRL_VERSION, trl.__version__
    s = SCENARIOS[sid]
    B, L = s["batch"], s["response"]
    model_cfg = _model()
    V = model_cfg["vocab_size"]
    cfg_kw = {k: v for k, v in model_cfg.items() if k != "model_type"}
    cfg = LlamaConfig(**cfg_kw, eos_token_id=V - 2, pad_token_id=V - 3, bos_token_id=None)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa")
    tmp = tempfile.mkdtemp(prefix="vramcalc-ppo-")
    base.save_pretrained(tmp)
    del base
    kw: dict[str, Any] = {"dtype": torch.bfloat16, "attn_implementation": "sdpa"}
    policy = AutoModelForCausalLM.from_pretrained(tmp, **kw)
    value = AutoModelForSequenceClassification.from_pretrained(tmp, num_labels=1, **kw)
    reward = AutoModelForSequenceClassification.from_pretrained(tmp, num_labels=1, **kw)
    tok = _tokenizer(V)
    prompts = [" ".join(f"t{(i * 7 + j) % (V - 3)}" for j in range(PROMPT)) for i in range(64)]
    ds = Dataset.from_dict({"input_ids": [tok(p)["input_ids"] for p in prompts]})
    args = PPOConfig(
        output_dir=f"{tmp}/out", per_device_train_batch_size=B, gradient_accumulation_steps=1,
        num_ppo_epochs=1, num_mini_batches=1, total_episodes=2 * B, response_length=L,
        num_sample_generations=0, report_to=[], save_strategy="no", seed=0,
        optim="adamw_torch_fused", use_cpu=True,
    )  # fmt: skip
    peft_config = None
    if s.get("lora"):
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=LORA_R, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS,
            task_type="CAUSAL_LM",
        )  # fmt: skip
    trainer = PPOTrainer(
        args=args, processing_class=tok, model=policy, ref_model=None, reward_model=reward,
        train_dataset=ds, value_model=value, peft_config=peft_config,
    )  # fmt: skip
    del policy, value, reward
    tracker = _make_tracker("cpu", ROUND_BYTES)
    models = [trainer.model, trainer.reward_model] + (
        [trainer.ref_model] if trainer.ref_model is not None else []
    )

    def classify() -> None:
        params = [p for m in models for p in m.parameters()]
        tracker.mark([p.grad for p in params if p.grad is not None], "gradients")
        inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
        states = [v for st in inner.state.values() for v in st.values() if hasattr(v, "device")]
        tracker.mark(states, "optimizer")

    def phase(step: int, name: str) -> None:
        classify()
        tracker.set_phase(step, name)

    batch_generation, forward = pt.batch_generation, pt.forward
    pad = tok.pad_token_id

    def gen(*a: Any, **k: Any) -> Any:
        phase(tracker.step + 1, "generation")
        # a sampled pad token would cut the response short (TRL masks pad tokens as padding):
        # the pad column is suppressed, in place (``_no_pad``), so every response is full
        gc = k["generation_config"] if "generation_config" in k else a[4]
        gc.suppress_tokens = [pad]
        out = batch_generation(*a, **k)
        assert not bool((out[0][:, PROMPT:] == pad).any()), "a pad token was sampled"
        phase(tracker.step, "logprobs")
        return out

    def fwd(*a: Any, **k: Any) -> Any:
        if torch.is_grad_enabled():
            phase(tracker.step, "forward")
        return forward(*a, **k)

    backward = trainer.accelerator.backward

    def accel_backward(*a: Any, **k: Any) -> Any:
        phase(tracker.step, "backward")
        return backward(*a, **k)

    opt_step = trainer.optimizer.step

    def step(*a: Any, **k: Any) -> Any:
        phase(tracker.step, "optimizer")
        return opt_step(*a, **k)

    pt.batch_generation, pt.forward = gen, fwd
    trainer.accelerator.backward = accel_backward
    trainer.optimizer.step = step
    try:
        with _no_pad(), tracker:
            for m in models:
                tracker.mark(m.parameters(), "params")
                tracker.mark(m.buffers(), "params")
            trainer.train()
    finally:
        pt.batch_generation, pt.forward = batch_generation, forward
    global LAST_TRACKER
    LAST_TRACKER = tracker
    return {
        "allocated_bytes": tracker.peak,
        "phase": tracker.peak_phase,
        "step": tracker.peak_step,
        "per_phase_peak": {k: v for k, v in tracker.per_phase.items() if not k.startswith("0/")},
        "by_category": tracker.at_peak(),
    }


# ----------------------------------------------------------------------------- records


def _fingerprint() -> dict[str, Any]:
    import importlib.metadata as md

    import trl

    def ver(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    return {
        "backend": "trace",
        "device": "cpu step (PPOTrainer has no CUDA-only kernel)",
        "torch": ver("torch"),
        "transformers": ver("transformers"),
        "peft": ver("peft"),
        "trl": trl.__version__,
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
        "trainer": "ppo",
    }
    Measurement.model_validate(line)
    return line


def _child(sid: str) -> int:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    t0 = time.perf_counter()
    measured = run_ppo_trace(sid)
    line = as_measurement(
        sid, measured, created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        wall_s=round(time.perf_counter() - t0, 2),
    )  # fmt: skip
    return print_result(line)


def trace(sid: str, timeout_s: float = 900, trl_dir: Path | None = None) -> dict[str, Any]:
    """Trace scenario ``sid`` in a fresh subprocess with trl 1.12.0 first on ``sys.path``."""
    trl_dir = ensure_trl(trl_dir)
    env = dict(os.environ)
    path = [str(trl_dir), str(REPO), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(path).rstrip(os.pathsep)
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    env.setdefault("TQDM_DISABLE", "1")
    env.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    env.pop("ACCELERATE_MIXED_PRECISION", None)  # what a plain `python train.py` sees
    return run_child("validation.trl_ppo_trace", sid, timeout_s=timeout_s, env=env)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m validation.trl_ppo_trace", description=__doc__)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--only", action="append", help="scenario id (repeatable; default all)")
    parser.add_argument("--out", type=Path, help="append one JSON line per scenario to this file")
    parser.add_argument("--trl-dir", type=Path, help="where trl 1.12.0 is (or is installed)")
    args = parser.parse_args(argv)
    if args.child:
        return _child(args.child)
    ids = args.only or list(SCENARIOS)
    return trace_cli(
        ids, list(SCENARIOS), lambda sid: trace(sid, trl_dir=args.trl_dir), args.out, digits=3
    )


if __name__ == "__main__":
    raise SystemExit(main())
