"""Inference: weights in their stored format, the KV cache, and ``generate``'s peak.

Numbers in, integer bytes out. The walk of transformers' ``generate`` (``generate_walk``) is
what ``engine._inference_walk`` records for ``--engine hf``; ``serving.py`` reuses the weight
and KV-cache formulas for ``--engine vllm``.

What transformers 5.24 ``generate`` holds (``generation/utils.py``, ``cache_utils.py``):

- **prefill**: one forward over the ``B x P`` prompt under ``no_grad``. Nothing is saved for
  backward; each decoder layer's temporaries are freed before the next layer runs, while the
  layer's K and V go into the cache. ``generate`` passes ``logits_to_keep=1`` (``_sample``
  setup: "set it to 1 to avoid computing the whole logit matrix"), so the LM head computes
  ``B x 1 x V`` logits, not ``B x P x V``.
- **sampling** (after every forward): ``outputs.logits[:, -1].to(copy=True,
  dtype=torch.float32)`` (fp32 copy), the logits processors' scores (fp32), and with
  ``do_sample`` the softmax probabilities (fp32) -- each ``B x V``.
- **decode**: one token per step; ``DynamicCache`` (the default) grows every layer's K and V
  by ``torch.cat`` (``DynamicLayer.update``), so while one tensor is re-allocated its old
  copy (one token shorter) is live for a moment. The last forward sees ``P + N - 1`` cached
  tokens (the N-th token is sampled, never fed back). A static cache
  (``cache_implementation="static"``) allocates ``P + N`` tokens up front instead; the peak
  differs by one token per layer.
- **sliding-window and chunked layers** (``DynamicCache(config=...)``, which ``generate``
  builds from ``layer_types``/``sliding_window``: ``DynamicSlidingWindowLayer`` with the
  window, or ``attention_chunk_size`` for chunked layers): ``update`` keeps
  ``full[:, :, -w + 1:]``, a *view* of the concatenated states. After the prefill the view
  still holds the whole ``P``-token storage; from the first decode step on, each update
  concatenates ``min(seen - 1, w - 1)`` kept tokens and the new one into a fresh
  ``min(seen, w)``-token tensor and the older storage is freed (``cache_windows``,
  ``cache_tokens``). So a window lowers the decode-time cache, never the prefill peak.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vramcalc import catalog
from vramcalc.enums import Attention, DType, KvDtype, Phase, Quant, WeightFormat
from vramcalc.formulas.activations import layer_kinds
from vramcalc.formulas.counts import ParamGroup
from vramcalc.formulas.params import _quantized_weight_bytes, block, dtype_bytes
from vramcalc.specs import ModelSpec

__all__ = [
    "GenerateEvent",
    "GenerateWalk",
    "cache_tokens",
    "cache_windows",
    "compute_bytes",
    "decode_tokens_per_s",
    "generate_walk",
    "kv_bytes_per_token",
    "kv_dtype_bytes",
    "kv_heads_per_rank",
    "weight_format_bytes",
    "weights",
]


def compute_bytes(param_dtype: DType, weights: WeightFormat | None) -> int:
    """Bytes of one activation element: the weights' dtype, 16 bit for AWQ/GPTQ/FP8 kernels.

    Source: vLLM ``quantization/awq.py``, ``gptq.py``, ``fp8.py`` (activations in fp16/bf16).
    """
    if weights is not None:
        return 2
    return dtype_bytes(param_dtype)


def decode_tokens_per_s(
    weights_bytes: int,
    kv_bytes_per_token: int,
    seqs: int,
    context: float,
    bandwidth_bytes_per_s: float,
) -> float:
    """Decode throughput proxy of one replica: tokens/s if each step only streams memory.

    One decode step produces one token for each of ``seqs`` sequences and reads every weight of
    the rank once plus each sequence's cached K and V (``context`` tokens on average):
    ``step_s = (weights_bytes + seqs x context x kv_bytes_per_token) / bandwidth``, tokens/s
    ``= seqs / step_s``. An upper bound (the memory roofline): it ignores compute, kernel
    launch gaps, tensor-parallel all-reduces and the prefill, so it ranks layouts and is not a
    measured throughput. Under tensor parallelism every rank streams its own slice at once, so
    ``weights_bytes`` and ``kv_bytes_per_token`` are one rank's.

    Source: the roofline model (Williams, Waterman, Patterson, CACM 52(4), 2009) applied to
    autoregressive decoding, which is memory-bandwidth bound at small batch (Pope et al.,
    "Efficiently Scaling Transformer Inference", MLSys 2023, Section 2.1).
    """
    if seqs <= 0 or bandwidth_bytes_per_s <= 0:
        return 0.0
    step_bytes = weights_bytes + seqs * context * kv_bytes_per_token
    return seqs * bandwidth_bytes_per_s / step_bytes if step_bytes > 0 else 0.0


def kv_dtype_bytes(kv_dtype: KvDtype, compute: int) -> int:
    """Bytes of one cached K or V element (``auto`` = the compute dtype).

    Source: transformers ``cache_utils.DynamicLayer`` (K/V stored as the layer computes them);
    vLLM ``CacheConfig.cache_dtype`` (``auto`` = model dtype, ``fp8`` = 1 byte).
    """
    if kv_dtype == KvDtype.AUTO:
        return compute
    return 1 if kv_dtype == KvDtype.FP8 else 2


def kv_heads_per_rank(num_key_value_heads: int, tp: int) -> int:
    """KV heads one tensor-parallel rank caches: ``kv / tp``, at least one (replicated).

    Source: vLLM ``model_executor/layers/linear.py`` ``QKVParallelLinear`` (``num_kv_heads =
    max(1, total_num_kv_heads // tp_size)``, heads replicated when ``tp > kv``).
    """
    return max(1, num_key_value_heads // tp)


def kv_bytes_per_token(layers: int, kv_heads: int, head_dim: int, kv_bytes: int) -> int:
    """KV-cache bytes of one token over ``layers`` layers: ``2 x layers x kv_heads x d x b``.

    The 2 is K and V. Source: MEMORY_MODEL (inference); vLLM ``v1/kv_cache_interface.py``
    ``FullAttentionSpec.page_size_bytes`` = ``2 x block_size x num_kv_heads x head_size x
    dtype_size`` per layer.
    """
    return 2 * layers * kv_heads * head_dim * kv_bytes


def weight_format_bytes(in_features: int, out_features: int, fmt: WeightFormat) -> int:
    """Allocated bytes of one linear weight stored in a weight-only quantized format.

    - AWQ (4 bit, group ``g`` = 128): ``qweight`` int32 ``[in, out/8]``, ``qzeros`` int32
      ``[in/g, out/8]``, ``scales`` fp16 ``[in/g, out]``.
      Source: vLLM ``quantization/awq.py`` ``AWQLinearMethod.create_weights``.
    - GPTQ (4 bit, g = 128): ``qweight`` int32 ``[in/8, out]``, ``qzeros`` int32
      ``[in/g, out/8]``, ``scales`` fp16 ``[in/g, out]``, ``g_idx`` int32 ``[in]``.
      Source: vLLM ``quantization/gptq.py`` ``GPTQLinearMethod.create_weights``.
    - FP8: ``weight`` float8 ``[out, in]``, per-tensor ``weight_scale`` and ``input_scale``
      (fp32 scalars). Source: vLLM ``quantization/fp8.py`` ``Fp8LinearMethod.create_weights``
      (a per-channel checkpoint adds ``out`` fp32 scales: < 0.5 % of the weight).
    """
    if fmt == WeightFormat.FP8:
        return block(in_features * out_features) + 2 * block(4)
    bits = int(catalog.constant("awq_gptq_weight_bits"))
    g = int(catalog.constant("awq_gptq_group_size"))
    pack = 32 // bits
    groups = -(-in_features // g)
    out_packed = -(-out_features // pack)
    zeros = block(groups * out_packed * 4)
    scales = block(groups * out_features * 2)
    if fmt == WeightFormat.AWQ:
        return block(in_features * out_packed * 4) + zeros + scales
    qweight = block(-(-in_features // pack) * out_features * 4)
    return qweight + zeros + scales + block(in_features * 4)


def weights(
    inventory: tuple[ParamGroup, ...],
    param_dtype: DType,
    quant: Quant | None,
    fmt: WeightFormat | None,
) -> tuple[int, dict[str, int]]:
    """Bytes of the model's weights for inference, and their ``params/...`` detail rows.

    Linear weights inside the blocks are stored quantized (bitsandbytes ``--quant``: not
    MoE experts, as bitsandbytes skips 3-D expert parameters; ``--weights``: experts too, as
    vLLM's fused-MoE kernels take AWQ/GPTQ/FP8 experts); embeddings, the LM head, norms and
    biases stay in the 16-bit dtype (``param_dtype``; 16 bit for ``--weights``). Inference does
    not run ``prepare_model_for_kbit_training``, so nothing is cast to fp32.

    Source: transformers ``integrations/bitsandbytes.py`` (``lm_head`` kept out by
    ``llm_int8_skip_modules``); vLLM ``quantization/*`` (``ParallelLMHead`` unquantized).
    """
    other = 2 if fmt is not None else dtype_bytes(param_dtype)
    other_key = "params/fp32" if other == 4 else "params/16bit"
    total = 0
    rows: dict[str, int] = {}
    for g in inventory:
        qbnb = quant is not None and g.kind == "linear" and not g.expert
        qfmt = fmt is not None and g.kind == "linear"
        if qbnb:
            assert quant is not None
            wb, key = _quantized_weight_bytes(g.weight_numel, g.out_features, quant), quant.value
        elif qfmt:
            assert fmt is not None
            wb, key = weight_format_bytes(g.in_features, g.out_features, fmt), fmt.value
        else:
            wb, key = block(g.weight_numel * other), other_key.split("/")[1]
        b = wb * g.count
        if g.bias_numel:
            bb = block(g.bias_numel * other) * g.count
            rows[other_key] = rows.get(other_key, 0) + bb
            total += bb
        rows[f"params/{key}"] = rows.get(f"params/{key}", 0) + b
        total += b
    return total, rows


@dataclass(frozen=True)
class GenerateEvent:
    """Live bytes at one moment of ``generate`` (components as the engine records them)."""

    phase: Phase
    event: str
    rows: dict[str, int]

    @property
    def total(self) -> int:
        """Sum of the rows."""
        return sum(self.rows.values())


@dataclass(frozen=True)
class GenerateWalk:
    """The events of one ``generate`` call; the peak is the largest."""

    events: list[GenerateEvent] = field(default_factory=list)

    @property
    def peak(self) -> GenerateEvent:
        """The first event among equal maxima (as ``max_memory_allocated`` records it)."""
        return max(self.events, key=lambda e: e.total)


def _layer_temporaries(spec: ModelSpec, tokens: int, batch: int, prompt: int, cb: int,
                       attn: Attention) -> int:  # fmt: skip
    """Largest live temporaries of a no-grad forward at its last decoder layer (``tokens`` tokens).

    Held by the model's forward through every layer: the token embeddings' output
    (``inputs_embeds``, a local of ``LlamaModel.forward`` and its kin; layer 0's input, so an
    extra tensor from layer 1 on) or, with learned positions, the token and the position
    embeddings' outputs (GPT-2: ``position_ids`` is ``B x P`` in ``generate``, so ``wpe``'s
    output is ``B x P x H``; their sum is layer 0's input); with rotary positions the ``cos``
    and ``sin`` tables (``B x P x d`` each, in the compute dtype); when a layer needs an
    explicit mask (a sliding or chunked layer whose prompt reaches the window, Falcon), the
    boolean ``1 x 1 x P x P`` mask ``sdpa_mask`` builds for an unpadded batch.
    Inside the layer, attention stage: the layer input (still referenced by the caller's loop
    variable, and kept as the residual) and its normed copy, ``2 T H``, plus q, k, v
    projections, rotated q and k copies and the attention output (``T (2 h + 2 kv) d`` +
    ``T h d``); eager attention adds the ``B h P P`` scores in the compute dtype, the masked
    copy, and the fp32 softmax (``2 cb + 4`` bytes per score). MLP stage: the layer input, the
    post-attention hidden state (the MLP's residual) and its normed copy, ``3 T H``, plus the
    MLP's temporaries: gated, ``act(gate)``, ``up`` and their product (``3 T I``); plain,
    ``fc1``'s output and its activation (``2 T I``). transformers' python tanh GELU
    (``gelu_new``/``gelu_fast``, ``NewGELUActivation``: ``0.5 * x * (1 + tanh(c * (x +
    0.044715 * x**3)))``) holds its input, ``0.5 * x`` and two chain temporaries at once
    (``4 T I``; gated: the gate in place of ``fc1``'s output).
    Source: transformers 5.24 ``models/llama/modeling_llama.py`` (``LlamaModel.forward``,
    ``LlamaDecoderLayer.forward``, ``LlamaAttention.forward``, ``apply_rotary_pos_emb``,
    ``LlamaMLP.forward``), ``models/gpt2/modeling_gpt2.py`` (``GPT2Model.forward``),
    ``activations.py`` ``NewGELUActivation``, ``eager_attention_forward``, ``masking_utils.py``
    (``create_sliding_window_causal_mask``, ``sdpa_mask``); checked on
    fake-CUDA traces of ``generate`` (``validation/measurements/trace-generate.jsonl``).
    """
    h, kv, d = spec.num_attention_heads, spec.num_key_value_heads, spec.head_dim
    th = block(tokens * spec.hidden_size * cb)
    if spec.position_embedding == "learned":
        held = 2 * th
    else:
        held = th if spec.num_hidden_layers > 1 else 0
    if spec.position_embedding == "rotary":
        held += 2 * block(tokens * d * cb)
    if attn != Attention.EAGER and any(k.masked for k in layer_kinds(spec, prompt)):
        held += block(prompt * prompt)  # the bool mask [1, 1, P, P] (sdpa_mask, no padding)
    qkv = block(tokens * h * d * cb) + 2 * block(tokens * kv * d * cb)
    rot = block(tokens * h * d * cb) + block(tokens * kv * d * cb)
    out = block(tokens * h * d * cb)
    attn_b = 2 * th + qkv + rot + out
    if attn == Attention.EAGER:
        scores = batch * h * prompt * prompt
        attn_b += 2 * block(scores * cb) + block(scores * 4)
    inter = spec.intermediate_size
    if spec.num_experts_per_tok:
        inter *= spec.num_experts_per_tok
    ti = block(tokens * inter * cb)
    python_gelu = spec.hidden_act in ("gelu_new", "gelu_fast")
    mlp = 3 * th + (4 if python_gelu else 3 if spec.mlp == "gated" else 2) * ti
    return held + max(attn_b, mlp)


def _sampling(batch: int, vocab: int, cb: int) -> dict[str, int]:
    """Return the last position's logits and their fp32 copy, scores and probabilities.

    Source: transformers 5.24 ``generation/utils.py`` ``_sample``: ``outputs.logits`` (``B x 1 x
    V`` with ``logits_to_keep=1``), ``next_token_logits = outputs.logits[:, -1].to(copy=True,
    dtype=torch.float32)``, ``next_token_scores = logits_processor(...)``, ``probs =
    softmax(next_token_scores)``.
    """
    return {
        "activations/logits": block(batch * vocab * cb) + block(batch * vocab * 4),
        "activations/sampling": 2 * block(batch * vocab * 4),
    }


def cache_windows(spec: ModelSpec) -> list[int]:
    """Per decoder layer: the window its ``DynamicCache`` layer keeps (0 = every token).

    Sliding layers keep ``sliding_window``, chunked layers ``attention_chunk_size`` (both
    ``DynamicSlidingWindowLayer``); the layer pattern is ``activations.layer_kinds``.
    Source: transformers 5.24 ``cache_utils.py`` (``get_layer_types_and_kwargs``,
    ``DYNAMIC_LAYER_TYPE_MAPPING``: ``"chunked_attention"`` -> ``DynamicSlidingWindowLayer``
    with ``sliding_window=attention_chunk_size``).
    """
    window = spec.arch.get("sliding_window")
    chunk = spec.arch.get("attention_chunk_size")
    w = int(window) if isinstance(window, int | float) and not isinstance(window, bool) else 0
    c = int(chunk) if isinstance(chunk, int | float) and not isinstance(chunk, bool) else 0
    return [w if k.attn == "sliding" else c if k.attn == "chunked" else 0
            for k in layer_kinds(spec, 1)]  # fmt: skip


def cache_tokens(window: int, prompt: int, seen: int, step: int) -> int:
    """Tokens of storage one ``DynamicCache`` layer's K (or V) holds after a forward.

    ``step`` 0 is the prefill (``seen = prompt``), ``k >= 1`` the k-th decode step. A full
    layer (``window`` 0) holds ``seen``. A windowed layer holds the prefill's ``prompt``-token
    storage (its view keeps it alive) until its first decode update, then ``min(seen,
    window)``; during the first decode step the layers not yet updated still hold ``prompt``
    tokens, so that step counts the larger of the two.
    Source: transformers 5.24 ``cache_utils.py`` ``DynamicSlidingWindowLayer.update``
    (``full_key_states = torch.cat([self.keys, key_states], dim=-2)``; ``self.keys =
    full_key_states[:, :, -self.sliding_window + 1 :, :]``).
    """
    if window <= 0 or step == 0:
        return seen
    kept = min(seen, window)
    return max(prompt, kept) if step == 1 else kept


def generate_walk(
    spec: ModelSpec,
    *,
    weight_bytes: int,
    weight_rows: dict[str, int],
    batch: int,
    prompt_len: int,
    new_tokens: int,
    compute: int,
    kv_bytes: int,
    attn: Attention,
    kv_heads: int | None = None,
    dequant_bytes: int = 0,
    windows: list[int] | None = None,
) -> GenerateWalk:
    """Walk ``model.generate(input_ids, max_new_tokens=N)`` with a ``DynamicCache``.

    Events: model loaded; prefill at the last layer (the whole prompt's cache, that layer's
    temporaries); prefill logits and sampling; decode step 1; the last decode step (cache of
    ``P + N - 1`` tokens, the ``torch.cat`` copy of one K or V tensor, the step's logits).
    Inputs: ``input_ids`` and ``attention_mask`` (int64, ``B x (P + N)`` at the end).
    ``dequant_bytes``: a bitsandbytes 4-bit layer's weight dequantized to 16 bit for a
    multi-token matmul (the prefill; one-token decode steps take the ``gemv_4bit`` path).
    Source: bitsandbytes ``autograd/_functions.py`` ``matmul_4bit`` (``gemv_4bit`` only when
    ``A.numel() == A.shape[-1]``, else ``dequantize_4bit`` + ``torch.matmul``).
    ``windows``: per layer, the tokens a sliding/chunked cache layer keeps (0 = all; default
    ``cache_windows(spec)``); each layer's cache follows ``cache_tokens``. Eager attention
    with grouped K/V heads copies one layer's cached K and V to every query head in a decode
    step (``repeat_kv`` in ``eager_attention_forward``; SDPA passes ``enable_gqa`` instead).

    Source: see the module docstring (transformers 5.24 ``generation/utils.py``,
    ``cache_utils.py``).
    """
    L = spec.num_hidden_layers
    kvh = kv_heads if kv_heads is not None else spec.num_key_value_heads
    d = spec.head_dim

    wins = cache_windows(spec) if windows is None else windows
    wins = (wins + [0] * L)[:L]

    def one(tokens: int) -> int:  # one K or V tensor [B, kv, tokens, d]
        return block(batch * kvh * tokens * d * kv_bytes)

    def cache(seen: int, step: int = 0) -> int:
        # one K and one V tensor per layer, each as long as its layer keeps
        return sum(2 * one(cache_tokens(w, prompt_len, seen, step)) for w in wins)

    def inputs(tokens: int) -> int:
        return 2 * block(batch * tokens * 8)

    base = {**weight_rows}
    out = GenerateWalk([])
    out.events.append(
        GenerateEvent(Phase.LOAD, "model loaded", {**base, "params/inputs": inputs(prompt_len)})
    )
    t_prefill = batch * prompt_len
    out.events.append(
        GenerateEvent(
            Phase.PREFILL,
            "prefill: last layer (KV cache + layer temporaries)",
            {
                **base,
                "params/inputs": inputs(prompt_len),
                "activations/kv_cache": cache(prompt_len),
                "activations/prefill_temporaries": _layer_temporaries(
                    spec, t_prefill, batch, prompt_len, compute, attn
                )
                + (dequant_bytes if t_prefill > 1 else 0),
            },
        )
    )
    out.events.append(
        GenerateEvent(
            Phase.PREFILL,
            "prefill: last-position logits and sampling",
            {
                **base,
                "params/inputs": inputs(prompt_len),
                "activations/kv_cache": cache(prompt_len),
                **_sampling(batch, spec.vocab_size, compute),
            },
        )
    )
    for step in sorted({1, new_tokens - 1}):
        if step < 1 or step > new_tokens - 1:
            continue
        seen = prompt_len + step  # cached tokens after this step's forward
        # torch.cat: the old copy of the largest K or V (the storage before this update)
        grow = one(max(seen - 1 if w <= 0 or step == 1 else min(seen - 1, w) for w in wins))
        step_tmp = _layer_temporaries(spec, batch, batch, 1, compute, attn)
        if attn == Attention.EAGER and kvh < spec.num_attention_heads:
            # eager attention repeats the cached K and V to every query head (repeat_kv)
            longest = max(seen if w <= 0 else min(seen, w) for w in wins)
            step_tmp += 2 * block(batch * spec.num_attention_heads * longest * d * kv_bytes)
        name = "decode: first step" if step == 1 else f"decode: last step ({seen} cached tokens)"
        rows = {
            **base,
            "params/inputs": inputs(seen),
            "activations/kv_cache": cache(seen, step),
        }
        layer = grow + step_tmp
        sampling = _sampling(batch, spec.vocab_size, compute)
        if layer >= sum(sampling.values()):
            rows["activations/cache_growth"] = grow
            rows["activations/decode_temporaries"] = step_tmp
        else:
            rows.update(sampling)
        out.events.append(GenerateEvent(Phase.DECODE, name, rows))
    return out
