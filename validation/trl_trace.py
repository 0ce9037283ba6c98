"""Trace TRL's real trainers (DPO, KTO, ORPO, CPO/SimPO, reward) on fake CUDA.

A TRL trainer is built for real on the CPU with a tiny copy of the scenario's model (same
config, one layer) from a tiny in-memory ``datasets.Dataset`` and an in-memory word-level
tokenizer -- TRL's own ``__init__`` tokenizes the dataset, picks the reference, adds the fused
LM head. Then, under ``FakeTensorMode`` on the fake CUDA device, the scenario's full-size
policy (and reference copy) replace the CPU ones, a batch from the trainer's own data collator
is moved to the device, and ``scenario.steps`` steps run TRL's ``compute_loss`` -> ``backward``
-> optimizer step -> ``zero_grad(set_to_none=True)`` under the tracker of ``validation/trace.py``.

Phases: ``forward`` (the policy's forward, and any no-grad forward: the reference, KTO's KL
completions), ``loss`` (from the policy's LM-head kernel / score head / logits on), ``backward``,
``optimizer``. Fake tensors cannot answer data-dependent reads: ``Tensor.item`` returns 0.0
(TRL's metrics) and ``bool(t)`` answers "not all padding" as a real unpadded batch would.
No autocast: the scenarios use ``--mixed-precision no`` (TRL's configs default to
``bf16=True``, which is set to False here to match).

CLI::

    python -m validation.trl_trace [--scenario-id ID ...] \
        [--out validation/measurements/trace-trl.jsonl]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from validation.records import Measured, Scenario

__all__ = ["SCENARIOS", "run_trl_trace", "scenarios"]

LLAMA: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 704,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "vocab_size": 8192,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}


def _s(id_: str, **kw: Any) -> Scenario:
    base: dict[str, Any] = {"model": LLAMA, "batch_size": 2, "seq_len": 256, "dtype": "fp32"}
    # every row -s tokens long (no padding) unless the scenario says otherwise
    base["padded_batch"] = False
    base.update(kw)
    return Scenario.model_validate({"id": id_, "request": base, "optim_impl": "foreach"})


SCENARIOS: tuple[Scenario, ...] = (
    _s("trl-dpo-full-refcopy", trainer="dpo"),
    _s("trl-dpo-full-refcopy-bf16", trainer="dpo", dtype="bf16", batch_size=4),
    _s("trl-dpo-lora", trainer="dpo", lora={"r": 16}),
    _s("trl-dpo-lora-refcopy", trainer="dpo", lora={"r": 16}, ref_model="copy"),
    _s("trl-dpo-full-precompute", trainer="dpo", precompute_ref_log_probs=True),
    _s("trl-dpo-lora-ckpt", trainer="dpo", lora={"r": 8}, grad_ckpt=True, batch_size=4),
    _s("trl-kto-full", trainer="kto"),
    _s("trl-kto-lora", trainer="kto", lora={"r": 16}),
    _s("trl-orpo-full", trainer="orpo"),
    _s("trl-simpo-lora", trainer="simpo", lora={"r": 16}),
    _s("trl-cpo-full", trainer="cpo"),
    _s("trl-reward-full-bf16", trainer="reward", dtype="bf16"),
    _s("trl-reward-lora-bf16", trainer="reward", dtype="bf16", lora={"r": 16}, batch_size=4),
    # rows of several lengths padded to the longest (-s): the mask reaches SDPA
    _s(
        "trl-dpo-lora-padded-bf16",
        trainer="dpo",
        dtype="bf16",
        lora={"r": 16},
        batch_size=4,
        padded_batch=True,
    ),
    _s("trl-dpo-full-padded-bf16", trainer="dpo", dtype="bf16", padded_batch=True),
)


def scenarios() -> list[Scenario]:
    """Every TRL scenario of the committed grid."""
    return list(SCENARIOS)


# ----------------------------------------------------------------------------- building


def _tokenizer(vocab_size: int) -> Any:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<pad>": 1, "<eos>": 2}
    vocab.update({f"w{i}": i + 3 for i in range(min(vocab_size, 512) - 3)})
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>"
    )


def _words(n: int, start: int = 0) -> str:
    return " ".join(f"w{(start + i) % 500}" for i in range(n))


def _dataset(trainer: str, seq_len: int, batch: int, padded: bool = False) -> Any:
    """Rows whose prompt + completion overflow ``seq_len`` (TRL truncates to ``max_length``).

    ``padded``: the chosen rows fill ``seq_len``, the rejected ones stop at 3/4 of it and the
    first chosen row at half of it, so the collator pads rows to the longest (``seq_len``).
    """
    from datasets import Dataset

    prompt = _words(seq_len // 4)
    long = seq_len  # completion words: more than the room left, so every row is S long
    if padded and trainer == "dpo":
        n = 2 * batch
        return Dataset.from_dict(
            {
                "prompt": [prompt] * n,
                "chosen": [_words(seq_len // 4 if i == 0 else long, 3) for i in range(n)],
                "rejected": [_words(seq_len // 2, 11)] * n,
            }
        )
    if trainer == "reward":  # RewardTrainer drops rows over max_length: fill it exactly
        p = seq_len // 4
        return Dataset.from_dict(
            {
                "prompt": [_words(p)] * (2 * batch),
                "chosen": [_words(seq_len - p, 3)] * (2 * batch),
                "rejected": [_words(seq_len - p, 11)] * (2 * batch),
            }
        )
    if trainer == "kto":
        rows = {
            "prompt": [prompt] * (2 * batch),
            "completion": [_words(long, 7 + i) for i in range(2 * batch)],
            "label": [i % 2 == 0 for i in range(2 * batch)],
        }
    else:
        rows = {
            "prompt": [prompt] * (2 * batch),
            "chosen": [_words(long, 3)] * (2 * batch),
            "rejected": [_words(long, 11)] * (2 * batch),
        }
    return Dataset.from_dict(rows)


def _hf_model(cfg: Any, dtype: Any, attn: str, reward: bool, device: Any) -> Any:
    import torch  # noqa: TID251
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    ctx = torch.device(device) if device is not None else contextlib.nullcontext()
    with ctx:
        if reward:
            cfg = type(cfg).from_dict({**cfg.to_dict(), "num_labels": 1, "pad_token_id": 1})
            return AutoModelForSequenceClassification.from_config(
                cfg, dtype=dtype, attn_implementation=attn
            )
        return AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=attn)


def _peft(model: Any, req: Any, reward: bool) -> Any:
    from peft import LoraConfig, get_peft_model

    opts = req.lora
    kw: dict[str, Any] = {"r": opts.r, "lora_dropout": opts.dropout}
    kw["task_type"] = "SEQ_CLS" if reward else "CAUSAL_LM"
    if opts.alpha is not None:
        kw["lora_alpha"] = opts.alpha
    if opts.targets is not None:
        kw["target_modules"] = list(opts.targets)
    if reward:
        kw["modules_to_save"] = ["score"]
    return get_peft_model(model, LoraConfig(**kw))


def _trainer_cls(name: str) -> tuple[Any, Any]:
    if name == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOTrainer, DPOConfig
    if name == "kto":
        from trl import KTOConfig, KTOTrainer

        return KTOTrainer, KTOConfig
    if name == "reward":
        from trl import RewardConfig, RewardTrainer

        return RewardTrainer, RewardConfig
    if name == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOTrainer, ORPOConfig
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    return CPOTrainer, CPOConfig


def _config_kwargs(name: str, req: Any, out_dir: str) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "output_dir": out_dir,
        "report_to": [],
        "per_device_train_batch_size": req.batch_size,
        "max_length": req.seq_len,
        "bf16": False,
        "fp16": False,
        "use_cpu": True,
        "gradient_checkpointing": req.grad_ckpt,
        "optim": req.optim,
    }
    if req.beta is not None:
        kw["beta"] = req.beta
    if name == "simpo":
        kw["loss_type"] = "simpo"
        kw["cpo_alpha"] = 0.0
    if name == "kto":
        kw["train_sampling_strategy"] = "sequential"
    return kw


def _optimizer(trainer: Any, model: Any) -> Any:
    """Create the Trainer's optimizer over ``model`` (the foreach implementation a GPU picks).

    As ``validation.build.build_optimizer``, but from the trainer's own arguments (a new
    ``TrainingArguments`` would reset accelerate's state under the built trainer).
    """
    from transformers import Trainer

    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(trainer.args, model)
    kwargs = dict(kwargs)
    kwargs.pop("fused", None)
    kwargs["foreach"] = True
    decay = set(Trainer.get_decay_parameter_names(None, model))  # type: ignore[arg-type]
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if n in decay], "weight_decay": trainer.args.weight_decay},
        {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
    ]
    return cls([g for g in groups if g["params"]], **kwargs)


class _DeviceAccelerator:
    """The trainer's ``Accelerator`` with ``device`` answering the traced device."""

    def __init__(self, inner: Any, device: str) -> None:
        import torch  # noqa: TID251

        self._inner = inner
        self.device = torch.device(device)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@dataclass
