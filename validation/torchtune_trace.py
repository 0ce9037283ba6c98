"""Trace torchtune 0.6.1's own single-device training step on fake CUDA (no GPU).

What runs is what ``recipes/full_finetune_single_device.py`` and
``recipes/lora_finetune_single_device.py`` (torchtune 0.6.1, installed with the package) do:

- ``_setup_model``: the model is built by torchtune's component builders
  (``torchtune.models.llama3_2._component_builders.llama3_2`` / ``lora_llama3_2`` for
  ``model_type`` llama, ``torchtune.models.qwen2._component_builders.qwen2`` / ``lora_qwen2``
  for qwen2) under ``training.set_default_dtype(dtype)``; LoRA marks only the adapter
  parameters trainable (``get_adapter_params`` + ``set_trainable_params``); activation
  checkpointing wraps every ``TransformerSelfAttentionLayer``
  (``training.set_activation_checkpointing``); ``training.get_act_offloading_ctx_manager``
  returns ``OffloadActivations`` (with its no-op hooks around the output projection) when
  offloading is on; then ``training.get_memory_stats`` **resets the peak counter**, so the
  load phase is not in the logged peak (the tracker starts after the build here, too);
- ``_setup_optimizer``: ``torch.optim.AdamW(params, fused=True)`` (the recipes' configs set
  ``fused: True``), or with ``optimizer_in_bwd`` one AdamW per parameter stepped from a
  post-accumulate-grad hook (``training.register_optim_in_bwd_hooks``);
- the loss: ``CEWithChunkedOutputLoss`` (the configs' default; the model's
  ``set_num_output_chunks`` makes it return a list of logit chunks) or
  ``torch.nn.CrossEntropyLoss`` on the full logits;
- ``_loss_step`` + ``train``: labels shifted with ``hstack`` against an ignore-index cache,
  ``logits = model(tokens)`` inside the offloading context, ``del logits``, ``loss *
  num_tokens``, ``backward``, ``scale_grads``, ``optimizer.step()``,
  ``zero_grad(set_to_none=True)``.

QLoRA: ``quantize_base=True`` makes ``LoRALinear`` hold torchao ``NF4Tensor`` weights
(``to_nf4``); the model is built directly on the fake device, as the recipe builds it on its
device, so the quantization itself runs on fake tensors.

Activation offloading: ``OffloadActivations`` copies saved tensors to (pinned) host memory; on
fake CUDA the host copies are CPU tensors and leave the tracked device. Its side stream and
events are no-ops here (one stream), so the forward stash of ``max_fwd_stash_size`` tensors and
the backward stash live exactly as long as the Python code holds them.
"""

from __future__ import annotations

import contextlib
from typing import Any

from validation.records import Measured, Scenario

__all__ = ["is_torchtune", "run_torchtune_trace"]

_ATTN = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "o_proj": "output_proj"}
_MLP = ("gate_proj", "up_proj", "down_proj")


def is_torchtune(request: Any) -> bool:
    """Tell whether ``request`` runs under the torchtune profile."""
    return str(getattr(request, "framework", "hf") or "hf") == "torchtune"


def _dims(cfg: dict[str, Any]) -> dict[str, Any]:
    heads = int(cfg["num_attention_heads"])
    return {
        "vocab_size": int(cfg["vocab_size"]),
        "num_layers": int(cfg["num_hidden_layers"]),
        "num_heads": heads,
        "num_kv_heads": int(cfg.get("num_key_value_heads") or heads),
        "embed_dim": int(cfg["hidden_size"]),
        "intermediate_dim": int(cfg["intermediate_size"]),
        "max_seq_len": int(cfg.get("max_position_embeddings", 2048)),
        "norm_eps": float(cfg.get("rms_norm_eps", 1e-5)),
        "tie_word_embeddings": bool(cfg.get("tie_word_embeddings", False)),
    }


