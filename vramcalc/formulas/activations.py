"""Activations: the tensors autograd saves for backward, layer by layer, and the transients.

The model is a ledger of the tensors a transformers layer creates in forward, in the order the
code creates them, each marked *saved* (kept by an autograd node until that node's backward)
or *transient*. Saved tensors are de-duplicated by identity (``q_proj``, ``k_proj`` and
``v_proj`` save the same input once), and each is rounded to the allocator's 512-byte block.

Facts the rules encode (each was checked against fake-CUDA traces of transformers 5.24 /
PyTorch 2.13 with ``validation.trace``; grid results in
``validation/measurements/trace-grid.jsonl``):

* ``nn.Linear`` saves its input only when its weight trains; a frozen base layer (LoRA) saves
  nothing for its own backward. Under autocast each linear casts its fp32 input to 16-bit
  itself, so q/k/v save three copies where pure 16-bit saves one shared tensor, and every
  linear weight whose input needs a gradient gets a 16-bit copy that lives until backward.
  Source: ``tools/autograd/derivatives.yaml`` (``mm``/``addmm``),
  ``aten/src/ATen/autocast_mode.cpp``.
* LayerNorm saves its input, mean and rstd (fp32, B*S each); Llama RMSNorm saves an fp32 copy
  of a 16-bit input, ``rsqrt`` (B*S fp32) and, if its weight trains, the normalised tensor;
  Gemma's keeps the normalised tensor in fp32. Source: ``modeling_llama.py``/``modeling_gemma.py``.
* SDPA flash (16-bit) and memory-efficient (fp32) kernels save q, k, v, the output and a
  B*heads*S fp32 log-sum-exp (padded to 32 rows for the efficient kernel); masks, fp32 with
  GQA, or unsupported head sizes fall back to the math path, which saves the B*heads*S*S
  probabilities like eager. Source: ``aten/src/ATen/native/transformers/attention.cpp``,
  ``torch/_meta_registrations.py``.
* Eager attention saves q, k (repeated for GQA), the fp32 softmax output, its 16-bit cast, the
  dropout mask (1 byte per element on CUDA) and the dropped probabilities, v, and the
  contiguous output. Source: ``transformers/models/llama/modeling_llama.py``
  (``eager_attention_forward``).
* Gated MLPs save gate, up, act(gate) and the product; GPT-2's ``gelu_new`` (python tanh
  formula) saves its input, tanh output, ``0.5*x`` and ``1+tanh``; ``F.gelu``/``relu``/``silu``
  save their input (relu its output).
* Dropout keeps a 1-byte mask on CUDA (``native_dropout``); its output is saved only when the
  next op needs it.
* The causal-LM loss upcasts logits to fp32 (a copy unless already fp32); ``log_softmax``
  saves its fp32 output; backward creates two more B*S*V fp32 buffers (``nll_loss`` and
  ``log_softmax`` backward). Source: ``transformers/loss/loss_utils.py`` (``ForCausalLMLoss``).
* Gradient checkpointing (non-reentrant, per decoder layer) keeps each layer's input and
  recomputes one layer at a time in backward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from itertools import groupby

from vramcalc import catalog
from vramcalc.enums import Attention, DType, MixedPrecision
from vramcalc.formulas.counts import ParamGroup
from vramcalc.formulas.params import ParamPlan, block, dtype_bytes
from vramcalc.formulas.vision import is_vlm, tower_spec
from vramcalc.specs import ModelSpec, RecipeSpec, TrainingSpec, VisionSpec

__all__ = ["ActivationProfile", "LayerKind", "Ledger", "activation_profile", "attention_kernels",
           "layer_kinds"]  # fmt: skip


class Ledger:
    """Tensors of one region of the forward pass: saved (for backward) and transient."""

    def __init__(self) -> None:
        self.saved: dict[str, tuple[str, int]] = {}
        self.live_peak = 0
        self._transient = 0
        # under non-reentrant checkpointing, relative to (saved + forward/backward extra):
        # (forward working set, backward bytes at the MLP's activation-product backward,
        # share of the block's gradients created by then, backward bytes at the attention's
        # backward); None where not modelled (_block)
        self.ckpt_moments: tuple[int, int, float, int] | None = None

    def save(self, name: str, detail: str, nbytes: int | float) -> None:
        """Record a tensor kept for backward (first writer wins; ``name`` de-duplicates)."""
        if nbytes > 0 and name not in self.saved:
            self.saved[name] = (detail, block(nbytes))

    def transient(self, *nbytes: int | float) -> None:
        """Note a moment where these extra (unsaved) tensors are alive on top of the saved."""
        extra = sum(block(n) for n in nbytes)
        self.live_peak = max(self.live_peak, self.total + extra)

    @property
    def total(self) -> int:
        """Saved bytes so far."""
        return sum(b for _, b in self.saved.values())

    def by_detail(self) -> dict[str, int]:
        """Return saved bytes by ``activations/<detail>`` key."""
        out: dict[str, int] = {}
        for detail, b in self.saved.values():
            out[f"activations/{detail}"] = out.get(f"activations/{detail}", 0) + b
        return out


@dataclass
class ActivationProfile:
    """Activation bytes of one micro-batch, as the step walk needs them.

    Attributes:
        embed_saved: saved by the embedding stage (dropout mask, scaled embeddings).
        layer_saved: saved per block, in order (encoder blocks then decoder blocks).
        layer_fwd_extra: per block, the transient peak above its saved bytes in forward.
        layer_bwd_extra: per block, the transient peak of its backward (gradients of its
            activations and of its weights before they are accumulated).
        head_saved: final norm and the LM head's saved input.
        logits_fwd: extra bytes alive at the loss in forward (logits, fp32 copy).
        loss_saved: saved by the loss (``log_softmax`` output).
        loss_bwd_extra: transient bytes of the loss backward (two B*S*V fp32 buffers, ...).
        head_bwd_extra: transient bytes of the LM-head backward.
        fnorm_bwd: bytes alive above the blocks' saved tensors during the final RMSNorm's
            backward (its saved fp32 input and ``rsqrt``, and five fp32 B*S*H temporaries);
            0 for fused norms (LayerNorm, Liger).
        amp_weight_copies: 16-bit weight copies autocast keeps alive until backward.
        ckpt_input: with checkpointing, bytes kept per block (its input).
        tower_blocks: a vision-language model's tower blocks at the front of the block lists.
        held_logits: logits the training loop keeps referenced from the loss to the end of
            the step and through the next forward (LitGPT's ``logits`` variable).
        details: ``activations/...`` -> bytes at the end of forward.

    """

    embed_saved: int = 0
    layer_saved: list[int] = field(default_factory=list)
    layer_fwd_extra: list[int] = field(default_factory=list)
    layer_bwd_extra: list[int] = field(default_factory=list)
    head_saved: int = 0
    logits_fwd: int = 0
    loss_saved: int = 0
    loss_bwd_extra: int = 0
    head_bwd_extra: int = 0
    fnorm_bwd: int = 0
    amp_weight_copies: int = 0
    amp_copy_per_layer: list[int] = field(default_factory=list)
    amp_head_copy: int = 0
    ckpt_input: list[int] = field(default_factory=list)
    layer_ckpt: list[tuple[int, int, float, int] | None] = field(default_factory=list)
    held_logits: int = 0
    details: dict[str, int] = field(default_factory=dict)
    tower_blocks: int = 0
    """Vision-tower blocks at the front of ``layer_saved`` (0 for text models)."""
    ckpt_fwd: dict[int, int] = field(default_factory=dict)
    """Under checkpointing, a block's working set in its (discarding) forward where it is less
    than its ledger (block index -> bytes; the ledger otherwise)."""
    output_cache: int = 0
    """Bytes the model output keeps referenced from the forward to the loss but no backward
    needs (Llama-3.2-Vision's cross-attention KV cache, ``use_cache``); ``output_cache_from``
    is the first block whose forward creates them."""
    output_cache_from: int = 0
    tower_kept: int = 0
    """Under checkpointing, bytes of tower blocks that are not checkpointed (Llama-3.2-Vision:
    their whole ledgers, held in ``ckpt_input``)."""

    @property
    def forward_total(self) -> int:
        """Saved bytes at the end of forward (checkpointing applied), loss excluded."""
        layers = sum(self.ckpt_input) if self.ckpt_input else sum(self.layer_saved)
        return self.embed_saved + layers + self.head_saved + self.amp_weight_copies


@dataclass(frozen=True)
class LayerKind:
    """What one decoder layer runs: its attention pattern and its MLP kind.

    Attributes:
        attn: ``full``, ``sliding`` (window ``sliding_window``) or ``chunked``
            (``attention_chunk_size``).
        masked: an explicit mask reaches the attention kernel (a sliding/chunked layer whose
            sequence reaches the window, or a model that always builds one, as Falcon).
        moe: the MLP is a sparse MoE block (else the dense MLP of the layer schedule).

    """

    attn: str = "full"
    masked: bool = False
    moe: bool = False


def _arch_int(spec: ModelSpec, key: str) -> int:
    v = spec.arch.get(key)
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) else 0


def layer_kinds(spec: ModelSpec, seq_len: int, *, padded: bool = False) -> list[LayerKind]:
    """List the decoder layers of ``spec`` in order, each with its attention and MLP kind.

    Counts come from the template's ``arch`` extras (``sliding_layers``, ``chunked_layers``,
    ``moe_layers``); a template with ``sliding_window`` but no ``sliding_layers`` (Mistral,
    Mixtral, Phi-3, Starcoder2) windows every layer. transformers materialises a sliding or
    chunked mask once the key length reaches the window (``masking_utils.py``
    ``_ignore_causal_mask_sdpa``: ``kv_length >= local_attention_size``); below it the layer is
    plain causal attention. Falcon (``always_mask``) builds its mask for every layer
    (``modeling_falcon.py`` ``create_causal_mask(..., allow_is_causal_skip=False)``). Order:
    dense layers first (DeepSeek ``first_k_dense_replace``, and layer 0 is dense with
    ``decoder_sparse_step``/``interleave_moe_layer_step`` 2), windowed layers first unless the
    window applies to the top layers (Qwen ``max_window_layers``); only the first layer's
    position matters to the estimate (its input needs no gradient under LoRA). ``padded``: the
    batch's attention mask holds padding (TRL's preference collators), so transformers builds
    the 4-D mask for every layer (``_ignore_causal_mask_sdpa`` is False once a 0 is in the
    2-D mask) and every layer is masked.

    Source: transformers v5.24 ``configuration_{gemma2,gemma3,qwen3,gpt_oss,llama4}.py``
    (``layer_types``), ``modeling_deepseek_v3.py``, ``modeling_qwen3_moe.py``,
    ``modeling_llama4.py`` (layer schedules), ``masking_utils.py``.
    """
    n = spec.num_hidden_layers
    window = _arch_int(spec, "sliding_window")
    chunk = _arch_int(spec, "attention_chunk_size")
    if "sliding_layers" in spec.arch:
        n_sliding = _arch_int(spec, "sliding_layers") if window else 0
    else:
        n_sliding = n if window else 0
    n_chunked = _arch_int(spec, "chunked_layers") if chunk else 0
    top_windows = "max_window_layers" in catalog.architecture(spec.model_type).get("defaults", {})
    experts = spec.num_local_experts > 0
    n_moe = (_arch_int(spec, "moe_layers") if "moe_layers" in spec.arch else n) if experts else 0
    always = bool(spec.arch.get("always_mask"))
    return list(
        _layer_kinds(
            n, window, chunk, n_sliding, n_chunked, top_windows, n_moe, always or padded, seq_len
        )
    )


@lru_cache(maxsize=256)
def _layer_kinds(
    n: int,
    window: int,
    chunk: int,
    n_sliding: int,
    n_chunked: int,
    top_windows: bool,
    n_moe: int,
    always: bool,
    seq_len: int,
) -> tuple[LayerKind, ...]:
    """``layer_kinds`` from the numbers it reads (one ``LayerKind`` object per distinct kind)."""
    attn = ["sliding"] * n_sliding + ["chunked"] * n_chunked
    attn += ["full"] * max(0, n - len(attn))
    if top_windows:
        attn.reverse()
    moe = [False] * (n - n_moe) + [True] * n_moe
    made: dict[tuple[str, bool, bool], LayerKind] = {}
    out = []
    for i in range(n):
        a = attn[i] if i < len(attn) else "full"
        w = window if a == "sliding" else chunk if a == "chunked" else 0
        key = (a, always or (w > 0 and seq_len >= w), moe[i])
        kind = made.get(key)
        if kind is None:
            kind = made[key] = LayerKind(attn=key[0], masked=key[1], moe=key[2])
        out.append(kind)
    return tuple(out)


def attention_kernels(spec: ModelSpec, tr: TrainingSpec) -> str:
    """Name the attention kernels the estimate assumes, per kind of layer (for ``assumptions``).

    Source: ``_attention`` below; the kernel choice checked with the profiler on an H200
    (torch 2.11) and mirrored by the tracer (``validation/trace.py``).
    """
    kinds = layer_kinds(spec, tr.seq_len, padded=_padded(tr) or _image_blocks(spec, tr))
    amp = tr.mixed_precision != MixedPrecision.NO
    rope = spec.position_embedding == "rotary"
    # rotary q/k stay 16-bit under autocast where they are cast back (ModernBERT, LitGPT)
    rope_back = tr.recipe.rope_dtype == "input" or spec.arch.get("rope_cast_back") is True
    ab = (
        4
        if (amp and rope and tr.attn != Attention.EAGER and not rope_back)
        or (not amp and tr.param_dtype == DType.FP32)
        else 2
    )
    counts: dict[str, int] = {}
    for k, run in groupby(kinds):  # runs of equal layers: one kernel choice per run
        if tr.attn == Attention.EAGER:
            name = "eager (softmax saved)"
        else:
            name = _sdpa_kernel(spec, ab, masked=k.masked)
        label = f"{name}{' [' + k.attn + ']' if k.attn != 'full' else ''}"
        counts[label] = counts.get(label, 0) + sum(1 for _ in run)
    return ", ".join(f"{v} x {k}" for k, v in counts.items())


def _padded(tr: TrainingSpec) -> bool:
    """Tell whether a padded batch's mask reaches SDPA (``TrainerSpec.padded_batch``).

    Only SDPA takes the mask as a tensor: eager attention adds a mask whatever the padding,
    and flash-attention-2 unpads the rows (transformers ``modeling_flash_attention_utils.py``
    ``_upad_input``), so neither changes.
    """
    return tr.trainer.padded_batch and tr.attn == Attention.SDPA


def _image_blocks(spec: ModelSpec, tr: TrainingSpec) -> bool:
    """Tell whether images make the language model build a mask for every layer.

    Gemma 3 attends bidirectionally within each image's tokens: with the processor's
    ``token_type_ids`` it builds its masks from ``create_masks_for_vision_model`` (an
    or-mask over the causal one), which every layer's attention receives explicitly.
    Source: transformers v5.24 ``modeling_gemma3.py`` ``Gemma3Model.forward``.
    """
    vis = tr.vision
    return vis is not None and vis.images > 0 and spec.arch.get("vision_block_mask") is True


def _sdpa_kernel(spec: ModelSpec, ab: int, *, masked: bool) -> str:
    """Name the SDPA backend a GPU runs for one layer (see the module docstring)."""
    heads, kvh = spec.num_attention_heads, spec.num_key_value_heads
    qk, v = _qk_v_head_dims(spec)
    ok_dims = qk % 8 == 0 and v % 8 == 0
    repeats = spec.arch.get("kv_repeat", True) is not False
    if not ok_dims:
        return "sdpa math"
    if spec.position_embedding == "relative":
        # T5's learned relative bias reaches SDPA as a float additive mask (possibly needing
        # its gradient): flash is ruled out, the memory-efficient kernel takes it (with the
        # bias gradient), as for any explicit mask with equal q/k/v head counts
        return "sdpa memory-efficient (float position-bias mask)"
    if masked:
        if kvh != heads and not repeats:
            return "sdpa math (broadcast K/V heads with a mask)"
        return "sdpa memory-efficient/cuDNN (explicit mask)"
    if qk != v:
        return "sdpa memory-efficient/cuDNN" if kvh == heads else "sdpa math"
    if qk > 256:
        return "sdpa math"
    if ab == 4:
        return "sdpa memory-efficient" if kvh == heads else "sdpa math"
    return "sdpa flash"


def _qk_v_head_dims(spec: ModelSpec) -> tuple[int, int]:
    """(q/k head size, v head size): MLA's v head (``v_head_dim``) may differ."""
    v = _arch_int(spec, "v_head_dim")
    return spec.head_dim, (v or spec.head_dim)