class _TrlSetup:
    """A ready step of a TRL trainer on the traced device (``run_steps`` drives it)."""

    scenario: Scenario
    trainer: Any
    model: Any
    optimizer: Any
    batch_cpu: dict[str, Any]
    device: str
    scaler: Any = None
    on_phase: Any = field(default=lambda _phase: None)

    def make_batch(self) -> dict[str, Any]:
        import torch  # noqa: TID251

        return {
            k: (v.to(self.device) if isinstance(v, torch.Tensor) else v)
            for k, v in self.batch_cpu.items()
        }

    def step(self, batch: dict[str, Any]) -> None:
        self.on_phase("forward")
        with _fake_answers(padded=bool(self.scenario.request.padded_batch)):
            loss = self.trainer.compute_loss(self.model, batch)
        self.on_phase("backward")
        loss.backward()
        del loss
        self.on_phase("optimizer")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def _build_cpu_trainer(scenario: Scenario, tmp: str) -> tuple[Any, Any, Any]:
    """Build TRL's trainer on the CPU with a one-layer copy of the model; return it and cfg."""
    import torch  # noqa: TID251

    from validation import build

    req = scenario.request
    name = str(req.trainer.value)
    reward = name == "reward"
    cfg = build.model_config(req)
    small = type(cfg).from_dict({**cfg.to_dict(), "num_hidden_layers": 1})
    dtype = build.torch_dtype(req.dtype.value)
    attn = build.request_attn(req)
    model = _hf_model(small, dtype, attn, reward, None)
    if req.lora is not None:
        model = _peft(model, req, reward)
    cls, conf_cls = _trainer_cls(name)
    args = conf_cls(**_config_kwargs(name, req, tmp))
    kwargs: dict[str, Any] = {
        "model": model,
        "args": args,
        "train_dataset": _dataset(name, req.seq_len, req.batch_size, bool(req.padded_batch)),
        "processing_class": _tokenizer(int(cfg.vocab_size)),
    }
    if name in ("dpo", "kto") and (req.lora is None or req.ref_model == "copy"):
        # (with precompute_ref_log_probs TRL holds no reference: dropped below; passing one
        # here keeps __init__ from loading it by name)
        kwargs["ref_model"] = _hf_model(small, dtype, attn, False, None)
    trainer = cls(**kwargs)
    if req.precompute_ref_log_probs:
        trainer.ref_model = None
    rows = [trainer.train_dataset[i] for i in range(req.batch_size)]
    if req.precompute_ref_log_probs:
        for r in rows:
            r["ref_chosen_logps"] = 0.0
            r["ref_rejected_logps"] = 0.0
            r["ref_logps"] = 0.0
            r["ref_KL_logps"] = 0.0
    batch = trainer.data_collator(rows)
    ids = [v for k, v in batch.items() if k.endswith("input_ids") and isinstance(v, torch.Tensor)]
    width = max(int(v.shape[-1]) for v in ids)
    if width != req.seq_len:
        raise RuntimeError(f"the collated batch is {width} tokens wide, not -s {req.seq_len}")
    return trainer, cfg, batch


