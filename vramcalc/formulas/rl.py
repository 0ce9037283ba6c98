"""RL trainers with generation: GRPO and RLOO (TRL 1.16.0), PPO (trl 1.12.0's PPOTrainer).

Numbers in, integer bytes out. What one GRPO/RLOO step holds on a training GPU, in the order
TRL runs it (``trl/trainer/grpo_trainer.py``; ``rloo_trainer.py`` is the same shape):

1. **generation** (``_prepare_inputs`` -> ``_generate_and_score_completions`` ->
   ``_generate_single_turn``): once per ``steps_per_generation`` micro-batches, the local
   generation batch of ``b x steps_per_generation`` completions (``-b`` counts completions,
   as ``per_device_train_batch_size`` does; the sampler repeats each prompt ``G`` times) is
   generated in one ``unwrapped_model.generate`` call under ``torch.no_grad`` with gradient
   checkpointing disabled (``unwrap_model_for_generation``): a DynamicCache of ``b_gen``
   sequences growing to ``P + L`` tokens and the last position's logits and sampling buffers
   (``formulas/inference.generate_walk``). With ``--vllm colocate`` the engine's whole
   reservation (``vllm_gpu_memory_utilization x`` GPU memory, ``trl/generation/
   vllm_generation.py`` ``LLM(..., gpu_memory_utilization=...)``; vLLM pre-allocates its
   KV-cache pool up to that budget at start-up, ``serving.budget``) sits on the training GPU
   for the whole run and transformers generates nothing; ``--vllm server`` generates on other
   GPUs (nothing here).
2. **log-probs** (no grad, ``disable_gradient_checkpointing``): ``old_per_token_logps`` when
   ``gradient_accumulation_steps % (steps_per_generation x num_iterations) != 0`` or with vLLM
   (importance-sampling correction, on by default), always for RLOO; ``ref_per_token_logps``
   when ``beta > 0`` -- from the reference copy, or under PEFT the policy with its adapter
   disabled (``use_adapter(model, None)``). Each runs the model over the generation batch in
   chunks of ``b`` rows (``_get_per_token_logps_and_entropies``): one block's temporaries at
   a time, then the last hidden state, its compacted copy and the fused LM head's buffers.
3. **rollout buffer**: the generation batch's ``prompt_ids``, ``prompt_mask``,
   ``completion_ids``, ``completion_mask`` (int64), advantages and the log-prob tensors stay
   in ``self._buffered_inputs`` until the next generation.
4. **training micro-batch**: the policy's forward over ``b`` rows of ``P + L`` tokens with
   ``fused_lm_head=True`` (``trl/trainer/utils.py`` ``add_fused_lm_head``): on a CUDA GPU with
   Triton it scores only the ``b x L`` completion positions (``hidden_states[mask]``) and
   folds ``[min(N, 4096), 32768]`` logit tiles in place -- the tile buffer ``mm_buf`` is always
   32768 columns wide, whatever the vocabulary (``trl/kernels/chunked_logprob.py``); the
   per-token log-probs and entropies are scattered back to ``[b, P + L - 1]`` fp32. Backward:
   the tile again, an fp32 ``grad_hidden`` and, when the head trains, an fp32 ``grad_weight``
   ``[V, H]`` then its cast to the weight's dtype. The loss itself is a handful of ``b x L``
   fp32 tensors.

**PPO** is not in trl 1.16.0 (it left TRL in 1.13): it is modelled from trl 1.12.0's
``trl/experimental/ppo/ppo_trainer.py`` (``PPOTrainer.train``), its last release: rollout
generation with ``output_scores=True`` (every step's fp32 scores kept, stacked and padded into
a ``[b, L, V]`` tensor kept until the next rollout, ``ppo_scores_bytes``), the no-grad
reference/value/reward passes with ``output_hidden_states=True`` (``ppo_logprob_bytes``), a
value model (``AutoModelForSequenceClassification``) trained in full next to the policy
(``PolicyAndValueWrapper``: its activations, gradients and AdamW states), a frozen reward model
of the same backbone, the reference copy or the policy's disabled adapter under PEFT, and the
policy's full-vocabulary logits with a per-row ``log_softmax`` in its loss (``ppo_head``; no
fused head). PPOTrainer builds its own ``Accelerator`` and never calls ``Trainer.__init__``:
no autocast and no gradient checkpointing under transformers 5. Traced by
``validation/trl_ppo_trace.py`` (trl 1.12.0's real ``train()``).

Source: trl 1.16.0 (GRPO/RLOO) and trl 1.12.0 (PPO), paths above; the traced checks are
``validation/trl_rl_trace.py`` and ``validation/trl_ppo_trace.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from vramcalc.enums import Attention, Phase, Trainer
from vramcalc.formulas.inference import _layer_temporaries, generate_walk
from vramcalc.formulas.params import block
from vramcalc.specs import ModelSpec, TrainerSpec

__all__ = [
    "LOGPROB_TILE_COLUMNS",
    "LOGPROB_TOKEN_CHUNK",
    "RL_TRAINERS",
    "Rollout",
    "generation_rows",
    "logprob_forward_bytes",
    "policy_head",
    "rollout",
    "rollout_buffer_bytes",
]

RL_TRAINERS = (Trainer.GRPO, Trainer.RLOO, Trainer.PPO)
# trl 1.16.0 trl/kernels/chunked_logprob.py TOKEN_CHUNK_SIZE; trl/trainer/utils.py
# _CHUNKED_LOGPROB_CHUNK_SIZE, the width ``mm_buf`` is allocated with (structural constants of
# the kernel's tiling, not tunables)
LOGPROB_TOKEN_CHUNK = 4096
LOGPROB_TILE_COLUMNS = 32768
# the per-token statistics the kernel's forward allocates (running max, sum_exp, x_sum_exp,
# sq_sum_exp, z_sum, max_before_target, target_logit): ChunkedLogProbFunction.forward
_KERNEL_STATS = 7


@dataclass(frozen=True)
class Rollout:
    """One rank's rollout shape, resolved from the request (TRL's names).

    Attributes:
        completions: ``per_device_train_batch_size`` (rows of a training micro-batch).
        generation_batch: completions generated at once on this rank
            (``b x steps_per_generation``).
        prompt: prompt tokens ``P``.
        completion: completion tokens ``L``.
        old_logps: the no-grad ``old_per_token_logps`` pass runs.
        ref_logps: the no-grad reference pass runs (``beta > 0``).
        vllm: ``none``, ``colocate`` or ``server``.
        vllm_utilization: the colocated engine's share of GPU memory.

    """

    completions: int
    generation_batch: int
    prompt: int
    completion: int
    old_logps: bool
    ref_logps: bool
    vllm: str
    vllm_utilization: float | None

    @property
    def seq_len(self) -> int:
        """Tokens per training row: prompt + completion."""
        return self.prompt + self.completion


def rollout(trainer: TrainerSpec, batch_size: int, grad_accum: int) -> Rollout:
    """Resolve a GRPO/RLOO/PPO rollout on one rank.

    ``old_logps``: GRPO computes ``old_per_token_logps`` when ``gradient_accumulation_steps %
    steps_per_generation != 0`` (``num_iterations`` = 1) or with vLLM's importance-sampling
    correction; RLOO always.

    Source: trl 1.16.0 ``trl/trainer/grpo_trainer.py`` ``_generate_and_score_completions``,
    ``trl/trainer/rloo_trainer.py`` ``_generate_and_score_completions``.
    """
    spg = trainer.steps_per_generation or grad_accum
    vllm = trainer.vllm
    if trainer.name == Trainer.RLOO:
        old = True
    elif trainer.name == Trainer.GRPO:
        old = grad_accum % spg != 0 or vllm != "none"
    else:
        old = True  # PPO's rollout scores the policy's log-probs (no grad)
    return Rollout(
        completions=batch_size,
        generation_batch=batch_size * (spg if trainer.name != Trainer.PPO else 1),
        prompt=trainer.max_prompt_length or 512,
        completion=trainer.max_completion_length or 512,
        old_logps=old,
        ref_logps=(trainer.beta or 0.0) > 0 or trainer.name == Trainer.PPO,
        vllm=vllm,
        vllm_utilization=trainer.vllm_gpu_memory_utilization,
    )


def generation_rows(
    spec: ModelSpec,
    ro: Rollout,
    *,
    compute: int,
    kv_bytes: int,
    attn: Attention,
    kv_heads: int | None = None,
) -> list[tuple[str, dict[str, int]]]:
    """Events of the rollout's ``generate`` call: (name, ``activations/generation_*`` rows).

    The walk of transformers' ``generate`` (``inference.generate_walk``) over the generation
    batch, without its weight rows: the KV cache, the prompt/completion ids, the prefill's
    layer temporaries, the last position's logits and sampling buffers.

    Source: trl 1.16.0 ``grpo_trainer.py`` ``_generate_single_turn`` (``unwrapped_model.
    generate(**generate_inputs, generation_config=...)``, sampling, ``max_new_tokens =
    max_completion_length``); transformers 5.24 ``generation/utils.py``.
    """
    walk = generate_walk(
        spec,
        weight_bytes=0,
        weight_rows={},
        batch=ro.generation_batch,
        prompt_len=ro.prompt,
        new_tokens=ro.completion,
        compute=compute,
        kv_bytes=kv_bytes,
        attn=attn,
        kv_heads=kv_heads,
    )
    names = {
        "params/inputs": "activations/generation_inputs",
        "activations/kv_cache": "activations/generation_kv_cache",
    }
    out = []
    for ev in walk.events:
        if ev.phase == Phase.LOAD:
            continue
        rows = {
            names.get(k, "activations/generation_" + k.split("/", 1)[1]): v
            for k, v in ev.rows.items()
        }
        out.append((f"generation: {ev.event}", rows))
    return out


def _tile(tokens: int, compute: int) -> int:
    """Return the kernel's ``mm_buf``: ``[min(N, 4096), 32768]`` in the compute dtype."""
    return block(min(tokens, LOGPROB_TOKEN_CHUNK) * LOGPROB_TILE_COLUMNS * compute)