def _layer_groups(inventory: tuple[ParamGroup, ...], stack: str) -> list[ParamGroup]:
    return [g for g in inventory if g.stack == stack and g.kind == "linear" and not g.expert]


def _split_schedule(
    groups: list[ParamGroup], spec: ModelSpec, has_experts: bool
) -> tuple[list[ParamGroup], list[ParamGroup]]:
    """Split a block's groups into those of a dense layer and of a MoE layer.

    A template lists the dense MLP of the schedule's dense layers (DeepSeek
    ``first_k_dense_replace``, Qwen ``mlp_only_layers``/``decoder_sparse_step``, Llama 4
    ``interleave_moe_layer_step``) next to the MoE layers' shared experts and linear routers;
    the latter are named ``shared*`` or are routers. Without dense layers every layer holds
    all groups.
    """
    if not has_experts or not _arch_int(spec, "dense_layers"):
        return groups, groups

    def moe_side(g: ParamGroup) -> bool:
        return "shared" in g.key or _is_router(g, spec)

    dense = [g for g in groups if _is_attention(g) or not moe_side(g)]
    moe = [g for g in groups if _is_attention(g) or moe_side(g)]
    return dense, moe


def _expert_groups(inventory: tuple[ParamGroup, ...], stack: str) -> list[ParamGroup]:
    return [g for g in inventory if g.stack == stack and g.kind == "linear" and g.expert]


@dataclass
class _Ctx:
    """What every layer's saved-tensor ledger reads: the model, the step and its byte widths.

    (A docstring also spares ``dataclass`` from building one with ``inspect.signature`` at
    import.)
    """

    spec: ModelSpec
    tr: TrainingSpec
    plan: ParamPlan
    T: int
    B: int
    S: int
    pb: int
    cb: int
    amp: bool
    full: bool
    lora: set[str]
    lora_r: int
    lora_dropout: float
    attn: Attention
    seq_shard: int = 1
    recipe: RecipeSpec = field(default_factory=RecipeSpec)
    ssm_inner_norms: bool = False
    kv_len: int = 0  # decoder of an encoder-decoder: the encoder length cross-attention reads


def activation_profile(
    spec: ModelSpec,
    inventory: tuple[ParamGroup, ...],
    tr: TrainingSpec,
    plan: ParamPlan,
    *,
    seq_shard: int = 1,
    blocks_trainable: bool = False,
) -> ActivationProfile:
    """Activation bytes of one forward/backward of ``tr.batch_size`` x ``tr.seq_len`` tokens.

    ``spec`` and ``inventory`` are one rank's (``layout.rank_spec``): under tensor
    parallelism they carry the local heads and MLP width, so everything inside attention and
    the MLP is per rank while the hidden-size tensors (norm inputs and statistics, residual
    dropout masks) are whole -- Korthikanti et al. 2022 Table 2's ``10 + 24/t`` split. With
    sequence parallelism (``seq_shard = tp``) those hidden-size tensors are split over the
    sequence as torch's ``SequenceParallel`` does for the norms and dropouts; the column
    linears' inputs are all-gathered and saved whole (torch ``ColwiseParallel`` with
    ``input_layouts=Shard(1)``), unlike Megatron-LM, which saves them sharded and gathers again
    in backward.

    Source: the ledger rules in this module's docstring, checked against the traced grid;
    torch 2.13 ``distributed/tensor/parallel/style.py``.
    """
    B, S = tr.batch_size, tr.seq_len
    pb = dtype_bytes(tr.param_dtype)
    if plan.kbit_upcast and tr.peft is not None:
        # QLoRA: ``prepare_model_for_kbit_training`` (peft 0.21 utils/other.py) casts every
        # parameter that is not quantized to fp32 -- embeddings, norms, lm_head -- so the
        # residual stream is fp32 from the embedding on, and bitsandbytes' ``Linear4bit``
        # casts its output back to the input dtype: the block saves what an fp32 model
        # saves. Calibration record: validation/measurements/cuda-h200-2026-11-30.jsonl
        # (llama2-7b QLoRA b1 s1304: 11.2 GiB of activations on the H200, the bf16 ledger
        # gave 7.2 GiB, this one 11.0 GiB).
        pb = 4
    amp = tr.mixed_precision != MixedPrecision.NO
    cb = 2 if amp else pb
    peft = tr.peft
    ctx = _Ctx(
        spec=spec, tr=tr, plan=plan, T=B * S, B=B, S=S, pb=pb, cb=cb, amp=amp,
        full=peft is None,
        lora=set(plan.lora_modules) if not is_vlm(spec) else set().union(
            *(m for k, m in plan.lora_by_stack.items() if k not in ("vision", "projector"))
        ),
        lora_r=peft.r if peft is not None else 0,
        lora_dropout=peft.dropout if peft is not None else 0.0, attn=tr.attn,
        seq_shard=seq_shard, recipe=tr.recipe,
        ssm_inner_norms=any(g.module == "dt_layernorm" for g in inventory),
    )  # fmt: skip
    prof = ActivationProfile()
    rb = 4 if amp else pb  # residual stream: fp32 under autocast (fp32 embeddings + casts)
    if tr.quant is not None:
        rb = 4 if amp else pb
    # ---------------------------------------------------------------- embeddings
    emb = Ledger()
    if spec.embedding_dropout > 0:
        emb.save("emb_mask", "dropout_masks", ctx.T * spec.hidden_size)
    if spec.position_embedding == "relative":
        # T5 compute_bias: the embedding lookup of the S x S bucket ids saves them (int64)
        emb.save("rel_bucket_idx", "attention", S * S * 8)
    if spec.model_type.startswith("gemma"):
        pass  # embeddings * normalizer: a new tensor, saved by the first norm as its input
    prof.embed_saved = emb.total
    details: dict[str, int] = dict(emb.by_detail())
    # ---------------------------------------------------------------- blocks
    grad_flows = ctx.full or tr.grad_ckpt
    if blocks_trainable:
        # FSDP1 with LoRA inside the block's flat parameter (use_orig_params): every block
        # weight is a view of a parameter that requires grad, so the block saves what full
        # fine-tuning saves (linear inputs, norm outputs) on top of the adapters' tensors; the
        # embedding and the head (the root unit, all frozen) do not (rank-0 traces
        # *-lora-in-blocks, validation/measurements/trace-dist.jsonl)
        ctx = replace(ctx, full=True)
    stacks = (
        ["encoder", "decoder"]
        if spec.is_encoder_decoder
        else ["encoder" if any(g.stack == "encoder" for g in inventory) else "decoder"]
    )
    n_layers = {"encoder": spec.num_hidden_layers, "decoder": spec.num_hidden_layers}
    if spec.is_encoder_decoder:
        n_layers["decoder"] = spec.num_decoder_layers or spec.num_hidden_layers
    decoder_kinds = (
        layer_kinds(spec, S, padded=_padded(tr) or _image_blocks(spec, tr))
        if not spec.is_encoder_decoder
        else []
    )
    enc_len = S
    dec_len = tr.target_len or S
    base_ctx = ctx
    hybrid = bool(_arch_int(spec, "attn_layer_period") or _arch_int(spec, "expert_layer_period"))
    cross = _cross_layers(spec)
    for stack in stacks:
        groups = _layer_groups(inventory, stack)
        if cross and stack == "decoder":
            # Llama-3.2-Vision: the self-attention layers walk here; the cross-attention layers
            # (another block) are added below, and skipped without images
            n_layers[stack] = spec.num_hidden_layers - len(cross)
            groups = [g for g in groups if "/cross_attn/" not in g.key]
        experts = _expert_groups(inventory, stack)
        dense_groups, moe_groups = _split_schedule(groups, spec, bool(experts))
        if spec.is_encoder_decoder and stack == "decoder":
            # the decoder runs over target_len tokens and cross-attends to the encoder's
            # output, saved once (the k/v projections of every decoder layer read it); each
            # stack drops out its embeddings and its final norm's output
            ctx = replace(base_ctx, T=B * dec_len, S=dec_len, kv_len=enc_len)
            _enc_tail(prof, base_ctx, rb, details)
            dec = Ledger()
            if spec.embedding_dropout > 0:
                dec.save("dec_emb_mask", "dropout_masks", ctx.T * spec.hidden_size)
            if spec.position_embedding == "relative":  # bucket ids and the causal bool mask
                dec.save("dec_bucket_idx", "attention", dec_len * dec_len * 8)
                dec.save("dec_causal", "attention", dec_len * dec_len)
                if ctx.attn != Attention.EAGER and (ctx.full or ctx.lora):
                    # _dec_cross_bias: the first cross-attention's zero (1, heads, S_dec,
                    # S_enc) bias, reused by every decoder layer and saved by their SDPA
                    heads = spec.num_attention_heads
                    dec.save("x_pos_bias", "attention", heads * dec_len * enc_len * ctx.cb)
            prof.embed_saved += dec.total
            for k, v in dec.by_detail().items():
                details[k] = details.get(k, 0) + v
        memo: dict[tuple[bool, str, LayerKind], tuple[Ledger, int, int, bool, int]] = {}
        detail_cache: dict[int, dict[str, int]] = {}
        total_cache: dict[int, int] = {}
        uses: dict[int, int] = {}
        ckpt_in = block(ctx.T * spec.hidden_size * rb) if tr.grad_ckpt else 0
        i, n = 0, n_layers[stack]
        # an encoder-only model's layers have kinds too (ModernBERT's local layers)
        own = decoder_kinds[:n]
        kinds = own + [LayerKind(moe=bool(experts))] * (n - len(own))
        # a stack whose blocks differ (hybrids, per-layer attention or MLP kinds) walks block
        # by block (equal kinds are mostly the same object: compare only the others)
        mixed = hybrid or (bool(kinds) and kinds.count(kinds[0]) != len(kinds))
        while i < n:
            # identical blocks give identical ledgers; what differs is "does the input need a
            # gradient" (the first block under LoRA without checkpointing), the layer kind
            # (attention pattern, dense or MoE MLP) and, in hybrids, the layer's mixer
            # (attention or SSM) and feed-forward (dense or MoE)
            kind = kinds[i]
            hkind = _hybrid_kind(spec, i)
            key = (grad_flows, hkind, kind)
            if key not in memo:
                if hkind:
                    lg, le = _hybrid_groups(groups, experts, hkind)
                    memo[key] = _block(
                        ctx, lg, rb, x_requires_grad=grad_flows, first=i == 0, experts=le,
                        kind=kind,
                    )  # fmt: skip
                else:
                    memo[key] = _block(
                        ctx, moe_groups if kind.moe else dense_groups, rb,
                        x_requires_grad=grad_flows, first=i == 0,
                        experts=experts if kind.moe else None, kind=kind,
                    )  # fmt: skip
            led, extra_f, extra_b, needs_grad_after, amp_copy = memo[key]
            # once the flag is stable, every remaining block reuses this ledger (unless the
            # stack mixes block kinds): add them at once
            reps = n - i if (grad_flows or not needs_grad_after) and not mixed else 1
            grad_flows = grad_flows or needs_grad_after
            if id(led) not in total_cache:
                total_cache[id(led)] = led.total
            prof.layer_saved += [total_cache[id(led)]] * reps
            prof.layer_fwd_extra += [extra_f] * reps
            prof.layer_bwd_extra += [extra_b] * reps
            prof.amp_copy_per_layer += [amp_copy] * reps
            if tr.grad_ckpt:
                prof.ckpt_input += [ckpt_in] * reps
                prof.layer_ckpt += [led.ckpt_moments] * reps
            if id(led) not in detail_cache:
                detail_cache[id(led)] = led.by_detail()
            uses[id(led)] = uses.get(id(led), 0) + reps
            i += reps
        for led_id, n_uses in uses.items():
            for k, v in detail_cache[led_id].items():
                details[k] = details.get(k, 0) + v * n_uses
    vis = tr.vision
    if cross and vis is not None and vis.images > 0:
        _mllama_cross_layers(prof, ctx, inventory, vis, rb, cross, details)
    has_attn = any(_is_attention(g) and g.stack != "vision" for g in inventory)
    mask = _eager_masks(ctx, decoder_kinds if has_attn else [], encoder_only=stacks == ["encoder"])
    if mask and tr.grad_ckpt and prof.ckpt_input:
        # the checkpoints keep their layers' arguments for the recomputation, the mask among
        # them: alive from the first block's forward to the end of its backward
        prof.ckpt_input[0] += mask
    elif mask:
        prof.layer_fwd_extra = [x + mask for x in prof.layer_fwd_extra]
    if vis is not None and vis.images > 0 and is_vlm(spec):
        if spec.arch.get("vision_resize") == "tiles":
            _mllama_tower(prof, ctx, inventory, vis, details)
            prof.output_cache_from += prof.tower_blocks
            prof.ckpt_fwd = {i + prof.tower_blocks: v for i, v in prof.ckpt_fwd.items()}
        else:
            _vision_tower(prof, ctx, inventory, vis, details)
    if tr.grad_ckpt:
        ck = sum(prof.ckpt_input) - prof.tower_kept
        vision_kept = details.get("activations/vision", 0) if prof.tower_kept else 0
        details = {k: v for k, v in details.items() if k == "activations/dropout_masks"}
        details.pop("activations/dropout_masks", None)
        details["activations/checkpoints"] = ck - mask
        if mask:
            details["activations/attention_mask"] = mask
        if vision_kept:  # Llama-3.2-Vision's tower is not checkpointed
            details["activations/vision"] = vision_kept
    # ---------------------------------------------------------------- head and loss
    if blocks_trainable:
        ctx = replace(ctx, full=peft is None)
    head = Ledger()
    H, V = spec.hidden_size, spec.vocab_size
    head_trainable = ctx.full
    if spec.arch.get("norm_impl") == "centred_python":
        _centred_layernorm(head, "fnorm", ctx.T, H, trainable=ctx.full)
        fn_out = 4 if amp else pb
    elif spec.norm == "layernorm":
        head.save("fnorm_in", "norms", ctx.T * H * rb)
        head.save("fnorm_stats", "norms", ctx.T * 4)
        head.save("fnorm_stats2", "norms", ctx.T * 4)
        fn_out = 4 if amp else pb
    else:
        _rmsnorm(head, ctx, "fnorm", ctx.T * H, rb, trainable=ctx.full)
        fn_out = rb
        if ctx.recipe.norm_impl != "liger":
            prof.fnorm_bwd = _rmsnorm_backward(head, ctx.T * H)
    if spec.has_lm_head and spec.arch.get("task_head") == "masked_lm":
        fn_out = _mlm_transform(head, ctx, fn_out)
        if amp:
            prof.amp_head_copy += block(H * H * 2)
    if spec.has_lm_head:
        if head_trainable:
            head.save("head_in", "linear_inputs", ctx.T * H * (2 if amp else fn_out))
        _loss(prof, ctx, head_trainable)
        if _arch_num(spec, "final_logit_softcapping") and ctx.recipe.loss != "fused_linear":
            # Gemma-2: logits / cap -> tanh -> * cap; tanh saves its output, and backward
            # runs through one more logits-sized gradient (modeling_gemma2.py
            # Gemma2ForCausalLM.forward)
            head.save("softcap_tanh", "logits", ctx.T * V * cb)
        if amp:
            prof.amp_head_copy += block(V * H * 2)
        if tr.quant is not None and ctx.recipe.quant_lm_head:
            # a quantized LM head (LitGPT BitsandbytesPrecision) is dequantized for each
            # chunk's forward and again for its input gradient
            prof.head_bwd_extra += block(V * H * cb)
    prof.head_saved = head.total
    if prof.loss_saved:
        details["activations/logits"] = prof.loss_saved + prof.held_logits
    for k, v in head.by_detail().items():
        details[k] = details.get(k, 0) + v
    if amp:
        prof.amp_weight_copies = sum(prof.amp_copy_per_layer) + prof.amp_head_copy
        details["activations/amp_weight_copies"] = prof.amp_weight_copies
    prof.details = {k: v for k, v in details.items() if v > 0}
    return prof