@contextlib.contextmanager
def _fake_answers(padded: bool = False) -> Any:
    """Answer TRL's and transformers' host-side reads of fake values as a real batch would.

    ``padded``: the batch's attention mask holds zeros (rows padded to the longest), so
    "is the mask all ones?" is answered no and transformers builds the 4-D mask.
    """
    import torch  # noqa: TID251

    old_item, old_bool = torch.Tensor.item, torch.Tensor.__bool__

    def item(self: Any) -> Any:
        return 0.0 if self.is_floating_point() else (True if self.dtype == torch.bool else 1)

    def as_bool(self: Any) -> bool:
        import linecache
        import traceback

        fr = traceback.extract_stack(limit=2)[0]
        line = linecache.getline(fr.filename, fr.lineno or 0)
        return ".all()" in line and not padded

    from torch._subclasses import fake_impls  # noqa: TID251
    from torch._subclasses.fake_tensor import FakeTensor  # noqa: TID251

    key = torch.ops.aten.nonzero.default
    old_nonzero = fake_impls.op_implementations_dict[key]

    def nonzero(fake_mode: Any, func: Any, arg: Any) -> Any:
        # TRL's metrics index small per-row/per-token tensors with boolean masks; answer
        # "every element selected" (the bytes are a few per token, not modelled)
        meta = torch.empty((arg.numel(), arg.dim()), dtype=torch.int64, device="meta")
        return FakeTensor(fake_mode, meta, arg.device)

    # transformers drops an all-ones attention mask for SDPA (is_causal instead, so a GPU
    # runs the flash/efficient kernel) after reading its values, which it refuses to do on
    # fake tensors; the trace's batches are unpadded (every row is -s tokens): answer "all
    # ones" (transformers 5.24 masking_utils._ignore_causal_mask_sdpa)
    from transformers import masking_utils

    old_tracing, old_all = masking_utils.is_tracing, masking_utils.fast_all

    def is_tracing(tensor: Any = None) -> bool:
        return bool(old_tracing(None))

    def fast_all(tensor: Any) -> Any:
        return (not padded) if isinstance(tensor, FakeTensor) else old_all(tensor)

    masking_utils.is_tracing = is_tracing
    masking_utils.fast_all = fast_all
    fake_impls.op_implementations_dict[key] = nonzero
    torch.Tensor.item = item  # type: ignore[method-assign,assignment]
    torch.Tensor.__bool__ = as_bool  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        masking_utils.is_tracing, masking_utils.fast_all = old_tracing, old_all
        fake_impls.op_implementations_dict[key] = old_nonzero
        torch.Tensor.item = old_item  # type: ignore[method-assign]
        torch.Tensor.__bool__ = old_bool  # type: ignore[method-assign]