def logprob_forward_bytes(
    spec: ModelSpec, ro: Rollout, *, compute: int, hidden_bytes: int, attn: Attention
) -> int:
    """Peak of one no-grad log-prob pass over the generation batch, above the weights.

    Per chunk of ``b`` rows of ``S = P + L`` tokens: the larger of one block's temporaries
    and the head: the last hidden state ``[b, S, H]``, its compacted completion positions
    ``[b L, H]`` and int64 targets, the kernel's seven fp32 statistics per position, its tile,
    and the per-token log-probs scattered to ``[b, S - 1]`` fp32. The chunks' log-probs
    (``[b, L]`` fp32 views) are kept and concatenated at the end.

    Source: trl 1.16.0 ``grpo_trainer.py`` ``_get_per_token_logps_and_entropies``,
    ``trl/trainer/utils.py`` ``add_fused_lm_head``, ``trl/kernels/chunked_logprob.py``.
    """
    b, S, L, H = ro.completions, ro.seq_len, ro.completion, spec.hidden_size
    N = b * L
    layer = _layer_temporaries(spec, b * S, b, S, compute, attn)
    head = (
        block(b * S * H * hidden_bytes)
        + block(N * H * hidden_bytes)
        + block(N * 8)
        + _KERNEL_STATS * block(N * 4)
        + _tile(N, compute)
        + block(N * 4)
        + block(b * (S - 1) * 4)
    )
    chunks = -(-ro.generation_batch // b)
    kept = chunks * block(b * (S - 1) * 4) + block(ro.generation_batch * L * 4)
    return max(layer, head) + kept


def rollout_buffer_bytes(ro: Rollout, n_logps: int) -> int:
    """Return the buffered generation batch: ids and masks (int64), advantages, log-prob tensors.

    Source: trl 1.16.0 ``grpo_trainer.py`` ``_generate_and_score_completions`` (``pad(...)``
    of prompt/completion ids and masks, ``advantages``, ``old_per_token_logps``,
    ``ref_per_token_logps``) and ``_prepare_inputs`` (``self._buffered_inputs``).
    """
    n = ro.generation_batch
    ids = 2 * block(n * ro.prompt * 8) + 2 * block(n * ro.completion * 8)
    return ids + block(n * 4) + n_logps * block(n * ro.completion * 4)


def policy_head(
    ro: Rollout,
    *,
    hidden: int,
    vocab: int,
    compute: int,
    hidden_bytes: int,
    param_bytes: int,
    head_trainable: bool,
) -> tuple[int, int, int, int]:
    """Return the policy's fused LM head bytes in a training micro-batch (GPU/Triton path).

    Returns ``(saved, forward_extra, outputs, backward_extra)``: saved for backward (the
    compacted hidden states ``[N, H]``, int64 targets, fp32 ``log_z`` and entropy, ``N = b
    L``); the forward's transient (seven fp32 statistics, the tile, the kernel's two
    outputs); the log-probs and entropies scattered to ``[b, S - 1]`` fp32 (alive until the
    loss); the backward's transient (the tile, fp32 ``grad_hidden`` ``[N, H]`` and the
    hidden-gradient cast, fp32 ``grad_weight`` ``[V, H]`` when the head trains; its cast is
    the gradient the walk already counts).

    Source: trl 1.16.0 ``trl/kernels/chunked_logprob.py`` (``ChunkedLogProbFunction``),
    ``trl/trainer/utils.py`` ``add_fused_lm_head`` (``outputs=("log_probs", "entropy")`` for
    the GRPO/RLOO policy).
    """
    b, S, L = ro.completions, ro.seq_len, ro.completion
    N = b * L
    saved = block(N * hidden * hidden_bytes) + block(N * 8) + 2 * block(N * 4)
    fwd = _KERNEL_STATS * block(N * 4) + _tile(N, compute) + 2 * block(N * 4)
    outputs = 2 * block(b * (S - 1) * 4)
    # the fp32 accumulator; its cast to the weight's dtype becomes the head's gradient
    wgrad = block(vocab * hidden * 4) if head_trainable else 0
    bwd = _tile(N, compute) + block(N * hidden * 4) + block(N * hidden * hidden_bytes) + wgrad
    return saved, fwd, outputs, bwd


# ----------------------------------------------------------------------------- PPO


@dataclass(frozen=True)
class PPOHead:
    """The PPO policy's logits and loss in a training micro-batch (bytes; see ``ppo_head``).

    Attributes:
        logits: ``output.logits`` ``[b, S, V]``, referenced by ``output`` from the forward
            to the end of the micro-batch (after the optimizer step).
        loss_fwd: the per-row ``log_softmax`` outputs saved for backward (``[L, V]`` each).
        loss_bwd: the loss backward's transient (the logits' gradient: two ``[b, S, V]`` and
            two ``[b, L, V]`` buffers).
        head_bwd: the LM head's backward transient (the logits' gradient and the hidden
            states' gradient ``[b, S, H]``).
        entropy: after the optimizer step, the no-grad entropy statistic's ``softmax`` of
            the completion logits and its product with them (two ``[b, L, V]``).
        hidden_states: ``output.hidden_states`` (``output_hidden_states=True``): the
            residual stream's layer inputs ``[b, S, H]`` that autograd does not save (the
            embedding output and every block's output but the last, which the final norm's
            output replaces), referenced by ``output`` as the logits are.

    """

    logits: int
    loss_fwd: int
    loss_bwd: int
    head_bwd: int
    entropy: int
    hidden_states: int = 0


def ppo_head(ro: Rollout, *, hidden: int, vocab: int, compute: int, layers: int) -> PPOHead:
    """Return the PPO policy's full-vocabulary logits and loss buffers (no fused head).

    ``output, vpred_temp = forward(model, mb_query_responses, pad)``; ``logits =
    output.logits[:, context_length - 1 : -1]``; ``logits /= temperature`` (in place on the
    view); ``selective_log_softmax(logits, mb_responses)``, which for 16-bit logits runs
    ``log_softmax`` row by row (each ``[L, V]`` output saved for backward). Backward: the
    rows' gradients and their stack (``UnbindBackward``), then the slice's zero-filled
    ``[b, S, V]`` gradient and the in-place division's ``CopySlices`` clone of it, then the
    LM head's input gradient. ``output`` is deleted only after the mini-batch loop, so the
    logits stay alive through the optimizer step and the no-grad statistics after it
    (``prob_dist = softmax(logits)``, ``torch.sum(prob_dist * logits, -1)``). fp32 logits
    take TRL's gather/``logsumexp`` path instead (not traced; the same buffers are assumed).

    ``forward`` passes ``output_hidden_states=True``: the policy's output also keeps the
    residual stream's ``layers`` hidden states that no backward needs (the value model's
    tuple is dropped inside ``PolicyAndValueWrapper.forward``).

    Source: trl 1.12.0 ``trl/experimental/ppo/ppo_trainer.py`` ``PPOTrainer.train`` (the
    micro-batch loop), ``forward``, ``PolicyAndValueWrapper.forward``;
    ``trl/trainer/utils.py`` ``selective_log_softmax``; transformers 5.24
    ``utils/output_capturing.py`` (the first layer's input, then each layer's output, the
    last replaced by the final norm's output); traced by ``validation/trl_ppo_trace.py``.
    """
    b, S, L = ro.completions, ro.seq_len, ro.completion
    bsv = block(b * S * vocab * compute)
    blv = block(b * L * vocab * compute)
    return PPOHead(
        logits=bsv,
        loss_fwd=b * block(L * vocab * compute),
        loss_bwd=2 * bsv + 2 * blv,
        head_bwd=bsv + block(b * S * hidden * compute),
        entropy=2 * blv,
        hidden_states=layers * block(b * S * hidden * compute),
    )


def ppo_scores_bytes(ro: Rollout, vocab: int) -> tuple[int, int]:
    """Return PPO's generation scores: (kept per decode step, the stacked ``[b, L, V]``).

    ``generate(..., return_dict_in_generate=True, output_scores=True)`` keeps every step's
    processed fp32 scores ``[b, V]``; TRL's ``generate`` stacks them (``torch.stack(
    output.scores, 1)``) and ``batch_generation`` pads the chunks' stacks into one more
    ``[b, L, V]`` fp32 tensor, the ``logitss`` that ``train`` keeps until the next rollout
    replaces it.

    Source: trl 1.12.0 ``trl/experimental/ppo/ppo_trainer.py`` ``generate``,
    ``batch_generation``, ``PPOTrainer.train``.
    """
    b, L = ro.generation_batch, ro.completion
    return block(b * vocab * 4), block(b * L * vocab * 4)


def ppo_logprob_bytes(
    spec: ModelSpec, ro: Rollout, *, compute: int, attn: Attention, chunk: int
) -> int:
    """Peak of PPO's no-grad rollout scoring above the weights and the rollout buffer.

    Per chunk of ``local_rollout_forward_batch_size`` rows: the reference forward (the copy,
    or the policy with its adapter disabled) with ``output_hidden_states=True`` keeps every
    layer's hidden state ``[c, S, H]`` (and, ``use_cache`` left on, every layer's K and V);
    its logits ``[c, S, V]`` in the weights' dtype, then ``selective_log_softmax`` row by row
    (the new row's ``[L, V]`` ``log_softmax`` is computed while the previous row's is still
    referenced: two rows). The value and reward models' ``get_reward`` passes
    (``use_cache=False``) hold the same hidden states without logits (smaller).

    Source: trl 1.12.0 ``trl/experimental/ppo/ppo_trainer.py`` ``PPOTrainer.train`` (the
    rollout loop), ``forward``; ``trl/experimental/utils.py`` ``get_reward``.
    """
    c = min(ro.completions, chunk)
    S, L, H, V = ro.seq_len, ro.completion, spec.hidden_size, spec.vocab_size
    nl = spec.num_hidden_layers
    hs = block(c * S * H * compute)
    # ``forward`` leaves ``use_cache`` at the config's default: the output also holds a
    # DynamicCache of every layer's K and V
    kv = 2 * nl * block(c * S * spec.num_key_value_heads * spec.head_dim * compute)
    layer = nl * hs + kv + _layer_temporaries(spec, c * S, c, S, compute, attn)
    head = (nl + 1) * hs + kv + block(c * S * V * compute) + 2 * block(L * V * compute)
    return max(layer, head)


def ppo_rollout_buffer_bytes(ro: Rollout, vocab: int) -> int:
    """Return what one PPO rollout keeps until the next: the scores and ``[b, *]`` tensors.

    ``logitss`` ``[b, L, V]`` fp32 (``ppo_scores_bytes``), ``query_responses`` int64 ``[b,
    P + L]``, and the ``[b, L]`` tensors of the update (``logprobs``, ``ref_logprobs``,
    ``values``, ``padding_mask``, ``padding_mask_p1``, ``response_idxs``, ``rewards``,
    ``kl``, ``non_score_reward``, ``advantages``, ``returns``, ...; counted as ten fp32/int64
    blocks).

    Source: trl 1.12.0 ``trl/experimental/ppo/ppo_trainer.py`` ``PPOTrainer.train``.
    """
    b, L = ro.generation_batch, ro.completion
    _, stacked = ppo_scores_bytes(ro, vocab)
    return stacked + block(b * ro.seq_len * 8) + 10 * block(b * L * 8)