def lora_kwargs(
    targets: tuple[str, ...] | None, r: int, alpha: float, dropout: float
) -> dict[str, Any]:
    """Map HF-style LoRA targets onto torchtune's builder arguments."""
    t = tuple(targets or ("q_proj", "v_proj"))
    if "all-linear" in t:
        t = (*_ATTN, *_MLP)
    unknown = [x for x in t if x not in _ATTN and x not in _MLP and x != "lm_head"]
    if unknown:
        raise ValueError(f"torchtune LoRA cannot target {unknown}")
    mlp = [x for x in t if x in _MLP]
    if mlp and len(mlp) != len(_MLP):
        raise ValueError("torchtune applies LoRA to all three MLP projections or none")
    return {
        "lora_attn_modules": [_ATTN[x] for x in t if x in _ATTN],
        "apply_lora_to_mlp": bool(mlp),
        "apply_lora_to_output": "lm_head" in t,
        "lora_rank": r,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
    }


def build_model(req: Any) -> Any:
    """Build the torchtune model of ``req`` (no weights loaded: values do not matter)."""
    cfg = dict(req.model)
    kind = cfg.get("model_type")
    dims = _dims(cfg)
    lora = req.qlora or req.lora
    if kind == "llama":
        from torchtune.models.llama3_2 import _component_builders as cb

        base, lora_fn = cb.llama3_2, cb.lora_llama3_2
        dims["rope_base"] = int(cfg.get("rope_theta", 500_000))
    elif kind == "qwen2":
        from torchtune.models.qwen2 import _component_builders as qb

        base, lora_fn = qb.qwen2, qb.lora_qwen2
        dims["rope_base"] = float(cfg.get("rope_theta", 1_000_000.0))
    else:
        raise ValueError(f"no torchtune builder for model_type {kind!r} (llama, qwen2)")
    if lora is None:
        return base(**dims)
    kw = lora_kwargs(lora.targets, lora.r, float(lora.alpha or lora.r), lora.dropout)
    return lora_fn(**dims, **kw, quantize_base=req.qlora is not None)


def _torchao_compat() -> None:
    """Let ``import torchtune.training`` work with torchao 0.14.1.

    torchtune 0.6.1's ``training/quantization.py`` imports quantizer names that torchao 0.14
    renamed or dropped (``int4_weight_only``, QAT fake-quant toggles). Only the QAT/quantize
    recipes call them; the traced recipes do not. Missing names get stand-ins that raise if
    called.
    """
    import importlib
    import types

    def missing(name: str) -> Any:
        def fn(*_a: Any, **_k: Any) -> Any:
            raise NotImplementedError(f"{name} is not available with this torchao")

        return fn

    q = importlib.import_module("torchao.quantization")
    for name in ("int4_weight_only", "int8_dynamic_activation_int4_weight"):
        if not hasattr(q, name):
            setattr(q, name, missing(name))
    try:
        lin = importlib.import_module("torchao.quantization.qat.linear")
    except ImportError:
        lin = types.ModuleType("torchao.quantization.qat.linear")
        import sys

        sys.modules[lin.__name__] = lin
    for name in (
        "disable_4w_fake_quant", "disable_8da4w_fake_quant",
        "enable_4w_fake_quant", "enable_8da4w_fake_quant",
    ):  # fmt: skip
        if not hasattr(lin, name):
            setattr(lin, name, missing(name))
    qat = importlib.import_module("torchao.quantization.qat")
    for name in ("Int4WeightOnlyQATQuantizer", "Int8DynActInt4WeightQATQuantizer"):
        if not hasattr(qat, name):
            setattr(qat, name, missing(name))