class _Launch:
    """A Triton kernel launch stand-in: the real kernels update their tensors in place."""

    def __getitem__(self, grid: Any) -> Any:
        return lambda *a, **k: None


def _gpu_kernels() -> list[Any]:
    """Make TRL's chunked log-prob kernel take the path it takes on a GPU (with Triton).

    On CUDA, ``_use_triton`` is true: the fused head scores only the labelled positions
    (``hidden_states[mask]``, the compact path) and Triton kernels fold each logit tile into
    the running statistics in place, allocating nothing. A CPU torch has no Triton, so the
    launches are replaced by no-ops (the values are fake anyway); every torch op around them
    runs as on the GPU. Source: trl 1.16.0 ``trl/kernels/chunked_logprob.py``.
    """
    import types

    import trl.kernels.chunked_logprob as ck
    import trl.trainer.utils as tu

    undo: list[Any] = []

    def patch(obj: Any, name: str, value: Any) -> None:
        old = getattr(obj, name, None)
        undo.append(lambda: setattr(obj, name, old))
        setattr(obj, name, value)

    def use_triton(device: Any) -> bool:
        return bool(device.type in ("cuda", "xpu"))

    patch(ck, "_use_triton", use_triton)
    patch(tu, "_use_triton", use_triton)
    patch(ck, "_forward_kernel", _Launch())
    patch(ck, "_backward_kernel", _Launch())
    patch(ck, "triton", types.SimpleNamespace(cdiv=lambda a, b: -(-a // b)))
    return undo


def _phase_hooks(setup: _TrlSetup, model: Any, ref: Any) -> list[Any]:
    """Label the kernel/score/logits as ``loss`` and no-grad forwards as ``forward``."""
    import torch  # noqa: TID251
    import trl.trainer.utils as tu

    undo: list[Any] = []
    fn = tu._ChunkedLogProbFunction

    class Labelled(fn):  # type: ignore[misc,valid-type]
        @classmethod
        def apply(cls, *a: Any, **k: Any) -> Any:
            if torch.is_grad_enabled():
                setup.on_phase("loss")
            return fn.apply(*a, **k)

    tu._ChunkedLogProbFunction = Labelled
    undo.append(lambda: setattr(tu, "_ChunkedLogProbFunction", fn))

    def pre(_m: Any, _a: Any, _k: Any = None) -> None:
        setup.on_phase("forward")

    def head_hook(_m: Any, _a: Any, _o: Any) -> None:
        if torch.is_grad_enabled():
            setup.on_phase("loss")

    for m in (model, ref):
        if m is not None:
            h = m.register_forward_pre_hook(pre)
            undo.append(h.remove)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = getattr(base, "score", None) or base.get_output_embeddings()
    if head is not None and not hasattr(base, "_vramcalc_fused"):
        h = head.register_forward_hook(head_hook)
        undo.append(h.remove)
    return undo


def run_trl_trace(scenario: Scenario, mode: str = "fake-cuda") -> Measured:
    """Trace one TRL scenario in THIS process (``fake-cuda`` needs the extension loaded)."""
    import torch  # noqa: TID251
    from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: TID251
    from trl.trainer.utils import add_fused_lm_head

    from validation import build, trace

    req = scenario.request
    name = str(req.trainer.value)
    reward = name == "reward"
    device = "cuda" if mode == "fake-cuda" else "cpu"
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        trainer, cfg, batch = _build_cpu_trainer(scenario, tmp)
    dtype = build.torch_dtype(req.dtype.value)
    attn = build.request_attn(req)
    tracker = trace._make_tracker(device, trace.ROUND_BYTES)
    with trace.trace_patches(tracker, "fake-cuda", attn):
        with torch.device("meta"):
            policy = _hf_model(cfg, dtype, attn, reward, None)
        with torch.device("meta"):
            ref = None
            if getattr(trainer, "ref_model", None) is not None:
                ref = _hf_model(cfg, dtype, attn, False, None)
        if req.lora is not None:
            policy = _peft(policy, req, reward)
        with FakeTensorMode(allow_non_fake_inputs=True):
            build.materialize(policy, device)
            if ref is not None:
                build.materialize(ref, device)
                ref.eval()
                for p in ref.parameters():
                    p.requires_grad_(False)
            if req.grad_ckpt:
                policy.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False}
                )
                if req.lora is not None:
                    policy.enable_input_require_grads()
            policy.train()
            if name in ("dpo", "kto"):
                # the outputs TRL 1.16 asks for (dpo_trainer.py / kto_trainer.py __init__)
                outputs = ("log_probs", "entropy", "mean_logits")
                outputs += ("is_top1",) if name == "dpo" else ()
                base = policy.get_base_model() if req.lora is not None else policy
                add_fused_lm_head(base, outputs=outputs)
                if ref is not None:
                    add_fused_lm_head(ref)
            trainer.model = policy
            trainer.model_wrapped = policy
            if hasattr(trainer, "ref_model"):
                trainer.ref_model = ref
            if req.precompute_ref_log_probs:
                trainer.precompute_ref_logps = True
            optimizer = _optimizer(trainer, policy)
            # answer the traced device where TRL moves tensors to accelerator.device
            trainer.accelerator = _DeviceAccelerator(trainer.accelerator, device)
            setup = _TrlSetup(scenario, trainer, policy, optimizer, batch, device)
            undo = _phase_hooks(setup, policy, ref) + _gpu_kernels()
            try:
                measured: Measured = trace.run_steps(
                    tracker, setup, scenario.steps, params=list(ref.parameters()) if ref else ()
                )
            finally:
                for u in reversed(undo):
                    u()
            del setup, optimizer, policy, ref
    return measured


# ----------------------------------------------------------------------------- CLI


def _child(mode: str) -> int:
    from validation import _fakecuda

    if mode == "fake-cuda":
        _fakecuda.load()
    import logging
    import os
    import time
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    from validation import trace

    if mode == "fake-cuda":
        trace._patch_cuda_availability()
    for line in sys.stdin:
        if not line.strip():
            continue
        scenario = Scenario.model_validate_json(line)
        t0 = time.perf_counter()
        try:
            result: dict[str, Any] = {"measured": run_trl_trace(scenario, mode).model_dump()}
        except Exception as exc:  # reported per scenario
            import traceback

            result = {
                "error": f"{type(exc).__name__}: {exc}",
                "tb": traceback.format_exc()[-12000:],
            }
        result["wall_s"] = round(time.perf_counter() - t0, 3)
        print(json.dumps(result), flush=True)
    return 0


def trace_trl(scenarios_: Sequence[Scenario], mode: str = "fake-cuda") -> list[Any]:
    """Trace TRL scenarios in one subprocess; return ``Measurement`` or an error string each."""
    import os
    import subprocess

    from validation import trace
    from validation.records import Measurement

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(trace.REPO), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    stdin = "".join(s.model_dump_json() + "\n" for s in scenarios_)
    proc = subprocess.run(
        [sys.executable, "-m", "validation.trl_trace", "--child", "--mode", mode],
        input=stdin, capture_output=True, text=True, cwd=trace.REPO, env=env, timeout=3600,
        check=False,
    )  # fmt: skip
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    if len(lines) != len(scenarios_):
        raise RuntimeError(f"trl trace failed (rc={proc.returncode}): {proc.stderr[-6000:]}")
    fp = trace._fingerprint("fake-cuda")
    out: list[Any] = []
    for sc, res in zip(scenarios_, lines, strict=True):
        if "error" in res:
            out.append(f"{sc.id}: {res['error']}\n{res.get('tb', '')}")
            continue
        out.append(
            Measurement(
                scenario=sc,
                fingerprint=fp,
                measured=Measured.model_validate(res["measured"]),
                created=trace._now(),
                wall_s=res["wall_s"],
            )
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m validation.trl_trace", description=__doc__)
    parser.add_argument("--scenario-id", action="append", help="a scenario id (repeatable)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="fake-cuda", choices=["fake-cuda", "fake-cpu"])
    parser.add_argument("--out", type=Path, help="append Measurement JSON lines to this file")
    args = parser.parse_args(argv)
    if args.child:
        return _child(args.mode)
    chosen = [s for s in SCENARIOS if not args.scenario_id or s.id in args.scenario_id]
    results = trace_trl(chosen, args.mode)
    failed = 0
    lines = []
    for res in results:
        if isinstance(res, str):
            print("FAILED", res, file=sys.stderr)
            failed += 1
            continue
        m = res.measured
        cats = " ".join(f"{k}={v / 2**20:.2f}" for k, v in m.by_category.items())
        peak = f"{m.allocated_bytes / 2**20:.2f} MiB"
        print(f"{res.scenario.id}: peak {peak} {m.step}/{m.phase} [{cats}]")
        res.trainer = str(res.scenario.request.trainer.value)
        lines.append(res.model_dump_json())
    if args.out:
        with args.out.open("a", encoding="utf-8") as fh:
            fh.writelines(x + "\n" for x in lines)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
