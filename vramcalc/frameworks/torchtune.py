"""The torchtune profile (data: ``data/frameworks.json`` row ``torchtune``).

What torchtune 0.6.1's single-device recipes (``recipes/full_finetune_single_device.py``,
``recipes/lora_finetune_single_device.py``) run differently from transformers + PEFT, as the
fake-CUDA trace of those recipes shows (``validation/torchtune_trace.py``, grid
``validation/torchtune_grid.py``, lines in ``validation/measurements/trace-frameworks.jsonl``):

- **chunked cross-entropy** (``modules/loss/ce_chunked_output_loss.py``
  ``CEWithChunkedOutputLoss``, the recipes' default, 8 chunks): the model returns the logits
  as ``num_output_chunks`` chunks in the compute dtype (``TransformerDecoder`` with
  ``set_num_output_chunks``); the loss upcasts one chunk at a time (``logits.float()``) and
  ``cross_entropy`` saves that chunk's fp32 ``log_softmax``; ``_loss_step`` then drops the
  logits (``del logits``). At the loss: the 16-bit logits, every chunk's fp32 log-softmax,
  and one chunk's fp32 copy. In backward one chunk's fp32 gradients at a time.
- **compiled chunked cross-entropy** (``compile: True``; ``training/_compile.py``
  ``compile_loss`` compiles ``CEWithChunkedOutputLoss.compute_cross_entropy`` alone): Inductor
  fuses the upcast, ``log_softmax`` and ``nll_loss``; the partitioner saves each chunk's
  16-bit logits and two fp32 per-row statistics (max, log-sum-exp), not the fp32
  log-softmax, and no kernel materialises an fp32 chunk (``validation/compile_ce_probe.py``,
  CPU Inductor). The 16-bit chunks outlive ``del logits`` as the loss graphs' saved tensors;
  in backward one chunk's 16-bit gradient at a time. The compiled layers
  (``compile_model``) are taken as eager (an upper bound, not traced).
- **full loss** (``torch.nn.CrossEntropyLoss`` in the config): the model returns
  ``self.output(h).float()`` (``modules/transformer.py``) and the loss runs on fp32 logits:
  the same terms as transformers' causal-LM loss.
- **GQA** (``modules/attention.py`` ``MultiHeadAttention.forward``): keys and values are
  expanded to the query heads (``expand(...).flatten(1, 2)``, a copy) before SDPA, so the
  saved keys and values are query-sized.
- **activation offloading** (``training/_activation_offloading.py`` ``OffloadActivations``;
  the recipes allow it only with activation checkpointing): saved tensors of 1 KiB or more
  go to pinned host memory in forward; the last ``max_fwd_stash_size`` (5) stay on the GPU
  until the next ones are packed. With checkpointing the saved tensors are the layer inputs
  and the final norm's, so at the end of forward the layer inputs are on the host except
  those among the last five packed tensors. Backward brings each back when its layer runs.
- **optimizer in backward** (``training/memory.py`` ``register_optim_in_bwd_hooks``,
  full-finetune recipe only): one optimizer per parameter, stepped and zeroed in the
  parameter's post-accumulate-grad hook, so no gradient outlives its own step.

The peak counter is reset after model setup (``training.get_memory_stats(reset_stats=True)``
in ``_setup_model``), so loading (and QLoRA's quantization of 16-bit weights) is outside the
logged peak. LoRA adapters are in the model dtype (``adapter_dtype: base`` in the data row).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from vramcalc.formulas.params import block, dtype_bytes
from vramcalc.frameworks import FrameworkProfile

if TYPE_CHECKING:
    from vramcalc.formulas.activations import ActivationProfile
    from vramcalc.formulas.optimizer import OptimizerPlan
    from vramcalc.formulas.params import ParamPlan
    from vramcalc.specs import EstimateRequest, ModelSpec, RecipeSpec, TrainingSpec

__all__ = ["PROFILE", "TorchtuneProfile"]


# model_type -> (RoPE cache width in head_dim x max_seq_len fp32 units, one cache per layer
# under LoRA); source in TorchtuneProfile.adjust
_ROPE_CACHE: dict[str, tuple[int, bool]] = {"qwen2": (2, True)}


class TorchtuneProfile(FrameworkProfile):
    """torchtune's recipes: chunked CE, expanded GQA k/v, offloading, optimizer in backward."""

    def problems(self, req: EstimateRequest) -> list[str]:
        """Add the recipes' own refusals to the data row's feature rules.

        Source: torchtune 0.6.1 ``recipes/full_finetune_single_device.py`` ``__init__``
        (offloading needs checkpointing; optimizer_in_bwd refuses gradient accumulation) and
        ``recipes/lora_finetune_single_device.py`` (no optimizer_in_bwd option).
        """
        out = super().problems(req)
        if req.task.value != "train":
            return out
        if req.activation_offload and not req.grad_ckpt:
            out.append(
                "--activation-offload with --framework torchtune needs --grad-ckpt "
                "(enable_activation_offloading requires enable_activation_checkpointing)"
            )
        if req.optimizer_in_backward:
            if req.grad_accum > 1:
                out.append(
                    f"--optimizer-in-backward with --grad-accum {req.grad_accum}: torchtune's "
                    "recipe refuses gradient accumulation with optimizer_in_bwd; accepted: "
                    "--grad-accum 1"
                )
            peft = [n for n in ("lora", "qlora") if getattr(req, n) is not None]
            if peft:
                out.append(
                    f"--optimizer-in-backward is a torchtune full-finetune option; its "
                    f"{peft[0]} recipe has none (drop --optimizer-in-backward)"
                )
        return out

    def notes(self, req: EstimateRequest, recipe: RecipeSpec) -> list[str]:
        """Say what of ``--compile`` is modelled: the compiled chunked loss, not the layers."""
        out = super().notes(req, recipe)
        if recipe.compile and recipe.loss == "chunked" and req.task.value == "train":
            out = [x for x in out if not x.startswith("--compile is an approximation")]
            out.append(
                "--compile: torchtune's compiled chunked cross-entropy is modelled (each "
                "chunk's 16-bit logits and per-row statistics saved, no fp32 log-softmax; "
                "validation/compile_ce_probe.py); the compiled layers are taken to save what "
                "eager mode saves (Inductor's recomputation usually saves less: an upper "
                "bound); not traced"
            )
        return out

    def adjust(
        self,
        spec: ModelSpec,
        tr: TrainingSpec,
        plan: ParamPlan,
        prof: ActivationProfile,
        opt: OptimizerPlan,
    ) -> tuple[ParamPlan, ActivationProfile, OptimizerPlan]:
        """Apply torchtune's RoPE cache, norms, loss, GQA, offloading, optimizer-in-backward."""
        recipe = tr.recipe
        T = tr.batch_size * tr.seq_len
        cb = 2 if tr.mixed_precision.value != "no" else dtype_bytes(tr.param_dtype)
        H, V = spec.hidden_size, spec.vocab_size
        details = dict(prof.details)
        # ------------------------------------------------------------ RoPE cache buffer
        # modules/position_embeddings.py and llama3_1/_position_embeddings.py: one fp32 cache
        # of max_seq_len x head_dim/2 x (cos, sin) plus theta, shared by all layers;
        # models/qwen2/_positional_embeddings.py: cat(cos, sin) of cat(freqs, freqs), twice
        # as wide, and lora_qwen2_self_attention builds one per layer
        width, per_layer_lora = _ROPE_CACHE.get(spec.model_type, (1, False))
        caches = spec.num_hidden_layers if per_layer_lora and plan.adapters else 1
        one = block((spec.max_position_embeddings or tr.seq_len) * spec.head_dim * 4 * width)
        rope = caches * (one + block(spec.head_dim // 2 * 4))
        plan = replace(
            plan,
            param_bytes=plan.param_bytes + rope,
            details={**plan.details, "params/rope_cache": rope},
        )
        layer_saved = list(prof.layer_saved)
        # ------------------------------------------------------------ GQA k/v expansion
        heads, kv = spec.num_attention_heads, spec.num_key_value_heads or spec.num_attention_heads
        if kv < heads and layer_saved:
            extra = 2 * block(T * (heads - kv) * spec.head_dim * cb)
            layer_saved = [x + extra for x in layer_saved]
            details["activations/attention"] = details.get(
                "activations/attention", 0
            ) + extra * len(prof.layer_saved)
        prof = replace(prof, layer_saved=layer_saved)
        # ------------------------------------------------------------ loss
        # the full loss: TransformerDecoder.forward returns self.output(h).float() and the
        # recipe's cross-entropy runs on the fp32 logits -- what transformers' loss does,
        # so the profile keeps the hf loss terms
        if spec.has_lm_head and recipe.loss == "chunked":
            n = max(1, recipe.loss_chunks)
            chunk = -(-T // n)
            # logits.float() of one chunk at a time (a no-op for fp32 logits)
            upcast = block(chunk * V * 4) if cb != 4 else 0
            # each chunk's output-projection backward makes its own V x H weight gradient,
            # summed into the accumulated one (three alive at the sum)
            head_trains = "head/lm_head" in plan.trainable_keys or (
                spec.tie_word_embeddings and "embed/tokens" in plan.trainable_keys
            )
            wgrad = block(V * H * cb) if head_trains else 0
            head_bwd = block(chunk * V * cb) + block(T * H * cb) + (3 if n > 1 else 1) * wgrad
            if recipe.compile:
                # compile=True: training/_compile.py compile_loss compiles only
                # CEWithChunkedOutputLoss.compute_cross_entropy (upcast + cross_entropy).
                # Inductor's partitioner (min_cut_rematerialization_partition) saves each
                # chunk's 16-bit logits and two fp32 per-row statistics (max, logsumexp)
                # instead of the fp32 log-softmax, and neither the forward nor the backward
                # kernel materialises an fp32 chunk; the chunks, saved by the loss graphs,
                # outlive _loss_step's `del logits` until each chunk's backward
                # (validation/compile_ce_probe.py records the saved tensors and buffers).
                rows = n * 2 * block(chunk * 4)
                kept = n * block(chunk * V * cb)
                prof = replace(
                    prof,
                    logits_fwd=0,
                    loss_saved=kept + rows,
                    loss_bwd_extra=block(chunk * V * cb),
                    head_bwd_extra=head_bwd,
                )
                details["activations/logits"] = kept + rows
            else:
                lsm = n * block(chunk * V * 4)
                prof = replace(
                    prof,
                    logits_fwd=n * block(chunk * V * cb) + upcast,
                    loss_saved=lsm,
                    loss_bwd_extra=2 * block(chunk * V * 4),
                    head_bwd_extra=head_bwd,
                )
                details["activations/logits"] = lsm
        prof = replace(prof, details={k: v for k, v in details.items() if v > 0})
        # ------------------------------------------------------------ optimizer in backward
        if recipe.optimizer_in_backward:
            opt = replace(opt, stores_grads=False, step_temp_bytes=0)
            if spec.tie_word_embeddings and "embed/tokens" in plan.trainable_keys:
                # a tied weight's AccumulateGrad runs once, after its last use (the
                # embedding): its summed gradient waits in autograd's input buffer through
                # every block's backward, and its hook steps it only then
                tied = block(V * H * cb)
                prof = replace(
                    prof,
                    layer_bwd_extra=[x + tied for x in prof.layer_bwd_extra],
                    head_bwd_extra=prof.head_bwd_extra + tied,
                )
        return plan, prof, opt


PROFILE = TorchtuneProfile.from_data("torchtune")