def _mlm_transform(head: Ledger, ctx: _Ctx, x_bytes: int) -> int:
    """Record the masked-LM head's transform before the decoder; return its output's bytes.

    ``dense`` (H -> H) -> activation -> ``LayerNorm``, on the final norm's output. The dense
    layer saves its input when its weight trains (under autocast the 16-bit copy of the fp32
    norm output); the activation saves its (compute-dtype) input and the LayerNorm its input
    (fp32 under autocast: ``layer_norm`` is an fp32 autocast op) with the per-row mean and
    rstd, whenever a gradient flows back through them (full fine-tuning or adapters below).
    The output is fp32 under autocast, else the weights' dtype. The vocabulary decoder and
    the masked-LM loss (``ForMaskedLMLoss``: the logits upcast to fp32, cross-entropy over
    every position, no shift) are the causal LM head's ledger.

    Source: transformers 5.24 ``models/modernbert/modeling_modernbert.py``
    (``ModernBertPredictionHead``, ``ModernBertForMaskedLM.forward``), ``loss/loss_utils.py``
    (``ForMaskedLMLoss``); traced: validation/measurements/trace-grid.jsonl ``modernbert-*``.
    """
    T, H, amp = ctx.T, ctx.spec.hidden_size, ctx.amp
    cb = 2 if amp else ctx.pb
    if ctx.full:
        head.save("mlm_dense_in", "linear_inputs", T * H * (2 if amp else x_bytes))
    head.save("mlm_act_in", "mlp", T * H * cb)
    head.save("mlm_norm_in", "norms", T * H * (4 if amp else cb))
    head.save("mlm_norm_mean", "norms", T * 4)
    head.save("mlm_norm_rstd", "norms", T * 4)
    return 4 if amp else ctx.pb


