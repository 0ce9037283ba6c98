"""Trace backend for other frameworks' training steps (issue 10): LitGPT on fake CUDA.

``run_litgpt_trace(scenario, mode)`` runs what ``litgpt finetune`` (0.5.13) runs for one
step, with LitGPT's own code: the model is ``litgpt.model.GPT`` (full) or ``litgpt.lora.GPT``
(LoRA, ``mark_only_lora_as_trainable``) built from a small ``litgpt.Config`` translated from
the scenario's inline HF config (``litgpt_config``), the step is ``finetune/lora.py``'s
``fit`` loop body -- ``logits = model(input_ids, lm_head_chunk_size=128)``, the last chunk
shifted, ``chunked_cross_entropy(logits, targets[..., 1:])``, ``backward``, ``optimizer.step``,
``optimizer.zero_grad`` -- and the optimizer is ``torch.optim.AdamW`` over
``model.parameters()`` as ``litgpt.utils.instantiate_torch_optimizer`` builds it (foreach,
the CUDA default). The precision is Fabric's: ``bf16-true``/``16-true``/``32-true`` store the
weights in that dtype (``--dtype``), ``bf16-mixed`` autocasts over fp32 weights
(``--mixed-precision bf16``). ``--loss full`` runs ``lm_head_chunk_size=0`` and
``chunk_size=0`` (one cross-entropy over the whole logits).

The ``logits`` list stays referenced through backward and the optimizer step, as in the
script: it is only rebound when the next step's forward returns.

QLoRA (``precision='bnb.nf4'``, ``BitsandbytesPrecision``) is not traced: the plugin
quantizes with bitsandbytes' CUDA kernels, which do not run on fake tensors; the load path is
modelled from its source instead (``vramcalc/frameworks/litgpt.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from validation.records import Measured, Scenario

__all__ = ["LITGPT_LORA_TARGETS", "litgpt_config", "run_litgpt_trace"]

# transformers module names -> litgpt LoRA switches (litgpt/lora.py Config)
LITGPT_LORA_TARGETS: dict[str, str] = {
    "q_proj": "lora_query",
    "k_proj": "lora_key",
    "v_proj": "lora_value",
    "o_proj": "lora_projection",
    "dense": "lora_projection",
    "gate_proj": "lora_mlp",
    "up_proj": "lora_mlp",
    "down_proj": "lora_mlp",
    "fc1": "lora_mlp",
    "fc2": "lora_mlp",
    "lm_head": "lora_head",
}


def litgpt_config(fields: dict[str, Any], **lora: Any) -> Any:
    """Translate an inline HF ``config.json`` dict to a ``litgpt.Config`` (or lora Config).

    Llama/Mistral/Qwen2 -> ``LLaMAMLP`` + ``RMSNorm``; Phi -> ``GptNeoxMLP`` (tanh GELU),
    LayerNorm, parallel residual with a shared norm, partial rotary; GPT-NeoX -> the same with
    exact GELU and separate norms. Source: litgpt 0.5.13 ``config.py`` (the phi-2, pythia and
    Llama entries).
    """
    mt = fields["model_type"]
    H = int(fields["hidden_size"])
    heads = int(fields["num_attention_heads"])
    common: dict[str, Any] = dict(
        name=f"vramcalc-{mt}",
        block_size=int(fields.get("max_position_embeddings", 2048)),
        vocab_size=int(fields["vocab_size"]),
        padded_vocab_size=int(fields["vocab_size"]),
        n_layer=int(fields["num_hidden_layers"]),
        n_head=heads,
        n_embd=H,
        n_query_groups=int(fields.get("num_key_value_heads") or heads),
        head_size=int(fields.get("head_dim") or H // heads),
        intermediate_size=int(fields["intermediate_size"]),
    )
    if mt in ("llama", "mistral", "qwen2"):
        common.update(
            bias=mt == "qwen2", attn_bias=mt == "qwen2", mlp_class_name="LLaMAMLP",
            norm_class_name="RMSNorm", norm_eps=1e-6, parallel_residual=False,
            rotary_percentage=1.0,
        )  # fmt: skip
    elif mt == "phi":
        common.update(
            bias=True, mlp_class_name="GptNeoxMLP", gelu_approximate="tanh",
            norm_class_name="LayerNorm", parallel_residual=True, shared_attention_norm=True,
            rotary_percentage=float(fields.get("partial_rotary_factor", 0.5)), lm_head_bias=True,
        )  # fmt: skip
    elif mt == "gpt_neox":
        common.update(
            bias=True, mlp_class_name="GptNeoxMLP", gelu_approximate="none",
            norm_class_name="LayerNorm", parallel_residual=True,
            rotary_percentage=float(fields.get("rotary_pct", 0.25)),
        )  # fmt: skip
    else:
        raise ValueError(f"no litgpt translation for model_type {mt!r}")
    if lora:
        from litgpt.lora import Config as LoraConfig

        return LoraConfig(**common, **lora)
    from litgpt import Config

    return Config(**common)


@dataclass
class _LitSetup:
    """One LitGPT training step in the shape ``validation.trace.run_steps`` drives."""

    scenario: Scenario
    device: Any
    model: Any
    optimizer: Any
    vocab_size: int
    chunk: int
    autocast_dtype: Any = None
    scaler: Any = None
    on_phase: Callable[[str], None] = field(default=lambda _phase: None)
    held: Any = None

    def make_batch(self) -> dict[str, Any]:
        import torch  # noqa: TID251

        req = self.scenario.request
        ids = torch.randint(0, self.vocab_size, (req.batch_size, req.seq_len), device=self.device)
        return {"input_ids": ids, "labels": ids.clone()}

    def step(self, batch: dict[str, Any]) -> None:
        import torch  # noqa: TID251
        from litgpt.utils import chunked_cross_entropy

        self.on_phase("forward")
        ctx: Any = contextlib.nullcontext()
        if self.autocast_dtype is not None:
            ctx = torch.autocast(device_type="cuda", dtype=self.autocast_dtype)
        input_ids, targets = batch["input_ids"], batch["labels"]
        with ctx:
            # fit() rebinds ``logits`` here: the previous step's stay alive until the new
            # ones exist
            self.held = self.model(input_ids, lm_head_chunk_size=self.chunk)
            logits = self.held
            self.on_phase("loss")
            if isinstance(logits, list):
                logits[-1] = logits[-1][..., :-1, :]
                loss = chunked_cross_entropy(logits, targets[..., 1:], chunk_size=self.chunk)
            else:
                loss = chunked_cross_entropy(
                    logits[..., :-1, :], targets[..., 1:], chunk_size=self.chunk
                )
        self.on_phase("backward")
        loss.backward()
        del loss
        self.on_phase("optimizer")
        self.optimizer.step()
        self.optimizer.zero_grad()
        del logits, input_ids, targets


def build_litgpt_model(scenario: Scenario) -> tuple[Any, Any]:
    """Build LitGPT's model of ``scenario`` on the meta device; return (model, config)."""
    import torch  # noqa: TID251

    from validation.build import _config_fields, torch_dtype

    req = scenario.request
    fields = _config_fields(req.model)
    opts = req.lora
    if opts is not None:
        switches = {v: False for v in set(LITGPT_LORA_TARGETS.values())}
        for t in opts.targets or ("q_proj", "v_proj"):
            switches[LITGPT_LORA_TARGETS[t]] = True
        cfg = litgpt_config(
            fields,
            lora_r=opts.r,
            lora_alpha=int(opts.alpha or opts.r),
            lora_dropout=opts.dropout,
            **switches,
        )
        from litgpt.lora import GPT, mark_only_lora_as_trainable
    else:
        cfg = litgpt_config(fields)
        from litgpt.model import GPT  # type: ignore[assignment]
    dtype = torch_dtype(req.dtype.value)
    with torch.device("meta"):
        model = GPT(cfg)
    model = model.to(dtype)
    if opts is not None:
        mark_only_lora_as_trainable(model)
    return model, cfg