def run_torchtune_trace(scenario: Scenario, tracker_factory: Any) -> Measured:
    """Run ``scenario.steps`` steps of torchtune's recipe loop under a fresh tracker.

    Needs the fake-CUDA extension loaded (``validation.trace`` child in ``fake-cuda`` mode).
    """
    import torch  # noqa: TID251
    from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: TID251

    _torchao_compat()
    from torchtune import modules, training
    from torchtune.modules.loss import CEWithChunkedOutputLoss
    from torchtune.modules.peft import get_adapter_params, set_trainable_params

    from validation import dist_trace, trace

    req = scenario.request
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        str(req.dtype.value)
    ]
    lora = req.qlora or req.lora
    loss_kind = str(getattr(req, "loss", None) or "chunked")
    chunks = int(getattr(req, "loss_chunks", None) or 8)
    offload = bool(getattr(req, "activation_offload", False))
    in_bwd = bool(getattr(req, "optimizer_in_backward", False))
    device = torch.device("cuda")
    tracker = tracker_factory()
    torch.manual_seed(0)
    with contextlib.ExitStack() as stack:
        stack.enter_context(dist_trace._cuda_runtime(1))
        # the GPU's SDPA kernel choice (flash for 16-bit, no mask) and checkpoint recompute
        # labelling, as for the transformers traces
        stack.enter_context(trace.trace_patches(tracker, "fake-cuda", "sdpa"))
        # The recipe builds on its device; fake tensors cannot run the RoPE cache's
        # data-dependent init, so the (small) model is built on the CPU and moved: the same
        # parameters, buffers and NF4 tensors end up on the device, and the build is before
        # the recipe's peak reset in any case.
        with training.set_default_dtype(dtype):
            model = build_model(req)
        stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
        model.to(device)
        if lora is not None:
            set_trainable_params(model, get_adapter_params(model))
        if req.grad_ckpt:
            training.set_activation_checkpointing(
                model, auto_wrap_policy={modules.TransformerSelfAttentionLayer}
            )
        ctx = training.get_act_offloading_ctx_manager(model, offload)
        if loss_kind == "chunked":
            loss_fn: Any = CEWithChunkedOutputLoss(num_output_chunks=chunks)
            model.set_num_output_chunks(chunks)
        else:
            loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-100)
        impl = {
            "fused": {"fused": True},
            "foreach": {"foreach": True},
            "for-loop": {"foreach": False},
        }
        okw = impl.get(scenario.optim_impl, {"fused": True})
        optimizer: Any = None
        optim_dict: dict[Any, Any] = {}
        if in_bwd:
            optim_dict = {p: torch.optim.AdamW([p], lr=2e-5, **okw) for p in model.parameters()}
            training.register_optim_in_bwd_hooks(model=model, optim_dict=optim_dict)
        else:
            optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, **okw)
        ignore_cache = torch.full((req.batch_size, 1), -100, device=device)

        def states() -> list[Any]:
            opts = [optimizer] if optimizer is not None else list(optim_dict.values())
            return [
                v
                for o in opts
                for s in o.state.values()
                for v in s.values()
                if hasattr(v, "device")
            ]

        def classify() -> None:
            tracker.mark([p.grad for p in model.parameters() if p.grad is not None], "gradients")
            tracker.mark(states(), "optimizer")

        def phase(name: str) -> None:
            classify()
            tracker.set_phase(tracker.step, name)

        def grad_hook(_p: Any) -> None:
            if in_bwd:
                tracker.mark(states(), "optimizer")

        for p in model.parameters():
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(grad_hook)
        accum = max(1, int(req.grad_accum))
        with tracker:
            tracker.mark(model.parameters(), "params")
            tracker.mark(model.buffers(), "params")
            tracker.mark([ignore_cache], "params")
            # AdamW's first-step state is created lazily; the recipe calls zero_grad() first
            if optimizer is not None:
                optimizer.zero_grad()
            for step in range(1, scenario.steps + 1):
                running: Any = 0
                for _micro in range(accum):
                    tracker.set_phase(step, "input")
                    tokens = torch.zeros(
                        req.batch_size, req.seq_len, dtype=torch.long, device=device
                    )
                    labels = torch.zeros(
                        req.batch_size, req.seq_len, dtype=torch.long, device=device
                    )
                    n_tok = (labels != -100).sum()
                    phase("forward")
                    with ctx:
                        logits = model(tokens)
                    phase("loss")
                    labels = torch.hstack((labels[..., 1:], ignore_cache[: labels.shape[0]]))
                    if not isinstance(logits, list):
                        labels = labels.reshape(-1)
                        logits = logits.reshape(-1, logits.size(-1))
                    loss = loss_fn(logits, labels)
                    del logits
                    current = loss * n_tok
                    running = running + current
                    del loss, tokens, labels
                    phase("backward")
                    current.backward()
                    del current
                phase("optimizer")
                if optimizer is not None:
                    training.scale_grads(model, torch.tensor(1.0, device=device))
                    optimizer.step()
                    classify()
                    optimizer.zero_grad(set_to_none=True)
                del running, n_tok
                classify()
        measured = trace._measured(tracker)
    return measured
