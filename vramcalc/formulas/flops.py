"""Training FLOPs per token: forward, backward and recomputation, by parameter group.

Units: floating-point operations (a multiply-add counts as 2 FLOPs) per token, as ``float``
(counts pass 2**53 for large jobs; exactness is not needed here).

What is counted:

* **Matmul weights** (``ParamGroup.kind`` ``"linear"`` or ``"lm_head"``): forward 2 FLOPs per
  *active* weight element per token (Kaplan et al. 2020, Table 1). Biases, norms, activation
  functions, softmax and the loss are elementwise and ignored (well under 1 % for LLM widths).
  Embedding lookups (``"embedding"``) cost no FLOPs. A tied LM head still runs a matmul with
  the token embedding matrix (``vocab x embedding width``), so it is counted when
  ``ModelSpec.tie_word_embeddings`` is set and the inventory lists no ``lm_head`` group.
* **MoE experts**: groups flagged ``ParamGroup.expert`` (or with an ``experts`` key segment)
  hold all experts; only ``num_experts_per_tok`` of ``num_local_experts`` run per token, so
  their active share is ``k / E``. The router (``kind="other"``, hidden x experts) is ignored.
* **Attention scores and values**: ``Q K^T`` and ``P V`` cost ``2 * 2 * kv_len * (heads *
  head_dim)`` FLOPs per token per attention layer in the forward pass (Narayanan et al. 2021,
  Appendix). With causal masking, flash / memory-efficient kernels (``sdpa`` on a GPU,
  ``flash_attention_2``) skip the fully masked tiles, so *executed* work is about half; the eager
  path computes the full square and masks it. :func:`causal_attention_fraction` encodes this;
  published MFU formulas (Megatron-LM, PaLM) count the full square: pass ``attn=None`` to
  reproduce them.
* **Backward**: a matmul whose weight is trainable computes the input gradient and the weight
  gradient (2x its forward); a frozen one computes the input gradient only (1x). Autograd skips
  input gradients below the lowest trainable tensor; this is ignored (at most one layer's worth,
  and HF PEFT with checkpointing makes the embedding output require grad anyway). Attention
  backward is 2x its forward for the eager path and 2.5x for FlashAttention, whose backward
  recomputes ``Q K^T`` (five matmuls versus two in the forward; Dao 2023, FlashAttention-2,
  Section 3.1.2, and the 2.5x in flash-attention's benchmark FLOP count).
* **Gradient checkpointing** (HF ``gradient_checkpointing_enable()``, per decoder layer): one
  extra forward of every checkpointed layer (groups whose ``stack`` is ``encoder`` or
  ``decoder``, plus their attention); the embedding and LM head are not recomputed.
  transformers >= 5 uses non-reentrant ``torch.utils.checkpoint`` (``use_reentrant=False``),
  whose recomputation stops early, once every tensor saved for backward is rebuilt
  (``early_stop=True``): the MLP output projection (``intermediate_size -> hidden_size``) saves
  nothing downstream, so it is not re-run, unless a dropout after it (``hidden_dropout > 0``)
  must regenerate its mask.

Checked against ``torch.utils.flop_counter.FlopCounterMode`` (tests/test_flops.py): exact for
tiny GPT-2/Llama CPU steps (full, LoRA, checkpointing with and without dropout) and for
full-size catalog models built on the meta device (eager attention).

Sources:
    Kaplan et al. 2020, "Scaling Laws for Neural Language Models", Table 1 and C ~ 6N per token.
    Narayanan et al. 2021, "Efficient Large-Scale Language Model Training on GPU Clusters Using
    Megatron-LM", Appendix: F = 96 B s l h^2 (1 + s/6h + V/16lh) per iteration with full
    activation recomputation (72 B s l h^2 (1 + s/6h + V/12lh) without).
    Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models" (Chinchilla):
    C ~ 6 N D.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from vramcalc.enums import Attention, Task
from vramcalc.formulas.counts import ParamGroup
from vramcalc.specs import ModelSpec

__all__ = [
    "FlopsPerToken",
    "active_fraction",
    "attention_backward_multiplier",
    "attention_forward_flops_per_token",
    "causal_attention_fraction",
    "is_expert_group",
    "matmul_groups",
    "skipped_by_early_stop",
    "training_flops_per_token",
]

MATMUL_KINDS = ("linear", "lm_head")
CHECKPOINTED_STACKS = ("encoder", "decoder")
TIED_HEAD_KEY = "head/lm_head(tied)"


@dataclass(frozen=True)
class FlopsPerToken:
    """FLOPs per token of one training step, split by pass.

    Attributes:
        forward: forward-pass FLOPs per token.
        backward: backward-pass FLOPs per token (0 for inference).
        recompute: extra forward FLOPs per token from gradient checkpointing.
        details: slash-keyed parts (``forward/matmul``, ``forward/attention``,
            ``forward/lm_head``, ``backward/matmul_trainable``, ``backward/matmul_frozen``,
            ``backward/attention``, ``recompute/matmul``, ``recompute/attention``) that sum to
            ``total``.

    """

    forward: float
    backward: float
    recompute: float
    details: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        """Forward + backward + recompute FLOPs per token."""
        return self.forward + self.backward + self.recompute


def is_expert_group(group: ParamGroup) -> bool:
    """Tell MoE expert weights apart: ``ParamGroup.expert``, or an ``experts`` key segment.

    ``shared_expert`` (always active) and the router ``gate`` do not match.
    """
    flagged = bool(getattr(group, "expert", False))
    return flagged or "experts" in group.key.split("/")


def active_fraction(group: ParamGroup, spec: ModelSpec) -> float:
    """Share of a group's weights that one token multiplies with.

    Returns ``num_experts_per_tok / num_local_experts`` for MoE expert groups, else 1.

    Source: Fedus et al. 2021 (Switch Transformer) / Jiang et al. 2024 (Mixtral): top-k routing
    sends each token through k of E experts.
    """
    if is_expert_group(group) and spec.num_local_experts > 0 and spec.num_experts_per_tok > 0:
        return min(1.0, spec.num_experts_per_tok / spec.num_local_experts)
    return 1.0


def matmul_groups(
    spec: ModelSpec,
    inventory: Iterable[ParamGroup],
    trainable_keys: Collection[str],
    stack_tokens: Mapping[str, float] | None = None,
) -> list[tuple[str, str, float, bool]]:
    """List the matmul weights a token meets: ``(key, stack, active weight elements, trainable)``.

    ``stack_tokens`` scales a stack that runs over other tokens than the language model's,
    per language-model token (a vision tower: tower tokens / LM tokens; 0 without images).

    Adds the tied LM head (the token embedding's shape, trainable iff the embedding is)
    when ``spec.tie_word_embeddings`` is set, the model has an output layer
    (``ModelSpec.has_lm_head``; causal LMs where that field is absent) and no ``lm_head`` group
    is listed.
    """
    groups = list(inventory)
    out: list[tuple[str, str, float, bool]] = []
    for g in groups:
        if g.kind in MATMUL_KINDS:
            active = g.weight_numel * g.count * active_fraction(g, spec)
            if stack_tokens is not None and g.stack in stack_tokens:
                active *= stack_tokens[g.stack]
            out.append((g.key, g.stack, active, g.key in trainable_keys))
    has_head = any(g.kind == "lm_head" for g in groups)
    has_output_layer = bool(getattr(spec, "has_lm_head", spec.is_causal_lm))
    if spec.tie_word_embeddings and not has_head and has_output_layer:
        embeddings = [g for g in groups if g.kind == "embedding" and g.stack == "embed"]
        word = next((g for g in embeddings if g.in_features == spec.vocab_size), None)
        if word is None:  # rows not recorded: a vocab-multiple embedding, largest first
            rows_ok = [g for g in embeddings if g.weight_numel % spec.vocab_size == 0]
            word = max(rows_ok, key=lambda g: g.weight_numel, default=None)
        trainable = word is not None and word.key in trainable_keys
        # the head multiplies with the embedding matrix itself, whose width may differ from
        # hidden_size (OPT-350m: word_embed_proj_dim 512, hidden 1024)
        numel = word.weight_numel if word is not None else spec.hidden_size * spec.vocab_size
        out.append((TIED_HEAD_KEY, "head", float(numel), trainable))
    return out


def causal_attention_fraction(attn: Attention | None, *, causal: bool = True) -> float:
    """Share of the ``kv_len x q_len`` score matrix that the kernel actually computes.

    Args:
        attn: ``attn_implementation``; ``None`` means "count the full square" (paper
            convention).
        causal: whether the attention is causally masked.

    Returns:
        0.5 for causal attention on flash / memory-efficient kernels (``sdpa`` on a GPU with no
        padding mask, ``flash_attention_2``), which skip fully masked tiles; 1.0 otherwise (eager
        computes the full square, then masks it).

    Source: Dao 2023 (FlashAttention-2), Section 3.1.1 (causal masking: blocks whose column
    indices all exceed the row indices are skipped), and ``flops()`` in Dao-AILab/flash-attention
    ``benchmarks/benchmark_flash_attention.py``, which halves the count when ``causal``.

    """
    if not causal or attn is None or attn == Attention.EAGER:
        return 1.0
    return 0.5


def attention_backward_multiplier(attn: Attention | None) -> float:
    """Backward FLOPs of ``Q K^T`` / ``P V`` as a multiple of their forward FLOPs.

    Eager: 2 (gradients of both matmul inputs). FlashAttention: 2.5 (the backward recomputes
    ``S = Q K^T`` from the saved log-sum-exp: five matmuls versus two in the forward).

    Source: Dao 2023, "FlashAttention-2", Section 3.1.2 (backward pass), and ``flops()`` in
    Dao-AILab/flash-attention ``benchmarks/benchmark_flash_attention.py`` (bwd = 2.5 x fwd).
    """
    if attn is None or attn == Attention.EAGER:
        return 2.0
    return 2.5


def attention_forward_flops_per_token(
    spec: ModelSpec, seq_len: int, attn: Attention | None
) -> dict[str, float]:
    """Forward FLOPs per token of attention scores and values, by stack.

    Each attention layer costs ``4 * kv_len * num_attention_heads * head_dim`` FLOPs per query
    token times the computed share of the score matrix (see :func:`causal_attention_fraction`).
    Decoder-only causal LMs: ``num_hidden_layers`` causal layers. Encoder-only (BERT): full
    (bidirectional) layers. Encoder-decoder (T5): ``num_hidden_layers`` bidirectional encoder
    layers plus ``num_decoder_layers`` decoder layers with causal self-attention and full
    cross-attention; source and target lengths are both taken as ``seq_len``. Sliding-window
    attention and prefix/prompt virtual tokens are not modelled.

    Returns:
        ``{"encoder": flops, "decoder": flops}`` per token (zeros where a stack is absent).

    Source: Narayanan et al. 2021, Appendix (4 B s^2 h forward per layer); Kaplan et al. 2020,
    Table 1.

    """
    width = spec.num_attention_heads * spec.head_dim
    per_layer_full = 4.0 * seq_len * width
    if spec.is_encoder_decoder:
        dec_layers = spec.num_decoder_layers or spec.num_hidden_layers
        enc = spec.num_hidden_layers * per_layer_full
        self_attn = per_layer_full * causal_attention_fraction(attn, causal=True)
        dec = dec_layers * (self_attn + per_layer_full)
        return {"encoder": enc, "decoder": dec}
    if not spec.is_causal_lm:
        return {"encoder": spec.num_hidden_layers * per_layer_full, "decoder": 0.0}
    frac = causal_attention_fraction(attn, causal=True)
    return {"encoder": 0.0, "decoder": spec.num_hidden_layers * per_layer_full * frac}


def skipped_by_early_stop(group: ParamGroup, spec: ModelSpec) -> bool:
    """Tell whether non-reentrant checkpointing's early stop skips re-running this matmul.

    True for the MLP output projection of a sequential-residual layer
    (``intermediate_size -> hidden_size``) when no dropout follows it: its output is not saved
    for backward, so recomputation ends before it. Parallel-residual layers are not analysed
    (nothing is skipped there).

    Source: ``torch.utils.checkpoint.checkpoint(use_reentrant=False)``, ``early_stop`` (default
    True); transformers 5.24 ``_activation_checkpointing_enable`` defaults to
    ``use_reentrant=False``.
    """
    return (
        group.kind == "linear"
        and group.stack in CHECKPOINTED_STACKS
        and group.in_features == spec.intermediate_size
        and group.out_features == spec.hidden_size
        and spec.hidden_dropout == 0.0
        and not spec.parallel_residual
    )


def training_flops_per_token(
    spec: ModelSpec,
    inventory: Iterable[ParamGroup],
    trainable_keys: Collection[str],
    seq_len: int,
    *,
    attn: Attention | None = Attention.SDPA,
    grad_ckpt: bool = False,
    early_stop: bool = True,
    task: Task = Task.TRAIN,
    stack_tokens: Mapping[str, float] | None = None,
) -> FlopsPerToken:
    """FLOPs per token of one training (or inference) step.

    Args:
        spec: the model architecture.
        inventory: the model's parameter groups, plus any adapter groups (LoRA ``lora_A`` /
            ``lora_B`` as ``kind="linear"``) the caller wants counted.
        trainable_keys: keys of the trainable groups (weights receive gradients); an empty
            set means nothing is trained (forward only). Keys not in the inventory (e.g. prompt
            embeddings) still make it a training step: every matmul pays its input gradient.
        seq_len: tokens per sequence (the attention context length).
        attn: attention implementation (decides the causal skip and the attention backward
            cost); ``None`` counts the full score square with a 2x backward, the convention of
            the Megatron-LM and PaLM formulas.
        grad_ckpt: gradient checkpointing per layer (adds one forward of the layer stacks).
        early_stop: non-reentrant checkpointing with early stop (transformers >= 5 default):
            the MLP output projection is not recomputed (see :func:`skipped_by_early_stop`);
            ``False`` models ``use_reentrant=True`` (a full forward of each layer).
        task: ``inference`` counts the forward pass only.
        stack_tokens: per stack, the tokens it runs over per language-model token (a vision
            tower's and projector's; see :func:`matmul_groups`).

    Returns:
        FLOPs per token by pass, with slash-keyed details.

    Source: see the module docstring (Kaplan et al. 2020; Narayanan et al. 2021; Hoffmann et al.
    2022; Dao 2023).

    """
    groups = list(inventory)
    mm = matmul_groups(spec, groups, trainable_keys, stack_tokens)
    fwd_layers = sum(2.0 * n for _, stack, n, _ in mm if stack in CHECKPOINTED_STACKS)
    fwd_head = sum(2.0 * n for _, stack, n, _ in mm if stack == "head")
    fwd_other = sum(2.0 * n for _, stack, n, _ in mm if stack not in (*CHECKPOINTED_STACKS, "head"))
    att = attention_forward_flops_per_token(spec, seq_len, attn)
    fwd_att = att["encoder"] + att["decoder"]

    details: dict[str, float] = {
        "forward/matmul": fwd_layers + fwd_other,
        "forward/lm_head": fwd_head,
        "forward/attention": fwd_att,
    }
    forward = fwd_layers + fwd_other + fwd_head + fwd_att
    if task == Task.INFERENCE or not trainable_keys:
        return FlopsPerToken(forward=forward, backward=0.0, recompute=0.0, details=details)

    bwd_trainable = sum(4.0 * n for _, _, n, t in mm if t)
    bwd_frozen = sum(2.0 * n for _, _, n, t in mm if not t)
    bwd_att = fwd_att * attention_backward_multiplier(attn)
    details["backward/matmul_trainable"] = bwd_trainable
    details["backward/matmul_frozen"] = bwd_frozen
    details["backward/attention"] = bwd_att
    backward = bwd_trainable + bwd_frozen + bwd_att

    recompute = 0.0
    if grad_ckpt:
        skipped = 0.0
        if early_stop:
            skipped = sum(
                2.0 * g.weight_numel * g.count * active_fraction(g, spec)
                for g in groups
                if skipped_by_early_stop(g, spec)
            )
        details["recompute/matmul"] = fwd_layers - skipped
        details["recompute/attention"] = fwd_att
        recompute = fwd_layers - skipped + fwd_att
    return FlopsPerToken(forward=forward, backward=backward, recompute=recompute, details=details)