def build_litgpt(scenario: Scenario, device: str, model: Any, cfg: Any) -> _LitSetup:
    """Materialise ``model`` on the (fake) ``device``; build the optimizer and the step."""
    import torch  # noqa: TID251

    from validation.build import torch_dtype

    req = scenario.request
    model.to_empty(device=device)
    model.max_seq_length = req.seq_len  # fit(): model.max_seq_length = min(longest, ...)
    model.train()
    impl = scenario.optim_impl
    kwargs: dict[str, Any] = {"lr": 2e-4, "weight_decay": 0.0, "betas": (0.9, 0.95)}
    if impl == "fused":
        kwargs["fused"] = True
    else:
        kwargs["foreach"] = impl != "for-loop"
    optimizer = torch.optim.AdamW(model.parameters(), **kwargs)
    recipe_chunk = 0 if req.loss == "full" else 128
    if req.loss_chunks is not None:
        recipe_chunk = -(-req.seq_len // req.loss_chunks)
    mp = str(req.mixed_precision.value)
    return _LitSetup(
        scenario=scenario,
        device=device,
        model=model,
        optimizer=optimizer,
        vocab_size=int(cfg.padded_vocab_size),
        chunk=recipe_chunk,
        autocast_dtype=None if mp == "no" else torch_dtype(mp),
    )


def run_litgpt_trace(scenario: Scenario, mode: str, tracker: Any) -> Measured:
    """Trace LitGPT's training step of ``scenario`` (fake tensors; see the module docstring)."""
    from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: TID251

    from validation.trace import TraceSkipped, run_steps

    req = scenario.request
    if req.qlora is not None or req.quant is not None:
        raise TraceSkipped(
            "LitGPT QLoRA (BitsandbytesPrecision) quantizes with bitsandbytes' CUDA kernels, "
            "which do not run on fake tensors"
        )
    device = "cuda" if mode == "fake-cuda" else "cpu"
    model, cfg = build_litgpt_model(scenario)
    with FakeTensorMode(allow_non_fake_inputs=True):
        setup = build_litgpt(scenario, device, model, cfg)
        measured = run_steps(tracker, setup, scenario.steps)
        del setup
    return measured