def liger_chunk_rows(tokens: int, hidden: int, vocab: int) -> int:
    """Rows per chunk of Liger's fused linear cross-entropy.

    ``inc_factor = cdiv(V, H)``; ``chunk_size = next_power_of_2(cdiv(BT, inc_factor))``.
    Source: Liger-Kernel 0.5 ``ops/fused_linear_cross_entropy.py``
    (``fused_linear_cross_entropy_forward``).
    """
    inc = -(-vocab // hidden)
    rows = -(-tokens // inc)
    return min(1 << (rows - 1).bit_length(), max(tokens, 1))


def _eager_masks(ctx: _Ctx, kinds: list[LayerKind], *, encoder_only: bool) -> int:
    """Bytes of the float masks transformers builds for eager attention (0 for other kernels).

    ``eager_mask`` materialises the boolean mask as a (B, 1, S, S) tensor of 0 and the dtype's
    minimum in the embeddings' dtype, one per kind of layer (full, sliding, chunked) and never
    skips a causal one (``allow_is_causal_skip=False``); a bidirectional full mask without
    padding is skipped (``_ignore_bidirectional_mask_sdpa``). The model's forward holds the
    masks for every layer; ``attn_weights + attention_mask`` saves none of them. T5 builds its
    own position-bias masks (the ledger's ``pos_bias``). Source: transformers v5.24
    ``masking_utils.py`` (``eager_mask``, ``create_causal_mask``,
    ``create_bidirectional_mask``); traced: trace-grid.jsonl ``*_v512-*-ckpt-eager-*``.
    """
    spec, tr = ctx.spec, ctx.tr
    if ctx.attn != Attention.EAGER or ctx.recipe.framework != "hf":
        return 0
    if spec.position_embedding == "relative" or not kinds:
        return 0
    attn = {k.attn for k in kinds}
    if encoder_only and not (_padded(tr) or _image_blocks(spec, tr)):
        attn.discard("full")
    rb = 4 if ctx.amp else ctx.pb
    return len(attn) * block(ctx.B * ctx.S * ctx.S * rb)


def _loss(prof: ActivationProfile, ctx: _Ctx, head_trainable: bool) -> None:
    """Fill the loss fields of ``prof`` for the recipe's loss (full, chunked, fused_linear).

    - full, fp32 logits (transformers ``ForCausalLMLoss``): logits, their fp32 copy, the
      fp32 ``log_softmax`` output saved; backward two B*S*V fp32 buffers.
    - chunked (LitGPT ``chunked_cross_entropy`` over ``lm_head_chunk_size`` chunks; torchtune
      ``CEWithChunkedOutputLoss``): the chunked logits together are B*S*V in the compute
      dtype; ``log_softmax`` saves its output per chunk (fp32 when the loss upcasts or under
      autocast, else the compute dtype); backward runs chunk by chunk: the ``nll_loss`` and
      ``log_softmax`` gradients of one chunk and the zero-filled gradient of the shifted last
      chunk (``slice_backward``).
    - fused_linear: Liger's ``LigerFusedLinearCrossEntropyFunction`` computes the gradients
      of the LM head's input (B*S*H) and weight (V*H) inside the forward, chunk by chunk
      (``liger_chunk_rows`` rows of logits and their fp32 softmax at a time), and saves them;
      Cut Cross-Entropy (``cce_loss``, without ``--liger``) saves the B*S fp32 log-sum-exp and
      recomputes logit blocks in backward.

    Source: transformers 5.24 ``loss/loss_utils.py``; litgpt 0.5.13 ``utils.py``
    (``chunked_cross_entropy``) and ``finetune/lora.py`` (``logits`` held by the loop);
    Liger-Kernel 0.5 ``ops/fused_linear_cross_entropy.py``; cut-cross-entropy 25.1
    ``cce.py``.
    """
    spec, rc = ctx.spec, ctx.recipe
    T, H, V, cb = ctx.T, spec.hidden_size, spec.vocab_size, ctx.cb
    wgrad = block(V * H * (2 if ctx.amp else ctx.pb)) if head_trainable else 0
    if head_trainable and ctx.pb == 4 and not ctx.amp and ctx.tr.grad_accum == 1:
        # an fp32 head's weight gradient lands in a parameter whose ``.grad`` is None:
        # AccumulateGrad keeps the very tensor (torch/csrc/autograd/functions/
        # accumulate_grad.h, "steal"), already counted as the head's gradient (fake-CUDA
        # traces of the fp32 t5/mt5 grid rows, whose peak this moment can be: no second
        # V x H buffer). A 16-bit gradient cast to an fp32 master (AMP), one added into an
        # existing ``.grad`` (accumulation), and the pure 16-bit rows (traced with a second
        # V x H buffer at the head's backward) keep it
        wgrad = 0
    if rc.loss == "fused_linear":
        if rc.liger:
            rows = liger_chunk_rows(T, H, V)
            prof.loss_saved = block(T * H * cb) + (block(V * H * ctx.pb) if head_trainable else 0)
            prof.logits_fwd = block(rows * V * cb) + block(rows * V * 4)
            prof.loss_bwd_extra = 0
            prof.head_bwd_extra = block(T * H * cb)
        else:
            rows = max(min(T, 1 << 16 // max(V // 8192, 1)), 1)
            prof.loss_saved = block(T * 4)
            prof.logits_fwd = block(T * 4)
            prof.loss_bwd_extra = block(T * H * cb) + wgrad
            prof.head_bwd_extra = block(T * H * cb)
        return
    lb = 4 if (rc.logits_fp32 or ctx.amp or cb == 4) else cb
    if rc.loss == "chunked":
        rows = ctx.B * -(-ctx.S // max(rc.loss_chunks, 1))
        rows = min(rows, T)
        logits = block(T * V * cb)
        prof.logits_fwd = logits + (block(rows * V * lb) if lb != cb else 0)
        prof.loss_saved = block(T * V * lb)
        # one chunk's backward: its loss-dtype gradient and either the nll_loss gradient
        # (same dtype) or the cast back to the logits' dtype (traced: trace-frameworks.jsonl
        # litgpt-llama-lora-qv-bf16-b2s256, litgpt-llama-lora-qv-mixed-b2s128)
        prof.loss_bwd_extra = block(rows * V * lb) + block(rows * V * cb)
        prof.head_bwd_extra = block(rows * V * cb) + block(T * H * cb) + wgrad
        if rc.hold_logits:
            # the shifted last chunk becomes a contiguous copy for cross_entropy: in the loss
            # dtype when it is upcast (the cast copies), else a reshape copy
            prof.held_logits = logits
            prof.logits_fwd = block(rows * V * lb)
        return
    logits_b = T * V * cb
    if rc.logits_fp32:
        # seq2seq LMs (T5) and BERT/RoBERTa's masked-LM heads call nn.CrossEntropyLoss on the
        # logits as they are: no fp32 upcast in 16-bit (autocast still runs cross_entropy in
        # fp32; modeling_bert.py / modeling_roberta.py ``*ForMaskedLM.forward``)
        inline = spec.is_encoder_decoder or spec.arch.get("inline_ce") is True
        lf = cb if inline and not ctx.amp else 4
        prof.logits_fwd = block(logits_b) + (block(T * V * 4) if cb != lf else 0)
        prof.loss_saved = block(T * V * lf)
        # loss backward: nll grad + log_softmax grad (fp32), then the cast back to 16-bit
        prof.loss_bwd_extra = 2 * block(T * V * lf)
        if inline and ctx.amp and spec.arch.get("inline_ce") is True:
            # nn.CrossEntropyLoss under autocast on 16-bit logits: log_softmax runs and saves
            # its output in 16 bit, nll_loss saves its fp32 autocast copy; the fp32 output
            # conversion (accelerate) joins the 16-bit logits; backward holds the saved pair
            # and nll's fp32 gradient. Traced: trace-grid.jsonl bert-lora-ampbf16-*,
            # roberta-full-ampbf16-* (peak in the loss phase)
            prof.loss_saved = block(logits_b) + block(T * V * 4)
            prof.loss_bwd_extra = block(T * V * 4)
    else:
        # LitGPT full: cross_entropy on the shifted compute-dtype logits (a copy)
        prof.logits_fwd = block(logits_b) + block(logits_b)
        prof.loss_saved = block(T * V * lb)
        prof.loss_bwd_extra = block(T * V * lb) + block(logits_b)
        if rc.hold_logits:
            prof.held_logits = block(logits_b)
            prof.logits_fwd = block(logits_b)
    # head backward: grad of logits (16-bit) alive with the hidden grad and weight grad
    prof.head_bwd_extra = (block(T * V * cb) if cb != 4 else block(T * V * 4)) + (
        block(T * H * cb) + wgrad
    )


def _rmsnorm(
    led: Ledger, ctx: _Ctx, name: str, numel: int, xb: int, *, trainable: bool, width: int = 0
) -> None:
    """Llama/Gemma RMSNorm saved tensors for an input of ``numel`` elements of ``xb`` bytes.

    ``pow`` saves the fp32 input (the input itself when fp32, else a copy), the product saves
    ``rsqrt`` (one fp32 per normalised row of ``width`` elements, the hidden size unless
    given), and the weight product saves the normalised tensor when the weight trains (fp32
    for Gemma, else in the input dtype).
    """
    gemma = ctx.spec.model_type.startswith("gemma")
    if ctx.recipe.norm_impl == "liger":
        # LigerRMSNormFunction saves its input tensor itself and the fp32 rstd per row
        led.save(f"{name}_in", "norms", numel * xb)
        led.save(f"{name}_rsqrt", "norms", numel // (width or ctx.spec.hidden_size) * 4)
        return
    led.save(f"{name}_x32", "norms", numel * 4)
    led.save(f"{name}_rsqrt", "norms", numel // (width or ctx.spec.hidden_size) * 4)
    if ctx.recipe.norm_impl == "fp32_normed":
        # LitGPT: (x_normed * weight.float()) saves the fp32 weight copy when x_normed needs a
        # gradient, and the fp32 x_normed when the weight trains
        led.save(f"{name}_w32", "norms", (width or ctx.spec.hidden_size) * 4)
        if trainable:
            led.save(f"{name}_normed", "norms", numel * 4)
        return
    if trainable:
        # Gemma ((1 + w) * x32) and OLMo-2 ((w * x32).to(dtype)) multiply by the weight in fp32
        fp32 = gemma or ctx.spec.arch.get("norm_weight_fp32") is True
        led.save(f"{name}_normed", "norms", numel * (4 if fp32 else xb))


def _centred_layernorm(led: Ledger, name: str, rows: int, width: int, *, trainable: bool) -> None:
    """Record the saved tensors of Cohere's Python LayerNorm over ``rows`` rows of ``width``.

    ``x32 = x.float(); (x32 - mean).pow(2).mean()`` saves the first centred copy (``pow``),
    ``(x32 - mean) * rsqrt(var + eps)`` a second centred copy and the per-row ``rsqrt``, and
    ``weight.float() * normed`` the fp32 normalised tensor when the weight trains: two or three
    fp32 tensors of the input's size, whatever the input dtype. Source: transformers 5.24
    ``models/cohere/modeling_cohere.py`` (``CohereLayerNorm.forward``); traced: small-vocab
    cohere traces (the blocks dominate) and trace-grid.jsonl ``cohere-*``.
    """
    n = rows * width
    led.save(f"{name}_c1", "norms", n * 4)
    led.save(f"{name}_c2", "norms", n * 4)
    led.save(f"{name}_rsqrt", "norms", rows * 4)
    if trainable:
        led.save(f"{name}_normed", "norms", n * 4)


def _rmsnorm_backward(led: Ledger, numel: int) -> int:
    """Bytes alive at the peak of a python RMSNorm's backward: its saved tensors + temporaries.

    ``w * (x32 * rsqrt(x32.pow(2).mean(-1) + eps)).to(dtype)`` runs backward as: the weight
    product and the cast back to fp32 (the gradient of ``x32 * r``, fp32), that product's
    backward (``grad * r``, held until the two input gradients are summed, and the row sums
    for ``rsqrt``), ``mean``'s backward (``expand / H``: a full fp32 tensor) and ``pow``'s
    (``grad * 2 * x.pow(1)``: three fp32 tensors alive at once) -- five fp32 tensors of the
    input's size on top of the saved fp32 input and ``rsqrt``. Only the final norm matters:
    it runs with every block's saved tensors still alive (a block's own norms run after its
    MLP or attention tensors are freed). Source: torch 2.13 ``tools/autograd/derivatives.yaml``
    (``pow.Tensor_Scalar``, ``mean.dim``, ``mul.Tensor``, ``rsqrt``) and
    ``torch/csrc/autograd/FunctionsManual.cpp`` (``pow_backward``, ``mean_backward``);
    transformers 5.24 ``LlamaRMSNorm.forward``; checked against the fake-CUDA trace of TRL's
    reward model (``trl-reward-lora-bf16``: the peak is this moment).
    """
    own = sum(b for n, (_d, b) in led.saved.items() if n in ("fnorm_x32", "fnorm_rsqrt"))
    return own + 5 * block(numel * 4)


def _arch_num(spec: ModelSpec, key: str) -> float:
    v = spec.arch.get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else 0.0


def _is_router(g: ParamGroup, spec: ModelSpec) -> bool:
    """Tell a router that subclasses ``nn.Linear`` (Llama 4, PhiMoE): ``_moe`` models it."""
    return g.out_features == spec.num_local_experts and g.module in ("router", "gate")


def _qk_norm(led: Ledger, ctx: _Ctx, Hq: int, Hkv: int) -> None:
    """RMSNorms on the q and k projections (``arch.qk_norm``), as ``_rmsnorm`` saves them.

    ``head``: per head over ``head_dim`` (Qwen3, Gemma 3: ``q_norm``/``k_norm`` before RoPE);
    ``full``: over the whole projection (OLMoE, OLMo-2). Llama 4's ``l2`` norm has no weight
    and is not modelled here. Source: transformers v5.24 ``modeling_qwen3.py``,
    ``modeling_gemma3.py``, ``modeling_olmoe.py`` (``self.q_norm(...)``).
    """
    mode = ctx.spec.arch.get("qk_norm")
    if mode not in ("head", "full"):
        return
    T, cb = ctx.T, ctx.cb
    for name, width in (("qn", Hq), ("kn", Hkv)):
        w = ctx.spec.head_dim if mode == "head" else width
        _rmsnorm(led, ctx, name, T * width, cb, trainable=ctx.full, width=w)


def _act_saved(led: Ledger, ctx: _Ctx, n: int, nb: int, prefix: str) -> None:
    """Record the saved tensors of a plain MLP's activation over ``n`` elements of ``nb`` bytes."""
    act = ctx.spec.hidden_act
    if act in ("gelu_new", "gelu_fast") and ctx.recipe.gelu_tanh == "python":
        if ctx.amp:  # pow runs in fp32 under autocast: fp32 copy, tanh fp32, 0.5x 16-bit, 1+t
            for part, b in (("in32", 4), ("tanh", 4), ("half", nb), ("onep", 4)):
                led.save(f"{prefix}_{part}", "mlp", n * b)
        else:
            for part in ("in", "tanh", "half", "onep"):
                led.save(f"{prefix}_{part}", "mlp", n * nb)
    else:
        led.save(f"{prefix}_in", "mlp", n * nb)


def _is_attention(g: ParamGroup) -> bool:
    seg = g.key.split("/")[1] if "/" in g.key else g.key
    return "attn" in seg.lower() or "attention" in seg.lower()


def _sub_blocks(groups: list[ParamGroup]) -> list[tuple[bool, list[ParamGroup]]]:
    """Split a block's linears into (is_attention, linears) runs in module order.

    An SSM mixer (``_is_ssm``) is a run of its own, followed by the block's feed-forward.
    """
    out: list[tuple[bool, list[ParamGroup]]] = []
    for g in groups:
        attn = _is_attention(g)
        seg = g.key.split("/")[1] if "/" in g.key else g.key
        same_ssm = not out or _is_ssm(out[-1][1][0]) == _is_ssm(g)
        if (
            out
            and same_ssm
            and out[-1][0] == attn
            and (not attn or out[-1][1][0].key.split("/")[1] == seg)
        ):
            out[-1][1].append(g)
        else:
            out.append((attn, [g]))
    return out


def _block(
    ctx: _Ctx,
    groups: list[ParamGroup],
    rb: int,
    *,
    x_requires_grad: bool,
    first: bool,
    experts: list[ParamGroup] | None = None,
    kind: LayerKind | None = None,
) -> tuple[Ledger, int, int, bool, int]:
    """One transformer block: (ledger, fwd extra, bwd extra, grad flows after, amp copies).

    ``groups`` are the block's linear groups in module order; ``experts`` its MoE expert
    groups (3-D parameters): the MLP is then a sparse MoE block (``_moe``), and any dense MLP
    linears of the block are a shared expert run on the same normalised input.
    """
    spec = ctx.spec
    T, H = ctx.T, spec.hidden_size
    cb, amp, pb = ctx.cb, ctx.amp, ctx.pb
    led = Ledger()
    rg = x_requires_grad
    amp_copy = 0
    fwd_extra = 0
    bwd_extra = 0
    # peaks inside the block as absolute ledger totals: what was saved up to that point plus
    # the transients of that moment (in backward the tensors saved after it are freed by then)
    fwd_at: list[int] = []
    bwd_at: list[int] = []
    norm_out_b = (4 if amp else pb) if spec.norm == "layernorm" else rb
    heads, kvh, hd = spec.num_attention_heads, spec.num_key_value_heads, spec.head_dim
    Hq, Hkv = heads * hd, kvh * hd
    S, B = ctx.S, ctx.B

    Ts = -(-T // ctx.seq_shard)  # tokens of a sequence-parallel shard
    kind = kind or LayerKind()
    # Gemma-2/3 "sandwich" norms: the attention and MLP outputs pass through their own
    # RMSNorm (post_attention_layernorm, post_feedforward_layernorm) before the residual add
    post_norms = spec.arch.get("post_norms") is True

    def post_norm(name: str) -> None:
        if rg or ctx.full:
            _rmsnorm(led, ctx, name, Ts * H, cb, trainable=ctx.full)

    def norm(name: str) -> None:
        if not (rg or ctx.full):
            return
        if spec.arch.get("norm_impl") == "centred_python":
            _centred_layernorm(led, name, Ts, H, trainable=ctx.full)
        elif spec.norm == "layernorm":
            led.save(f"{name}_in", "residual", Ts * H * rb)
            led.save(f"{name}_mean", "norms", Ts * 4)
            led.save(f"{name}_rstd", "norms", Ts * 4)
        else:
            _rmsnorm(led, ctx, name, Ts * H, rb, trainable=ctx.full)

    def linear(g: ParamGroup, xname: str, x_bytes: int) -> None:
        nonlocal amp_copy, rg, fwd_extra, bwd_extra
        if ctx.tr.quant is not None:
            # bitsandbytes dequantizes the whole weight to the compute dtype in forward and
            # again for the input gradient (MatMul4Bit / MatMul8bitLt): a transient buffer
            deq = block(g.weight_numel * cb)
            fwd_extra = max(fwd_extra, deq)
            bwd_extra = max(bwd_extra, deq + block(T * g.out_features * cb))
        if ctx.full:
            if amp and x_bytes == 4:
                led.save(f"{xname}_cast_{g.module}", "linear_inputs", T * g.in_features * 2)
            else:
                led.save(xname, "linear_inputs", T * g.in_features * x_bytes)
        if amp and (rg or ctx.full):
            amp_copy += block(g.weight_numel * 2)
        if g.module in ctx.lora and ctx.recipe.adapter_dtype == "base":
            # adapters in the base dtype (LitGPT lora.py): lora_A's F.linear saves its input,
            # the same tensor the base linear reads unless a dropout makes a new one -- one
            # dropout on a fused qkv input, one per linear otherwise
            n_in = T * g.in_features
            if ctx.lora_dropout > 0:
                drop = xname if ctx.recipe.lora_dropout == "per_fused_linear" else g.module
                if rg:
                    led.save(f"{xname}_lmask_{drop}", "dropout_masks", n_in)
                led.save(f"{xname}_ldrop_{drop}", "lora", n_in * cb)
            else:
                led.save(xname, "lora", n_in * x_bytes)
            led.save(f"{xname}_lA_{g.module}", "lora", T * ctx.lora_r * cb)
            rg = True
        elif g.module in ctx.lora:
            n_in = T * g.in_features
            lb = 2 if amp else 4
            if ctx.lora_dropout > 0:
                if rg:
                    led.save(f"{xname}_lmask_{g.module}", "dropout_masks", n_in)
                led.save(f"{xname}_ldrop_{g.module}", "lora", n_in * lb)
            elif amp or x_bytes != 4:
                led.save(f"{xname}_l_{g.module}", "lora", n_in * lb)
            else:
                led.save(xname, "lora", n_in * 4)
            led.save(f"{xname}_lA_{g.module}", "lora", T * ctx.lora_r * lb)
            if amp:
                amp_copy += block(g.in_features * ctx.lora_r * 2)
                amp_copy += block(g.out_features * ctx.lora_r * 2)
            rg = True

    subs = _sub_blocks(groups)
    moe_gate: list[ParamGroup] = []
    if experts:
        # the shared expert's scalar gate (qwen2_moe ``shared_expert_gate``, H -> 1) is not
        # part of the shared MLP's linear chain
        subs = [
            (a, [g for g in sub if a or (g.out_features != 1 and not _is_router(g, spec))])
            for a, sub in subs
        ]
        moe_gate = [
            g for a, sub in _sub_blocks(groups) if not a for g in sub if g.out_features == 1
        ]
        subs = [(a, sub) for a, sub in subs if sub]
        if all(a for a, _ in subs):
            subs.append((False, []))  # no shared expert: the MoE block alone is the MLP
    rg_in, rg_attn = rg, False
    # checkpointing moments (a plain [attention, dense MLP] block): see the end of _block
    simple = (
        [a for a, _ in subs] == [True, False]
        and not experts
        and not spec.parallel_residual
        and not ctx.kv_len
        and not any(_is_ssm(g) for _, sub in subs for g in sub)
    )
    pre_mlp = pre_mlp_f = pre_mlp_b = at_act = n_mlp = n_bufs = 0
    down_share = 0.0
    for si, (is_attn, sub) in enumerate(subs):
        if simple and not is_attn:
            pre_mlp, pre_mlp_f, pre_mlp_b = led.total, fwd_extra, bwd_extra
        if spec.parallel_residual and si == 1:
            # a parallel block's MLP reads the block's normalised input, not the attention
            # output: a gradient reaches it only if one reaches the block input (LoRA's first
            # block: the attention adapters do not make the MLP branch save anything; traced:
            # cohere/phi LoRA), the block output needs one if either branch does
            rg_attn, rg = rg, rg_in
        else:
            norm(f"n{si}")
        x_in = f"n{si}_out"
        if sub and _is_ssm(sub[0]):
            mixer = _ssd if spec.arch.get("ssm_kind") == "ssd" else _ssm
            f_x, b_x = mixer(led, ctx, sub, x_in, norm_out_b, rg=rg or ctx.full, linear=linear)
            fwd_extra, bwd_extra = max(fwd_extra, f_x), max(bwd_extra, b_x)
            rg = rg or ctx.full or any(g.module in ctx.lora for g in sub[:1])
            continue
        if experts and not is_attn:
            f_x, b_x, amp_x = _moe(led, ctx, experts, x_in, norm_out_b, rg=rg)
            fwd_extra, bwd_extra = max(fwd_extra, f_x), max(bwd_extra, b_x)
            amp_copy += amp_x
            if not sub:
                continue
        ins, out = sub[:-1], sub[-1]
        latents = {_arch_int(spec, "q_lora_rank"), _arch_int(spec, "kv_lora_rank")} - {0}
        for g in ins:
            if is_attn and g.in_features in latents and g.in_features != H:
                # MLA: q_b_proj / kv_b_proj read the RMS-normed latent (q_a_layernorm /
                # kv_a_layernorm over q_lora_rank / kv_lora_rank), not the block input
                lat = f"latent{g.in_features}"
                if rg or ctx.full:
                    _rmsnorm(led, ctx, lat, T * g.in_features, cb, trainable=ctx.full,
                             width=g.in_features)  # fmt: skip
                linear(g, f"{lat}_out", cb)
            else:
                linear(g, x_in, norm_out_b)
        if is_attn and ctx.kv_len and any(a for a, _ in subs[:si]):
            f_x, b_x = _cross_attention(led, ctx, ins, out, x_in, norm_out_b, rg=rg, linear=linear)
            fwd_extra, bwd_extra = max(fwd_extra, f_x), max(bwd_extra, b_x)
            rg = rg or ctx.full or any(g.module in ctx.lora for g in sub)
        elif is_attn:
            fused = len(ins) == 1
            use_eager = ctx.attn == Attention.EAGER
            rope = spec.position_embedding == "rotary"
            # under autocast, rotary embeddings come out fp32 (fp32 cos/sin), and SDPA is not
            # an autocast op: it runs in fp32 (v promoted); eager's matmuls cast to 16-bit
            # ModernBERT's apply_rotary_pos_emb computes in fp32 and casts q and k back to
            # their input dtype (modeling_modernbert.py): 16-bit under autocast
            rope_back = ctx.recipe.rope_dtype == "input" or spec.arch.get("rope_cast_back") is True
            ab = 4 if amp and rope and not use_eager and not rope_back else cb
            o_b = cb
            # T5's learned relative position bias reaches SDPA as a float mask: the
            # memory-efficient kernel with that bias (_sdpa_kernel)
            bias_mask = spec.position_embedding == "relative"
            qk_hd, v_hd = _qk_v_head_dims(spec)
            Hv = heads * v_hd
            kernel = "eager" if use_eager else _sdpa_kernel(spec, ab, masked=kind.masked)
            math = use_eager or kernel.startswith("sdpa math")
            efficient = kernel.startswith("sdpa memory-efficient") and (
                kind.masked or qk_hd != v_hd or bias_mask
            )
            flash_ok = not math
            # the kernel saves v, a view of the fused qkv projection's output (ModernBERT's
            # Wqkv: view + unbind), so the whole q|k|v tensor stays alive while q and k are
            # new tensors after the rotary embedding (traced: trace-grid.jsonl modernbert-*)
            qkv_view = fused and rope and spec.arch.get("qkv_view") is True and (ab == cb)
            if rg or ctx.full:
                _qk_norm(led, ctx, Hq, Hkv)
                if math:
                    # SDPA's math kernel upcasts 16-bit q, k, v to fp32 (T5's bias path);
                    # T5's own eager softmax stays in the compute dtype
                    qb = 4 if bias_mask and not use_eager else ab
                    rep = T * Hq * qb
                    probs = B * heads * S * S
                    led.save("q", "attention", rep)
                    led.save("k", "attention", rep)
                    if use_eager and _arch_num(spec, "attn_logit_softcapping"):
                        # scores / cap -> tanh (saves its output) -> * cap, in 16 bit
                        led.save("softcap_tanh", "attention", probs * cb)
                        # the scaled scores and their quotient by the cap, alive with tanh's
                        fwd_at.append(led.total + 2 * block(probs * cb))
                    if bias_mask and use_eager:
                        led.save("probs_c", "attention", probs * cb)
                    else:
                        led.save("probs32", "attention", probs * 4)
                    at_softmax = led.total
                    if use_eager and cb != 4:
                        led.save("probs_c", "attention", probs * cb)
                    if spec.attention_dropout > 0:
                        led.save("probs_mask", "dropout_masks", probs)
                        led.save("probs_drop", "attention", probs * (cb if use_eager else qb))
                    led.save("v", "attention", rep)
                    if use_eager or bias_mask:
                        led.save("o_in", "attention", T * Hq * cb)
                    if bias_mask:
                        fwd_extra = max(fwd_extra, 2 * block(probs * 4))
                        bwd_extra = max(bwd_extra, 3 * block(probs * 4))
                    else:
                        # softmax(scores, dtype=fp32): in forward the scores (q dtype), their
                        # fp32 copy and the fp32 output are alive together, on top of what
                        # was saved up to the softmax; pure fp16 on CUDA skips the copy
                        # (aten softmax: half_to_float). In backward, once the blocks' later
                        # saved tensors (16-bit probabilities, v, the output, the MLP) are
                        # freed, the softmax's fp32 incoming gradient and its result (fp16
                        # under half_to_float) are the two S^2 buffers on top of the saved
                        # fp32 probabilities. Source: torch 2.13 aten/src/ATen/native/
                        # SoftMax.cpp (softmax, _softmax_backward_data); modeling_llama.py
                        # eager_attention_forward; traced: trace-grid.jsonl *_v512-*-s1024
                        sb = cb if use_eager else qb
                        h2f = use_eager and sb == 2 and not amp and pb == 2
                        h2f = h2f and ctx.tr.param_dtype == DType.FP16
                        copy = 0 if sb == 4 or h2f else block(probs * 4)
                        fwd_at.append(at_softmax + block(probs * sb) + copy)
                        grad_scores = block(probs * (2 if h2f else 4))
                        bwd_at.append(at_softmax + block(probs * 4) + grad_scores)
                elif efficient:
                    # memory-efficient/cuDNN kernel: with a mask transformers repeats the K/V
                    # heads first (sdpa_attention.py use_gqa_in_sdpa/repeat_kv), and SDPA
                    # saves the additive bias it makes from the boolean mask (q dtype)
                    kv_heads = heads if kind.masked else kvh
                    led.save("q", "attention", T * heads * qk_hd * ab)
                    led.save("k", "attention", T * kv_heads * qk_hd * ab)
                    if qkv_view:
                        led.save("qkv", "attention", T * (Hq + 2 * Hkv) * cb)
                    else:
                        led.save("v", "attention", T * kv_heads * v_hd * ab)
                    if kind.masked:
                        led.save("mask_bias", "attention", B * S * S * ab)
                    if bias_mask:
                        # T5: each layer's mask is a new (1, heads, S, S) tensor -- the
                        # contiguous copy of the permuted relative-bias lookup (encoder) or
                        # torch.where with the causal mask (decoder) -- in the compute dtype
                        # (autocast casts it with q); broadcast over the batch, not copied
                        led.save("pos_bias", "attention", heads * S * S * cb)
                    led.save("lse", "attention", B * heads * (-(-S // 32) * 32) * 4)
                    led.save("attn_out", "attention", T * Hv * ab)
                    led.save("rng_seed", "attention", 8)
                    led.save("rng_off", "attention", 8)
                    bias_grad = 0
                    if bias_mask and ctx.full:
                        # the trainable relative bias: the kernel's backward writes the bias
                        # gradient at the broadcast (B, heads, S, S) shape, then sums it
                        bias_grad = block(B * heads * S * S * cb)
                    bwd_extra = max(bwd_extra, 3 * block(T * Hq * ab) + bias_grad)
                elif ctx.recipe.qkv_fused:
                    # LitGPT: q and k are new tensors after RoPE; v is a view of the fused
                    # qkv output, which SDPA's saved v keeps alive whole -- unless grouped
                    # K/V are repeated to every head (repeat_interleave: new k and v)
                    led.save("q", "attention", T * Hq * ab)
                    if kvh != heads:
                        led.save("k", "attention", T * Hq * ab)
                        led.save("v", "attention", T * Hq * ab)
                    else:
                        led.save("k", "attention", T * Hkv * ab)
                        led.save("qkv", "attention", T * (Hq + 2 * Hkv) * cb)
                    led.save("lse", "attention", B * heads * S * 4)
                    led.save("attn_out", "attention", T * Hq * ab)
                    led.save("rng_seed", "attention", 8)
                    led.save("rng_off", "attention", 8)
                    bwd_extra = max(bwd_extra, 3 * block(T * Hq * ab))
                else:
                    if fused and not rope:
                        led.save("qkv", "attention", T * (Hq + 2 * Hkv) * ab)
                        led.save("q", "attention", T * Hq * ab)
                        led.save("v", "attention", T * Hkv * ab)
                    elif qkv_view or (fused and spec.arch.get("qkv_view_saved")):
                        # rotary q and k are new tensors; v stays a view of the fused qkv
                        # output, which SDPA's saved v keeps alive whole (ModernBERT's Wqkv,
                        # the Qwen vision towers' qkv)
                        led.save("q", "attention", T * Hq * ab)
                        led.save("k", "attention", T * Hkv * ab)
                        led.save("qkv", "attention", T * (Hq + 2 * Hkv) * cb)
                    else:
                        led.save("q", "attention", T * Hq * ab)
                        led.save("k", "attention", T * Hkv * ab)
                        led.save("v", "attention", T * Hkv * ab)
                    rows = S if ab != 4 else -(-S // 32) * 32
                    led.save("lse", "attention", B * heads * rows * 4)
                    led.save("attn_out", "attention", T * Hq * ab)
                    led.save("rng_seed", "attention", 8)
                    led.save("rng_off", "attention", 8)
                    bwd_extra = max(bwd_extra, 3 * block(T * Hq * ab))
            o_name = "o_in" if (use_eager or bias_mask or (ab == cb and flash_ok)) else "attn_out_c"
            if o_name == "o_in" and not use_eager and flash_ok:
                o_name = "attn_out"
            o_b = ab if o_name == "attn_out" else (4 if ab == 4 else cb)
            if spec.arch.get("attn_out_cat") and (ctx.full or out.module in ctx.lora):
                # attention run per window/image: the outputs are concatenated (a new tensor)
                # before the output projection
                o_name, o_b = "attn_cat", ab
            if ctx.full or out.module in ctx.lora:
                linear(out, o_name, o_b)
            elif amp and rg:
                amp_copy += block(out.weight_numel * 2)
            if post_norms:
                post_norm(f"p{si}")
        else:
            gated = spec.mlp == "gated"
            inter = sum(g.out_features for g in ins)
            n_i = T * (inter // 2 if gated else inter)
            if rg or ctx.full:
                if gated:
                    if len(ins) == 1:
                        led.save("gate_up", "mlp", 2 * n_i * cb)
                    else:
                        led.save("gate", "mlp", n_i * cb)
                        led.save("up", "mlp", n_i * cb)
                    if ctx.recipe.swiglu_impl == "model":
                        led.save("act", "mlp", n_i * cb)
                        if spec.hidden_act in ("gelu_new", "gelu_fast"):  # tanh formula's terms
                            for part in ("tanh", "half", "onep"):
                                led.save(f"gact_{part}", "mlp", n_i * (4 if amp else cb))
                    prod_b = cb
                elif spec.hidden_act == "relu":  # relu saves its output: fc2's input
                    led.save("prod", "mlp", n_i * cb)
                    prod_b = cb
                else:
                    _act_saved(led, ctx, n_i, cb, "act")
                    python_gelu = ctx.recipe.gelu_tanh == "python"
                    tanh_gelu = spec.hidden_act in ("gelu_new", "gelu_fast")
                    prod_b = 4 if amp and tanh_gelu and python_gelu else cb
                # a fused gate|up projection (ModernBERT's Wi + chunk) has chunk's backward
                # concatenate the two halves' gradients: a fourth B*S*I buffer at that moment
                at_act, n_mlp, n_bufs = led.total, n_i, 4 if gated and len(ins) == 1 else 3
                prod_name = "prod"
                if float(spec.arch.get("mlp_dropout") or 0) > 0:
                    # T5's DenseReluDense drops out the activation before wo: mask + output
                    led.save("mlp_mask", "dropout_masks", n_i)
                    prod_name = "prod_drop"
                if ctx.full or out.module in ctx.lora:
                    linear(out, prod_name, prod_b)
                elif amp:
                    amp_copy += block(out.weight_numel * 2)
            elif out.module in ctx.lora:
                # no gradient reaches the MLP's input, but the adapter on its output projection
                # still saves its (cast) input for its own weight gradient
                linear(out, "prod", cb)
            for g in moe_gate:  # shared expert gate: sigmoid(linear(x)) * shared output
                linear(g, x_in, norm_out_b)
                if rg or ctx.full:
                    led.save("shared_gate_sig", "mlp", T * cb)
                    led.save("shared_out", "mlp", T * H * cb)
            fwd_extra = max(fwd_extra, 2 * block(n_i * 4))
            bwd_extra = max(bwd_extra, 3 * block(n_i * cb))
            if post_norms:
                post_norm(f"p{si}")
        if spec.hidden_dropout > 0 and (rg or ctx.full):
            led.save(f"resid_mask{si}", "dropout_masks", Ts * H)
    if simple and at_act and (rg or ctx.full):
        # Non-reentrant checkpointing (torch 2.13 utils/checkpoint.py _checkpoint_hook,
        # _checkpoint_without_reentrant_generator; transformers 5 modeling_utils.py
        # _activation_checkpointing_enable defaults to use_reentrant=False; torchtune 0.6
        # training/memory.py set_activation_checkpointing -> apply_activation_checkpointing,
        # whose checkpoint_wrapper defaults to CheckpointImpl.NO_REENTRANT). The forward runs
        # under saved-tensor hooks that keep nothing, so the block's working set is what is
        # alive at its worst moment: the attention's tensors with its transient, or in the MLP
        # the residual h, the normalised input and act(gate), up and their product -- not the
        # whole ledger. In backward the block is recomputed (ledger saved again) and unwinds
        # in reverse; the peak is either the MLP's act(gate) * up backward (down_proj's input
        # already freed; three B*S*I buffers, the incoming gradient and the two factors'
        # gradients, four where a fused gate|up projection's chunk backward concatenates
        # them; of the block's gradients only down_proj's exists) or the attention's backward
        # (the MLP's tensors freed, its gradients created), each with one residual-stream
        # gradient. Source: modeling_llama.py LlamaMLP.forward, modeling_modernbert.py
        # ModernBertMLP.forward, torchtune modules/feed_forward.py FeedForward.forward;
        # traced: trace-frameworks.jsonl tt-*-ckpt-*, trace-grid.jsonl *_v512-*-ckpt-sdpa-*.
        R = block(T * H * rb)
        three = n_bufs * block(n_mlp * cb)
        fwd_ck = max([pre_mlp + pre_mlp_f, R + block(T * H * cb) + three, *fwd_at])
        bwd_mlp = at_act + three + R
        bwd_attn = max([pre_mlp + pre_mlp_b, *bwd_at]) + R
        out_g = subs[1][1][-1] if subs[1][1] else None
        if out_g is not None:
            if ctx.full:
                tot = sum(g.weight_numel for _, sub in subs for g in sub)
                down_share = out_g.weight_numel / tot if tot else 0.0
            elif out_g.module in ctx.lora:
                lo = [g for _, sub in subs for g in sub if g.module in ctx.lora]
                tot = sum(g.in_features + g.out_features for g in lo)
                down_share = (out_g.in_features + out_g.out_features) / tot if tot else 0.0
    # moments recorded as "saved so far + transients" are relative to the whole ledger here
    fwd_extra = max([fwd_extra] + [m - led.total for m in fwd_at])
    bwd_extra = max([bwd_extra] + [m - led.total for m in bwd_at])
    bwd_extra += 2 * block(T * H * rb)
    if simple and at_act and (rg or ctx.full):
        # kept relative to (ledger + extra), so what a framework adds to either carries
        led.ckpt_moments = (
            fwd_ck - led.total - fwd_extra,
            bwd_mlp - led.total - bwd_extra,
            down_share,
            bwd_attn - led.total - bwd_extra,
        )
    return led, fwd_extra, bwd_extra, rg or rg_attn, amp_copy


def _router_input(led: Ledger, ctx: _Ctx, xname: str, xb: int, E: int) -> int:
    """Save the router's input for backward and return its autocast weight copy's bytes.

    Full fine-tuning keeps the router Linear's input (its bf16 cast under autocast of fp32
    activations); autocast also casts the E x H router weight each forward. Shared by the
    top-k and the dense (all-experts) MoE ledgers below.
    """
    T, H = ctx.T, ctx.spec.hidden_size
    if ctx.full:
        if ctx.amp and xb == 4:
            led.save(f"{xname}_cast_router", "linear_inputs", T * H * 2)
        else:
            led.save(xname, "linear_inputs", T * H * xb)
    return block(E * H * 2) if ctx.amp else 0


def _moe(
    led: Ledger, ctx: _Ctx, experts: list[ParamGroup], xname: str, xb: int, *, rg: bool
) -> tuple[int, int, int]:
    """Record a sparse MoE block as transformers 5.24 runs it; return (fwd, bwd extra, amp).

    ``xname`` (``xb`` bytes an element) is the normalised input, saved by the dense linears
    under the same name. Router (``MixtralTopKRouter``): ``F.linear`` to T x E logits (in the
    compute dtype; its input saved when the router trains, an autocast copy under AMP),
    ``softmax`` of the fp32 copy saves its fp32 output, ``topk`` its int64 indices, the
    in-place renormalisation ``/= sum`` its fp32 operands. Experts: the default
    ``grouped_mm`` implementation (``integrations/moe.py`` ``grouped_mm_experts_forward``)
    works on S = T x top_k routed rows whatever the balance: ``sort`` of the expert ids, the
    gathered inputs ``x[perm // k]`` (indices saved), the routing weights ``w[perm]`` (indices
    saved), one grouped GEMM for gate_up and one for down (each saves its input when the
    expert weights train -- never under LoRA: 3-D parameters PEFT ``target_modules`` cannot
    reach -- and the offsets), ``silu(gate) * up`` (the gate_up output and the activation
    saved), ``down * w`` (both saved; bf16 x fp32 promotes the product to fp32), the inverse
    permutation (indices saved) and an fp32 reshape+sum back to T x H. ``grouped_mm`` is not
    an autocast op and casts its input to the weight dtype, so experts compute in the
    parameter dtype (fp32 under AMP with fp32 weights). Weights other than bf16 take
    transformers' ``grouped_mm_fallback`` custom op (torch's fake/meta grouped GEMM is
    bf16-only; the tracer routes them there, see ``validation/trace.py``), whose
    ``setup_context`` saves the input even when the expert weights are frozen (LoRA).

    Source: transformers v5.24 ``models/mixtral/modeling_mixtral.py``,
    ``integrations/moe.py``; torch 2.13 ``tools/autograd/derivatives.yaml`` (``_grouped_mm``,
    ``index``, ``mul``, ``_softmax``, ``topk``); checked against fake-CUDA traces
    (``validation/grid.py`` mixtral rows).
    """
    spec = ctx.spec
    T, H = ctx.T, spec.hidden_size
    E, k = max(spec.num_local_experts, 1), max(spec.num_experts_per_tok, 1)
    S = T * k
    eb = ctx.pb  # experts compute in the weight dtype
    up = next((g for g in experts if g.role == "expert_column"), experts[0])
    down = next((g for g in experts if g.role == "expert_row"), experts[-1])
    inter = down.in_features
    up_out = up.out_features  # 2 x inter when gate and up are fused
    full = ctx.full
    # torch's grouped GEMM (bf16 weights) saves its input only for the weight gradient;
    # transformers' grouped_mm_fallback op (other dtypes) saves it always
    keep_x = full or ctx.tr.param_dtype != DType.BF16
    amp_copy = 0
    if not (rg or full):
        return 0, 0, 0
    if spec.arch.get("moe_dense_experts") is True:
        return _moe_dense(led, ctx, xname, xb, E, k, up_out, inter)
    # ---- router
    amp_copy += _router_input(led, ctx, xname, xb, E)
    led.save("router_probs", "moe", T * E * 4)
    led.save("router_idx", "moe", T * k * 8)
    led.save("router_topv", "moe", T * k * 4)
    led.save("router_sum", "moe", T * 4)
    # ---- dispatch
    led.save("moe_tok_idx", "moe", S * 8)
    led.save("moe_perm", "moe", S * 8)
    led.save("moe_offs", "moe", E * 4)
    if keep_x:
        led.save("moe_x", "moe", S * H * eb)
    led.save("moe_gate_up", "moe", S * up_out * eb)
    if up_out != inter:
        led.save("moe_act", "moe", S * inter * eb)
    if keep_x:
        led.save("moe_prod", "moe", S * inter * eb)
    led.save("moe_down", "moe", S * H * eb)
    led.save("moe_w", "moe", S * 4)
    led.save("moe_inv_perm", "moe", S * 8)
    cb4 = max(eb, 4)
    # forward: the weighted rows, their re-ordered copy and the fp32 sum
    fwd = 2 * block(S * H * cb4) + block(T * H * 4)
    # backward: fp32 grads of the combine, then the gate_up grad with the act grads
    bwd = max(
        2 * block(S * H * cb4) + block(S * H * eb),
        block(S * up_out * eb) + 2 * block(S * inter * eb) + block(S * H * eb),
    )
    return fwd, bwd, amp_copy


def _moe_dense(
    led: Ledger, ctx: _Ctx, xname: str, xb: int, E: int, k: int, up_out: int, inter: int
) -> tuple[int, int, int]:
    """Record Llama 4's MoE block, where every expert runs on every token; see ``_moe``.

    ``Llama4Router`` (an ``nn.Linear``) gives T x E logits, ``topk`` (indices saved), a
    ``-inf`` scatter and ``sigmoid`` of the fp32 copy (output saved, T x E fp32). The input
    is repeated E times and scaled by the scores (``mul`` saves both: the scores derive from
    the input, so they need a gradient whenever it does), and ``Llama4TextExperts``
    runs two ``bmm`` over all E x T rows: gate_up (saved through ``chunk`` views by ``silu``
    and the product), the activation, the product (saved when the expert weights train) and
    the E x T x H output summed back to T x H.

    Source: transformers v5.24 ``models/llama4/modeling_llama4.py`` (``Llama4Router``,
    ``Llama4TextMoe.forward``, ``Llama4TextExperts.forward``); torch 2.13
    ``tools/autograd/derivatives.yaml`` (``bmm``, ``mul``, ``sigmoid``, ``silu``).
    """
    T, H = ctx.T, ctx.spec.hidden_size
    cb, full = ctx.cb, ctx.full
    R = E * T  # every expert sees every token
    amp_copy = 0
    amp_copy += _router_input(led, ctx, xname, xb, E)
    led.save("router_idx", "moe", T * k * 8)
    led.save("router_sig", "moe", T * E * 4)
    led.save("moe_scores", "moe", T * E * cb)
    # the scores depend on the input, so they need a gradient whenever the input does
    led.save("moe_x_rep", "moe", R * H * cb)
    if full:
        led.save("moe_x", "moe", R * H * cb)
    led.save("moe_gate_up", "moe", R * up_out * cb)
    led.save("moe_act", "moe", R * inter * cb)
    if full:
        led.save("moe_prod", "moe", R * inter * cb)
    fwd = 2 * block(R * H * cb) + block(T * H * cb)
    bwd = block(R * up_out * cb) + 2 * block(R * inter * cb) + block(R * H * cb)
    return fwd, bwd, amp_copy


# ----------------------------------------------------------------------------- SSM and hybrids


def _is_ssm(g: ParamGroup) -> bool:
    """Tell whether ``g`` is a linear of a selective SSM mixer (``MambaMixer``, Jamba's)."""
    seg = g.key.split("/")[1] if "/" in g.key else g.key
    return seg in ("mixer", "mamba")


def _hybrid_kind(spec: ModelSpec, i: int) -> str:
    """Name the mixer and feed-forward of hybrid layer ``i`` (``"ssm+moe"``; ``""`` if not).

    Jamba's schedule: layer ``i`` is attention when ``i % attn_layer_period ==
    attn_layer_offset`` (else a Mamba mixer) and its feed-forward is a sparse MoE block when
    ``i % expert_layer_period == expert_layer_offset`` (else a dense MLP).

    Source: transformers v5.24 ``models/jamba/configuration_jamba.py``
    (``layers_block_type``, ``layers_num_experts``).
    """
    a_period = _arch_int(spec, "attn_layer_period")
    e_period = _arch_int(spec, "expert_layer_period")
    if not (a_period or e_period):
        return ""
    attn = a_period > 0 and i % a_period == _arch_int(spec, "attn_layer_offset")
    moe = e_period > 0 and i % e_period == _arch_int(spec, "expert_layer_offset")
    return ("attn" if attn else "ssm") + ("+moe" if moe else "+dense")


def _hybrid_groups(
    groups: list[ParamGroup], experts: list[ParamGroup], kind: str
) -> tuple[list[ParamGroup], list[ParamGroup]]:
    """Keep the linear and expert groups present in a hybrid layer of ``kind`` (all if ``""``)."""
    if not kind:
        return groups, experts
    mixer, ffn = kind.split("+")
    out = []
    for g in groups:
        if _is_attention(g):
            keep = mixer == "attn"
        elif _is_ssm(g):
            keep = mixer == "ssm"
        else:
            keep = ffn == "dense"
        if keep:
            out.append(g)
    return out, experts if ffn == "moe" else []


def _ssm(
    led: Ledger,
    ctx: _Ctx,
    sub: list[ParamGroup],
    xname: str,
    xb: int,
    *,
    rg: bool,
    linear: Callable[[ParamGroup, str, int], None],
) -> tuple[int, int]:
    """Record a Mamba-1 mixer as transformers runs it without kernels; return (fwd, bwd extra).

    This is the pure-torch path (``mamba_ssm`` / ``causal_conv1d`` not installed: CPU runs,
    fake-CUDA traces, GPUs without those packages). ``in_proj`` (saves its input when it
    trains) gives x and the gate z (T x 2I, saved whole by the convolution); the depthwise
    ``conv1d`` output of S + K - 1 positions is saved by ``silu``; the silu output u is saved
    (and an fp32 copy for the scan when 16-bit) and copied contiguous for ``x_proj`` (its
    input); ``x_proj``'s output (dt, B, C) is saved; ``dt_proj.weight @ dt`` plus the bias is
    saved by ``softplus``, whose output is saved. The scan discretises the whole sequence at
    once: ``exp(A * dt)`` (T x I x N fp32, saved), ``dt * B`` (T x I x N fp32, saved) and
    ``dB * u`` (T x I x N fp32, alive through the loop), then loops over the S positions:
    each step's state (B x I x N fp32) is saved by the next step's product, and in 16-bit a
    16-bit copy of it by the output ``matmul`` with C. The output ``y + u * D`` (fp32) and
    ``silu(z)`` are saved by the gating product, whose 16-bit copy is ``out_proj``'s input.
    Jamba adds RMSNorms on dt, B and C (small: T x (R + 2N)).

    Backward of the loop: every ``select`` of ``exp(A*dt)`` and ``dB*u`` at one position
    returns a full T x I x N gradient that autograd adds into the accumulated one -- two
    T x I x N fp32 buffers for each of the two.

    The CUDA kernel path differs: ``mamba_inner_fn`` (``selective_scan_cuda``,
    ``causal_conv1d``) runs the scan in SRAM and saves only the T x 2I projection, the conv
    output, ``x_proj``'s output, dt and ``out_proj``'s input, recomputing the rest in
    backward: no T x I x N term at all.

    Source: transformers v5.24 ``models/mamba/modeling_mamba.py`` (``MambaMixer.forward``,
    ``mamba_selective_scan``'s sequential loop -- its associative scan runs only under
    ``torch.compile``), ``models/jamba/modeling_jamba.py``, ``integrations/hub_kernels.py``
    (the fallbacks); torch 2.13 ``tools/autograd/derivatives.yaml`` (``select``, ``mul``,
    ``exp``, ``softplus``, ``convolution``); checked against fake-CUDA traces
    (``validation/grid.py`` mamba and jamba rows).
    """
    by_module = {g.module: g for g in sub}
    in_proj = by_module.get("in_proj", sub[0])
    x_proj = by_module.get("x_proj")
    dt_proj = by_module.get("dt_proj")
    out_proj = by_module.get("out_proj", sub[-1])
    T, B, S = ctx.T, ctx.B, ctx.S
    cb = ctx.cb
    inter = in_proj.out_features // 2
    R = dt_proj.in_features if dt_proj is not None else 0
    N = (x_proj.out_features - R) // 2 if x_proj is not None else 0
    K = _arch_int(ctx.spec, "ssm_conv_kernel") or 4
    linear(in_proj, xname, xb)
    if not (rg or in_proj.module in ctx.lora):
        return 0, 0
    big = T * inter * N * 4  # one T x I x N fp32 tensor
    led.save("ssm_xz", "ssm", T * 2 * inter * cb)
    led.save("ssm_conv", "ssm", B * inter * (S + K - 1) * cb)
    led.save("ssm_u", "ssm", T * inter * cb)
    if cb != 4:
        led.save("ssm_u32", "ssm", T * inter * 4)
    if x_proj is not None:
        linear(x_proj, "ssm_u_c", cb)
        led.save("ssm_xdbl", "ssm", T * x_proj.out_features * cb)
    if ctx.ssm_inner_norms:  # Jamba: RMSNorms on dt (R), B and C (N)
        for name, d in (("dt", R), ("b", N), ("c", N)):
            if cb != 4:
                led.save(f"ssm_{name}n_x32", "ssm", T * d * 4)
            led.save(f"ssm_{name}n_rsqrt", "ssm", T * 4)
            led.save(f"ssm_{name}n_normed", "ssm", T * d * cb)
            led.save(f"ssm_{name}n_out", "ssm", T * d * cb)
    if dt_proj is not None and (ctx.full or dt_proj.module in ctx.lora):
        led.save("ssm_dt_lowrank", "ssm", T * R * cb)  # dt_proj.weight @ dt saves dt
    led.save("ssm_dt_in", "ssm", T * inter * cb)
    led.save("ssm_dt", "ssm", T * inter * cb)
    led.save("ssm_dA", "ssm", big)
    if cb != 4:
        led.save("ssm_B32", "ssm", T * N * 4)
    led.save("ssm_dB", "ssm", big)
    state = block(B * inter * N * 4)
    state_c = block(B * inter * N * cb)
    # 16-bit: S - 1 fp32 states saved by the next product, S 16-bit copies by matmul (+ init)
    states = (S - 1) * state + (S + 1) * state_c if cb != 4 else S * state + state_c
    led.save("ssm_states", "ssm", states)
    led.save("ssm_y", "ssm", T * inter * 4)
    led.save("ssm_gate", "ssm", T * inter * cb)
    linear(out_proj, "ssm_y_c", 4 if ctx.amp else cb)
    # forward: dB*u alive through the loop, with the per-step outputs and their stack
    fwd = block(big) + 2 * block(T * inter * cb)
    # backward of the loop: accumulated + fresh full-size select gradients, for dA and dB*u
    bwd = 4 * block(big)
    return fwd, bwd


def _ssd(
    led: Ledger,
    ctx: _Ctx,
    sub: list[ParamGroup],
    xname: str,
    xb: int,
    *,
    rg: bool,
    linear: Callable[[ParamGroup, str, int], None],
) -> tuple[int, int]:
    """Record a Mamba-2 (SSD) mixer as transformers runs it without kernels; (fwd, bwd extra).

    The pure-torch path (``mamba_ssm`` / ``causal_conv1d`` not installed: the fused
    ``mamba_split_conv1d_scan_combined`` falls back to ``None`` and the mixer runs
    ``causal_conv1d_fn`` and ``mamba2_chunk_scan``). With T = B*S tokens, I = intermediate,
    h heads of p = head_dim, G groups, N = state_size, Q = chunk_size, c = ceil(S/Q) chunks
    of padded length S' = c*Q (all fp32 in the scan):

    - ``in_proj`` output (z, xBC, dt: T x (I + I + 2GN + h)) is saved whole by ``conv1d``
      (its input is a view); the conv output (S + K - 1 positions) by ``silu``;
    - dt + dt_bias and ``softplus``'s output (T x h, compute dtype), the fp32 ``dt`` copies
      the two products read (16-bit: two T x h fp32 copies; fp32: ``clamp``'s output);
    - x in fp32 (16-bit: a T x I copy; fp32: the silu output itself, T x (I + 2GN)) and
      the zero-padded copy the D skip multiplies (when D trains);
    - the intra-chunk part: ``L = exp(segment_sum(A))``, ``G = C.B`` and ``M = G * L``
      (three B x h x S' x Q tensors), the contiguous operands ``einsum``'s batched matmuls
      save (C and B, T x h x N each, M and x for ``Y_diag``; B*decay and x for the chunk
      states; the (c + 1) chunk states for the inter-chunk recurrence; C and the c states for
      ``C_times_states``), the chunked B, ``C_times_states`` (T x I), and the small
      ``exp`` outputs (decays: B x h x S', B x h x (c + 1)^2);
    - the gated RMSNorm (fp32): the gate's fp32 copy (16-bit), silu(gate), the scan output,
      the gated product (``pow``), the per-group ``rsqrt`` and the normalised tensor (when
      its weight trains); ``out_proj`` reads the cast back to the compute dtype.

    Frozen D, A_log and norm weight (LoRA) drop the tensors only their gradients need.

    The CUDA kernel path (``mamba_split_conv1d_scan_combined`` from ``mamba_ssm``) saves
    only O(T x (I + conv_dim)) per layer and recomputes the chunk tensors in backward:
    this ledger is an upper bound there (stated in ``assumptions.ssm_scan``).

    Source: transformers v5.24 ``models/mamba2/modeling_mamba2.py`` (``Mamba2Mixer.forward``,
    ``causal_conv1d_fn``, ``mamba2_chunk_scan``, ``segment_sum``, ``MambaRMSNormGated``);
    torch 2.13 ``tools/autograd/derivatives.yaml`` (``mul``, ``exp``, ``softplus``,
    ``clamp``, ``bmm``, ``convolution``) and ``aten/src/ATen/native/Linear.cpp``
    (``einsum`` as permuted, contiguous ``bmm`` operands), ``PadNd.cpp`` (a zero pad is a
    copy); checked against fake-CUDA traces (``validation/grid.py`` mamba2 rows).
    """
    by_module = {g.module: g for g in sub}
    in_proj = by_module.get("in_proj", sub[0])
    out_proj = by_module.get("out_proj", sub[-1])
    spec = ctx.spec
    T, B, S, cb = ctx.T, ctx.B, ctx.S, ctx.cb
    inter = _arch_int(spec, "ssm_intermediate_size")
    h = _arch_int(spec, "ssm_heads")
    p = _arch_int(spec, "ssm_head_dim")
    G = _arch_int(spec, "ssm_groups")
    N = _arch_int(spec, "ssm_state_size")
    Q = _arch_int(spec, "ssm_chunk_size") or S
    K = _arch_int(spec, "ssm_conv_kernel") or 4
    conv_dim = inter + 2 * G * N
    linear(in_proj, xname, xb)
    if not (rg or in_proj.module in ctx.lora):
        return 0, 0
    full = ctx.full
    c = -(-S // Q)
    Tp = B * c * Q  # padded tokens
    chunk = h * Tp * Q * 4  # one B x h x S' x Q fp32 tensor
    x32 = Tp * inter * 4
    bn = Tp * h * N * 4
    led.save("ssd_proj", "ssm", T * in_proj.out_features * cb)
    led.save("ssd_conv", "ssm", B * conv_dim * (S + K - 1) * cb)
    if cb != 4:
        led.save("ssd_dt", "ssm", 2 * T * h * cb + (2 if full else 1) * T * h * 4)
        led.save("ssd_x32", "ssm", T * inter * 4)
    else:
        led.save("ssd_dt", "ssm", 3 * T * h * 4)
        led.save("ssd_x32", "ssm", B * conv_dim * S * 4)  # the silu output itself
    if full:
        led.save("ssd_a", "ssm", 2 * h * 4)
        led.save("ssd_dpad", "ssm", x32)
    led.save("ssd_masks", "ssm", 2 * Q * Q + 2 * (c + 1) ** 2)
    led.save("ssd_lgm", "ssm", 3 * chunk)
    led.save("ssd_bc", "ssm", 5 * bn)  # C, B for G; chunked B; B*decay; C for C.states
    led.save("ssd_x_ops", "ssm", 2 * x32)  # x for Y_diag and for the chunk states
    led.save("ssd_decays", "ssm", 2 * h * Tp * 4 + B * h * (c + 1) ** 2 * 4)
    led.save("ssd_states", "ssm", B * h * (2 * c + 1) * p * N * 4)
    led.save("ssd_cstates", "ssm", x32)
    width = T * inter * 4
    led.save("ssd_norm", "ssm", (3 if cb != 4 else 2) * width + width + T * G * 4)
    if full:
        led.save("ssd_normed", "ssm", width)
    linear(out_proj, "ssd_out_in", cb)
    fwd = 2 * block(chunk)
    bwd = 2 * block(chunk) + 2 * block(width)
    return fwd, bwd


# ----------------------------------------------------------------------------- encoder-decoder


def _enc_tail(prof: ActivationProfile, ctx: _Ctx, rb: int, details: dict[str, int]) -> None:
    """Add the encoder's final T5LayerNorm, its dropout and the output the decoder reads.

    Filed with the last encoder block. T5LayerNorm saves the fp32 copy (``pow``), the input
    and ``rsqrt`` (the product), and the normalised tensor when its weight trains; dropout
    keeps a 1-byte mask; its output is saved by every decoder layer's cross-attention k and
    v projections -- one tensor.

    Source: transformers v5.24 ``models/t5/modeling_t5.py`` (``T5Stack.forward``,
    ``T5LayerNorm``), checked against fake-CUDA traces (``validation/grid.py`` t5 rows).
    """
    if not prof.layer_saved:
        return
    H = ctx.spec.hidden_size
    led = Ledger()
    if ctx.full or ctx.lora:
        led.save("enc_x32", "norms", ctx.T * H * 4)
        if rb != 4:
            led.save("enc_in", "norms", ctx.T * H * rb)
        led.save("enc_rsqrt", "norms", ctx.T * 4)
        if ctx.full:
            led.save("enc_normed", "norms", ctx.T * H * ctx.cb)
        if ctx.spec.hidden_dropout > 0:
            led.save("enc_mask", "dropout_masks", ctx.T * H)
        led.save("enc_out", "attention", ctx.T * H * ctx.cb)
    prof.layer_saved[-1] += led.total
    for k, v in led.by_detail().items():
        details[k] = details.get(k, 0) + v


def _cross_attention(
    led: Ledger,
    ctx: _Ctx,
    ins: list[ParamGroup],
    out: ParamGroup,
    xname: str,
    xb: int,
    *,
    rg: bool,
    linear: Callable[[ParamGroup, str, int], None],
) -> tuple[int, int]:
    """Record a decoder's cross-attention over ``ctx.kv_len`` encoder positions.

    q projects the decoder's normalised input; k and v project the encoder output (saved
    once, by ``_enc_tail``). T5 passes a zero position bias (plus the mask, if any) as a float
    mask (``create_position_bias_mask``), so SDPA runs its memory-efficient kernel (flash
    takes no mask): it saves q, k, v, the output, a log-sum-exp and the bias; dropout runs
    inside the kernel (no mask tensor). Eager saves q, k, v, the probabilities
    (B x heads x S_dec x S_enc), the dropout mask and dropped probabilities, and the output
    made contiguous for ``o`` (its input). Return (fwd, bwd extra).

    Source: transformers v5.24 ``models/t5/modeling_t5.py`` (``T5Attention.forward``,
    ``eager_attention_forward``, ``T5LayerCrossAttention``), ``integrations/sdpa_attention.py``
    (``create_position_bias_mask``, ``sdpa_attention_forward``); torch 2.13
    ``aten/src/ATen/native/transformers/attention.cpp`` (memory-efficient attention with an
    additive bias and its gradient); checked against fake-CUDA traces that route such calls
    to the memory-efficient kernel (``validation/trace.py``).
    """
    spec = ctx.spec
    T, B, S, Skv = ctx.T, ctx.B, ctx.S, ctx.kv_len
    Tkv = B * Skv
    heads, hd = spec.num_attention_heads, spec.head_dim
    Hq = heads * hd
    cb = ctx.cb
    q = ins[0]
    linear(q, xname, xb)
    for g in ins[1:]:
        linear(g, "enc_out", cb)
    led.saved.pop("enc_out", None)  # the encoder output is one tensor, filed by _enc_tail
    if not (rg or ctx.full or ctx.lora):
        return 0, 0
    probs = B * heads * S * Skv
    if ctx.attn != Attention.EAGER:
        # SDPA with the (zero) float bias as its mask: the memory-efficient kernel saves q,
        # k, v, its output (in the (B, S, heads, d) layout ``o`` reads without a copy), a
        # log-sum-exp and the bias (one tensor for every layer: ``_dec_cross_bias``)
        led.save("x_q", "attention", T * Hq * cb)
        led.save("x_k", "attention", Tkv * Hq * cb)
        led.save("x_v", "attention", Tkv * Hq * cb)
        led.save("x_lse", "attention", B * heads * (-(-S // 32) * 32) * 4)
        led.save("x_out", "attention", T * Hq * cb)
        led.save("x_rng_seed", "attention", 8)
        led.save("x_rng_off", "attention", 8)
        if ctx.full or out.module in ctx.lora:
            linear(out, "x_out", cb)
        return 0, 3 * block(T * Hq * cb)
    mb = cb  # T5's eager attention keeps the compute dtype
    led.save("x_q", "attention", T * Hq * mb)
    led.save("x_k", "attention", Tkv * Hq * mb)
    led.save("x_v", "attention", Tkv * Hq * mb)
    led.save("x_probs", "attention", probs * mb)
    if spec.attention_dropout > 0:
        led.save("x_probs_mask", "dropout_masks", probs)
        led.save("x_probs_drop", "attention", probs * mb)
    if ctx.full or out.module in ctx.lora:
        linear(out, "x_o_in", cb)
    return 2 * block(probs * 4), 3 * block(probs * 4)


def _vision_tower(
    prof: ActivationProfile,
    ctx: _Ctx,
    inventory: tuple[ParamGroup, ...],
    vis: VisionSpec,
    details: dict[str, int],
) -> None:
    """Add a vision-language model's image tower and projector to ``prof`` (in place).

    The tower runs first: its blocks go before the language model's in ``layer_saved`` (the
    step walk frees them last in backward), its patch embedding and projector go to
    ``embed_saved``. The tower's blocks are ``_block`` ledgers over a ``tower_spec`` view
    (its width, heads, norm, MLP) and ``B * images * patches`` tokens, attention without a
    mask over each image (``S = patches``); blocks whose output never reaches the loss
    (LLaVA above ``vision_feature_layer``) save nothing. Rotary tower embeddings are applied
    in fp32 and cast back (``apply_rotary_pos_emb_vision``): q and k stay in the compute
    dtype. The residual stream is fp32 under autocast when a learned fp32 position table is
    added to the patch embeddings (CLIP, SigLIP, Qwen3-VL), else the compute dtype.

    Source: transformers v5.24 ``modeling_qwen2_5_vl.py`` (``Qwen2_5_VisionTransformer
    PretrainedModel``, ``Qwen2_5_VLPatchMerger``), ``modeling_qwen3_vl.py``,
    ``modeling_clip.py``/``modeling_llava.py``, ``modeling_siglip.py``/``modeling_gemma3.py``;
    checked against traces in ``validation/measurements/trace-grid.jsonl``.
    """
    spec = ctx.spec
    tspec = tower_spec(spec)
    amp, cb, pb = ctx.amp, ctx.cb, ctx.pb
    n_img = ctx.B * vis.images
    Tv = n_img * vis.patches
    Hv = tspec.hidden_size
    tower_trains = ctx.full and not vis.freeze
    vlora = ctx.plan.lora_by_stack.get("vision", set())
    plora = ctx.plan.lora_by_stack.get("projector", set())
    vctx = replace(
        ctx, spec=tspec, T=Tv, B=n_img, S=vis.patches, full=tower_trains, lora=vlora,
        seq_shard=1, recipe=ctx.recipe.model_copy(update={"rope_dtype": "input"}),
        ssm_inner_norms=False, kv_len=0,
    )  # fmt: skip
    learned_pos = any(g.stack == "vision" and g.kind == "embedding" for g in inventory)
    rb = (4 if learned_pos else cb) if amp else pb
    # ------------------------------------------------------------ patch embedding
    emb = Ledger()
    pixels = n_img * _int_arch(spec, "vision_in_channels") * vis.patches
    pixels *= _int_arch(spec, "vision_patch_size") ** 2 * max(
        1, _int_arch(spec, "vision_temporal_patch")
    )
    if tower_trains and (amp or pb != 4):
        emb.save("pixels", "vision", pixels * cb)  # the conv's input, cast from fp32 pixels
    groups = _layer_groups(inventory, "vision")
    per_layer = [g for g in groups if g.count > 1 or g.count == _int_arch(spec, "vision_layers")]
    per_layer = [g for g in per_layer if "/head/" not in g.key]
    n_layers = _int_arch(spec, "vision_layers")
    used = n_layers - _int_arch(spec, "vision_unused_layers")
    # gradient checkpointing on a model whose main input is input_ids calls
    # enable_input_require_grads, which hooks every input embedding -- the tower's patch
    # embedding too -- so the tower builds a graph even when its weights are frozen
    # (transformers v5.24 modeling_utils.py gradient_checkpointing_enable,
    # enable_input_require_grads), as the language model does (``grad_flows`` above)
    rg = tower_trains or ctx.tr.grad_ckpt
    saved: list[int] = []
    fwd: list[int] = []
    bwd: list[int] = []
    amp_c: list[int] = []
    tower_details: dict[str, int] = {}
    led, f_x, b_x, rg_after, amp_copy = _block(vctx, per_layer, rb, x_requires_grad=rg, first=True)
    for i in range(used):
        if i == 1 and rg_after != rg:
            led, f_x, b_x, rg_after, amp_copy = _block(
                vctx, per_layer, rb, x_requires_grad=rg_after, first=False
            )
        saved.append(led.total)
        fwd.append(f_x)
        bwd.append(b_x)
        amp_c.append(amp_copy)
        for k, v in led.by_detail().items():
            tower_details[k] = tower_details.get(k, 0) + v
    rg = rg_after or rg
    # ------------------------------------------------------------ projector
    proj = Ledger()
    kind = spec.arch.get("vision_projector")
    p_trains = ctx.full
    tokens = n_img * vis.tokens
    H = spec.hidden_size
    lin_b = 2 if amp else pb  # a linear's saved input: its autocast copy, else the tensor

    def lin_in(name: str, n: int, modules: tuple[str, ...]) -> None:
        if p_trains or plora & set(modules):
            proj.save(name, "vision", n * lin_b)

    if kind == "merger":
        merge = _int_arch(spec, "vision_merge") or 1
        wide = Hv * merge * merge
        if p_trains or rg:
            if tspec.norm == "rmsnorm":
                _rmsnorm(proj, vctx, "ln_q", Tv * Hv, rb, trainable=p_trains, width=Hv)
            else:
                proj.save("ln_in", "vision", Tv * Hv * rb)
                proj.save("ln_stats", "vision", 2 * block(Tv * 4))
        lin_in("m0_in", Tv * Hv, ("0", "linear_fc1"))
        if p_trains or plora or rg:
            proj.save("m_gelu_in", "vision", (Tv // (merge * merge)) * wide * cb)
        lin_in("m2_in", (Tv // (merge * merge)) * wide, ("2", "linear_fc2"))
        for d in range(_int_arch(spec, "vision_deepstack")):
            if p_trains or rg:
                proj.save(f"ds{d}_ln_in", "vision", Tv * Hv * rb)
                proj.save(f"ds{d}_ln_stats", "vision", 2 * block((Tv // (merge * merge)) * 4))
            lin_in(f"ds{d}_fc1_in", Tv * Hv, ("linear_fc1",))
            if p_trains or plora or rg:
                proj.save(f"ds{d}_gelu_in", "vision", (Tv // (merge * merge)) * wide * cb)
            lin_in(f"ds{d}_fc2_in", (Tv // (merge * merge)) * wide, ("linear_fc2",))
    elif kind == "mlp2":
        lin_in("l1_in", tokens * Hv, ("linear_1",))
        if p_trains or plora or rg:
            proj.save("l_gelu_in", "vision", tokens * H * cb)
        lin_in("l2_in", tokens * H, ("linear_2",))
    elif kind == "pool":
        if p_trains or rg:
            proj.save("post_ln_in", "vision", Tv * Hv * rb)
            proj.save("post_ln_stats", "vision", 2 * block(Tv * 4))
            proj.save("pool_in", "vision", Tv * Hv * (4 if amp else pb))
        if p_trains or rg:
            _rmsnorm(proj, vctx, "soft_norm", tokens * Hv, 4 if amp else pb,
                     trainable=p_trains, width=Hv)  # fmt: skip
        if p_trains:
            proj.save("proj_in", "vision", tokens * Hv * (2 if amp else pb))
    if amp and p_trains:
        amp_c[-1:] = [
            (amp_c[-1] if amp_c else 0)
            + sum(block(g.weight_numel * 2) for g in _layer_groups(inventory, "projector"))
        ]
    prof.embed_saved += emb.total + proj.total
    prof.layer_saved[:0] = saved
    prof.tower_blocks = len(saved)
    prof.layer_fwd_extra[:0] = fwd
    prof.layer_bwd_extra[:0] = bwd
    prof.amp_copy_per_layer[:0] = amp_c
    if ctx.tr.grad_ckpt:
        # checkpointing makes the tower's input require a gradient (below): every block
        # keeps its input
        prof.ckpt_input[:0] = [block(Tv * Hv * rb)] * used
        prof.layer_ckpt[:0] = [None] * used
    total = emb.total + proj.total + sum(tower_details.values())
    details["activations/vision"] = details.get("activations/vision", 0) + total


def _int_arch(spec: ModelSpec, key: str) -> int:
    return _arch_int(spec, key)


def _cross_layers(spec: ModelSpec) -> list[int]:
    """Llama-3.2-Vision's cross-attention layer indices (``cross_attention_layers``)."""
    text = spec.arch.get("cross_attention_layers")
    if not isinstance(text, str) or not text:
        return []
    return [int(x) for x in text.split(",")]


def _mllama_kv_tokens(spec: ModelSpec, vis: VisionSpec) -> int:
    """Image positions each text row cross-attends to: images x tiles x (patches + 1)."""
    return vis.images * vis.tiles * _int_arch(spec, "vision_positions")


def _mllama_cross_layers(
    prof: ActivationProfile,
    ctx: _Ctx,
    inventory: tuple[ParamGroup, ...],
    vis: VisionSpec,
    rb: int,
    cross: list[int],
    details: dict[str, int],
) -> None:
    """Insert Llama-3.2-Vision's gated cross-attention layers into the decoder's block lists.

    ``MllamaCrossAttentionDecoderLayer``: ``input_layernorm``; ``q_proj`` on the text and
    ``q_norm`` (RMSNorm over ``head_dim``); ``k_proj``/``v_proj`` on the projected image states
    (``B x images x tiles x (patches + 1)`` positions, one tensor every layer reads, saved once
    by the tower's ledger) and ``k_norm``; SDPA with the float cross-attention mask, so
    transformers repeats the GQA K/V heads (``repeat_kv``) and SDPA saves q, the repeated k and
    v, its output and log-sum-exp (the mask is one tensor for all layers, saved once); the
    output made contiguous for ``o_proj``; ``cross_attn_attn_gate.tanh() * h`` (saves ``h``
    when the gate trains); ``post_attention_layernorm`` and the SwiGLU MLP; the MLP output
    times ``full_text_row_masked_out_mask`` and ``cross_attn_mlp_gate.tanh()`` (saves the
    product when the gate trains). Under autocast the RMSNorms' fp32 weights make q and k
    fp32, and SDPA runs in fp32 (v promoted). Layers are checkpointed like the others
    (``GradientCheckpointingLayer``). Without images the layers are skipped (nothing saved).

    Source: transformers v5.24 ``models/mllama/modeling_mllama.py``
    (``MllamaCrossAttentionDecoderLayer``, ``MllamaTextCrossAttention``,
    ``_prepare_cross_attention_mask``), ``integrations/sdpa_attention.py`` (``repeat_kv`` with
    a mask); checked against CPU traces (``validation/grid.py`` ``mllama`` rows).
    """
    spec = ctx.spec
    T, B, S, H = ctx.T, ctx.B, ctx.S, spec.hidden_size
    cb, amp, pb = ctx.cb, ctx.amp, ctx.pb
    heads, kvh, hd = spec.num_attention_heads, spec.num_key_value_heads, spec.head_dim
    Hq, Hkv = heads * hd, kvh * hd
    Tkv = B * _mllama_kv_tokens(spec, vis)
    xg = [g for g in _layer_groups(inventory, "decoder") if "/cross_attn/" in g.key]
    by_mod = {g.module: g for g in xg}
    mlp = [
        g
        for g in _layer_groups(inventory, "decoder")
        if "/cross_attn/" not in g.key and not _is_attention(g)
    ]
    full = ctx.full
    lora = ctx.lora
    qk_b = 4 if amp else cb  # q_norm/k_norm outputs: fp32 weight x 16-bit input under autocast
    led = Ledger()
    amp_copy = 0
    if full or lora:  # input_layernorm (the block input needs a gradient after layer 0)
        _rmsnorm(led, ctx, "x_n0", T * H, rb, trainable=full)
    q, k, v, o = (by_mod.get(m) for m in ("q_proj", "k_proj", "v_proj", "o_proj"))
    n_in = {"q_proj": T, "k_proj": Tkv, "v_proj": Tkv, "o_proj": T}
    for g in (q, k, v, o):
        if g is None:
            continue
        rows = n_in[g.module]
        if full and g.module in ("q_proj", "o_proj"):
            led.save(f"x_{g.module}_in", "linear_inputs", rows * g.in_features * cb)
        if amp and full:
            amp_copy += block(g.weight_numel * 2)
        if g.module in lora:
            lb = 2 if amp else 4
            if ctx.lora_dropout > 0:
                led.save(f"x_{g.module}_lmask", "dropout_masks", rows * g.in_features)
                led.save(f"x_{g.module}_ldrop", "lora", rows * g.in_features * lb)
            elif amp or cb != 4:
                led.save(f"x_{g.module}_l", "lora", rows * g.in_features * lb)
            led.save(f"x_{g.module}_lA", "lora", rows * ctx.lora_r * lb)
            if amp:
                amp_copy += block((g.in_features + g.out_features) * ctx.lora_r * 2)
    tower_grad = (full or ctx.tr.grad_ckpt or bool(ctx.plan.lora_by_stack.get("vision"))
                  or bool(ctx.plan.lora_by_stack.get("projector")))  # fmt: skip
    _rmsnorm(led, ctx, "x_qn", T * Hq, cb, trainable=full, width=hd)
    if tower_grad or "k_proj" in lora:  # the k path needs a gradient
        _rmsnorm(led, ctx, "x_kn", Tkv * Hkv, cb, trainable=full, width=hd)
    ab = 4 if amp else cb
    led.save("x_q", "attention", T * Hq * qk_b)
    led.save("x_k", "attention", Tkv * Hq * qk_b if kvh != heads else Tkv * Hkv * qk_b)
    led.save("x_v", "attention", Tkv * Hq * ab)
    led.save("x_out", "attention", T * Hq * ab)
    led.save("x_lse", "attention", B * heads * S * 4)
    if full:
        led.save("x_gate_h", "attention", T * H * cb)
    mlp_led, f_x, b_x, _, mlp_amp = _block(ctx, mlp, rb, x_requires_grad=True, first=False)
    if full:
        led.save("x_gate_m", "mlp", T * H * (4 if amp else cb))
    total = led.total + mlp_led.total
    fwd = max(f_x, 0)
    # a checkpointed forward keeps nothing: its peak is the attention's working set (q, the
    # repeated k and v, the output) or the MLP's ledger, not both
    work = block(T * Hq * qk_b) + 2 * block(Tkv * Hq * ab) + block(T * Hq * ab)
    ckpt_work = max(work, mlp_led.total)
    # backward runs the MLP first (its saved tensors freed), then the attention: the
    # gradients of q and of the repeated k and v
    attn_grads = 2 * block(Tkv * Hq * ab) + block(T * Hq * ab)
    bwd = max(b_x, attn_grads - mlp_led.total)
    for i in sorted(cross):
        prof.layer_saved.insert(i, total)
        prof.layer_fwd_extra.insert(i, fwd)
        prof.layer_bwd_extra.insert(i, bwd)
        prof.amp_copy_per_layer.insert(i, amp_copy + mlp_amp)
        if ctx.tr.grad_ckpt:
            prof.ckpt_input.insert(i, block(T * H * rb))
            prof.ckpt_fwd[i] = min(total, ckpt_work)
            if prof.layer_ckpt:  # its own working set above (ckpt_fwd), not _block's moments
                prof.layer_ckpt.insert(i, None)
    if not full:
        # the image states (B x positions x H), an input of every cross-attention layer, are
        # alive through the language model's forward even when nothing saves them
        xs = block(Tkv * H * cb)
        n_text = len(prof.layer_saved)
        prof.layer_fwd_extra[:n_text] = [x + xs for x in prof.layer_fwd_extra[:n_text]]
    if tower_grad:
        # the image states' gradient, accumulated over the cross-attention layers from the
        # last one's backward down to the projector's (B x positions x H)
        # (created in the last one's attention backward, after its MLP's tensors are freed)
        acc = block(Tkv * H * cb)
        last = max(cross)
        prof.layer_bwd_extra[last] = max(b_x, attn_grads + acc - mlp_led.total)
        for i in range(last):
            prof.layer_bwd_extra[i] += acc
    for src in (led.by_detail(), mlp_led.by_detail()):
        for key, val in src.items():
            details[key] = details.get(key, 0) + val * len(cross)
    if not ctx.tr.grad_ckpt and kvh != heads:
        # use_cache (the config's default; gradient checkpointing turns it off): the
        # DynamicCache in the model output keeps each cross-attention layer's k (after k_norm)
        # and v before repeat_kv -- tensors SDPA does not save (it saves the repeated ones)
        # -- until the output is dropped after the loss (MllamaTextCrossAttention.forward
        # cache.update)
        prof.output_cache = len(cross) * (block(Tkv * Hkv * qk_b) + block(Tkv * Hkv * cb))
        prof.output_cache_from = min(cross)
    # the cross-attention mask, one (B, 1, S, kv) tensor in the model's dtype, saved by every
    # layer's SDPA; the full-row mask (B, 1, S, 1)
    mask = block(B * S * _mllama_kv_tokens(spec, vis) * pb) + block(B * S * pb)
    prof.embed_saved += mask
    details["activations/attention"] = details.get("activations/attention", 0) + mask


def _mllama_tower(
    prof: ActivationProfile,
    ctx: _Ctx,
    inventory: tuple[ParamGroup, ...],
    vis: VisionSpec,
    details: dict[str, int],
) -> None:
    """Add Llama-3.2-Vision's tiled vision tower and projector to ``prof`` (in place).

    ``MllamaVisionModel.forward``: every image is ``tiles`` tiles (padded by the processor);
    the patch embedding, the pre-tile aspect-ratio embedding, the class token and the gated
    position + tile-position embeddings (``gate.tanh() * tile_embedding(ids)`` saves the
    looked-up table when the gate trains: images x tiles x positions x width),
    ``layernorm_pre``; each tile's positions padded to a multiple of 8, and one additive
    mask of ``(tiles * padded)**2`` per image in the model's dtype, shared by every layer's
    SDPA (saved once); ``num_hidden_layers`` local pre-LN blocks over all tiles of an image
    at once (``_block`` over a ``tower_spec`` view), ``layernorm_post``, the post-tile
    embedding, ``num_global_layers`` gated blocks (``gate_attn.tanh() * h`` and
    ``gate_ffn.tanh() * h`` save ``h`` when the gates train). The last global state and the
    local states of ``intermediate_layers_indices`` are concatenated
    (``vision_output_dim`` features per position, padding dropped) and projected by
    ``multi_modal_projector`` (saves its input when it trains) into the image states every
    cross-attention layer's k/v projections read (saved once when they train). The tower's
    layers are plain modules, not ``GradientCheckpointingLayer``: under checkpointing they
    keep their whole ledgers (added to the embeddings' share).

    Source: transformers v5.24 ``models/mllama/modeling_mllama.py`` (``MllamaVisionModel``,
    ``MllamaPrecomputedPositionEmbedding``, ``MllamaPrecomputedAspectRatioEmbedding``,
    ``MllamaVisionEncoderLayer``, ``_prepare_aspect_ratio_attention_mask``,
    ``MllamaModel.forward``); checked against CPU traces (``validation/grid.py``).
    """
    spec = ctx.spec
    tspec = tower_spec(spec)
    amp, cb, pb = ctx.amp, ctx.cb, ctx.pb
    n_img = ctx.B * vis.images
    tiles = vis.tiles
    P = _int_arch(spec, "vision_positions")
    Pp = -(-P // 8) * 8
    Sv = tiles * Pp
    Tv = n_img * Sv
    Tp = n_img * tiles * P
    Hv = tspec.hidden_size
    tower_trains = ctx.full and not vis.freeze
    vlora = ctx.plan.lora_by_stack.get("vision", set())
    vctx = replace(
        ctx, spec=tspec, T=Tv, B=n_img, S=Sv, full=tower_trains, lora=vlora,
        seq_shard=1, ssm_inner_norms=False, kv_len=0,
    )  # fmt: skip
    rb = 4 if amp else pb  # fp32 position tables added to the patch embeddings
    rg = tower_trains or ctx.tr.grad_ckpt or bool(vlora)
    emb = Ledger()
    side = _int_arch(spec, "vision_image_size")
    if tower_trains and (amp or pb != 4):
        pixels = n_img * tiles * _int_arch(spec, "vision_in_channels") * side * side
        emb.save("pixels", "vision", pixels * cb)
    if tower_trains:
        emb.save("tile_pos", "vision", n_img * tiles * P * Hv * pb)
    if rg:
        emb.save("ln_pre_in", "vision", n_img * tiles * P * Hv * rb)
        emb.save("ln_pre_stats", "vision", 2 * block(n_img * tiles * P * 4))
        emb.save("mask", "vision", n_img * Sv * Sv * pb)
    groups = _layer_groups(inventory, "vision")
    local = [g for g in groups if not g.key.startswith("vision/global_")]
    glob = [g for g in groups if g.key.startswith("vision/global_")]
    saved: list[int] = []
    fwd: list[int] = []
    bwd: list[int] = []
    amp_c: list[int] = []
    tower_details: dict[str, int] = {}
    x_rg = tower_trains or ctx.tr.grad_ckpt
    for n, grp, gated in (
        (_int_arch(spec, "vision_local_layers"), local, False),
        (_int_arch(spec, "vision_global_layers"), glob, True),
    ):
        for i in range(n):
            led, f_x, b_x, rg_after, amp_copy = _block(
                vctx, grp, rb, x_requires_grad=x_rg, first=i == 0 and not gated
            )
            x_rg = x_rg or rg_after
            total = led.total
            if gated and tower_trains:
                total += 2 * block(Tv * Hv * cb)  # the gates' saved attention / MLP outputs
            saved.append(total)
            fwd.append(f_x)
            bwd.append(b_x)
            amp_c.append(amp_copy)
            for key, val in led.by_detail().items():
                tower_details[key] = tower_details.get(key, 0) + val
            if gated and tower_trains:
                tower_details["activations/vision"] = tower_details.get(
                    "activations/vision", 0
                ) + 2 * block(Tv * Hv * cb)
        if not gated and x_rg:
            emb.save("ln_post_in", "vision", Tv * Hv * rb)
            emb.save("ln_post_stats", "vision", 2 * block(Tv * 4))
    proj = Ledger()
    out_dim = _int_arch(spec, "vision_output_dim")
    if ctx.full:
        proj.save("proj_in", "vision", Tp * out_dim * (2 if amp else pb))
    if not ctx.full or amp:
        # the tower's output stays referenced by the model output (MllamaModel.forward returns
        # it as image_outputs) until the step ends: the projector's input itself when it
        # trains in the weights' dtype, else one more tensor
        proj.save("image_outputs", "vision", Tp * out_dim * rb)
    # the image states (B, images x tiles x positions, H) the cross-attention k/v read
    if ctx.full:
        proj.save("xstates", "vision", Tp * spec.hidden_size * cb)
    if amp and ctx.full:
        amp_c[-1:] = [
            (amp_c[-1] if amp_c else 0)
            + sum(block(g.weight_numel * 2) for g in _layer_groups(inventory, "projector"))
        ]
    prof.embed_saved += emb.total + proj.total
    prof.tower_blocks = len(saved)
    prof.layer_fwd_extra[:0] = fwd
    prof.layer_bwd_extra[:0] = bwd
    prof.amp_copy_per_layer[:0] = amp_c
    if ctx.tr.grad_ckpt:
        # the tower's layers are not checkpointed: each keeps its whole ledger (as the
        # "checkpoint" the step walk holds) and recomputes nothing in backward
        prof.layer_saved[:0] = [0] * len(saved)
        prof.ckpt_input[:0] = saved
        prof.layer_ckpt[:0] = [None] * len(saved)
        prof.tower_kept = sum(saved)
    else:
        prof.layer_saved[:0] = saved
    total = emb.total + proj.total + sum(tower_details.values())
    details["activations/vision"] = details.get("activations/vision", 0) + total
