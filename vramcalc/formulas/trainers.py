"""Preference and RL trainers (``--trainer``): which models are on the GPU, how the batch is shaped.

What TRL 1.16.0 holds on the GPU during one step, per trainer (``data/trainers.json`` has the
code path of each row):

- **models**: the trained ``policy`` always; a frozen ``reference`` for DPO and KTO (and GRPO/
  RLOO when ``beta > 0``, PPO always); PPO's ``reward`` and ``value`` models. How the reference
  is held (``reference_kind``):

  * ``copy`` -- a second model: full fine-tuning without ``ref_model`` loads one from the same
    checkpoint in the policy's dtype (``create_model_from_path``, same quantization config),
    or the user passes one (``--ref-model copy``, a second copy under PEFT too);
  * ``adapter_disabled`` -- PEFT without ``ref_model``: the policy's own base under
    ``use_adapter(model, None)``, no extra bytes;
  * ``precomputed`` -- ``precompute_ref_log_probs``: log-probs read from the batch, no model;
  * ``none`` -- ORPO, SimPO, CPO and reward modelling have no reference.

  Under a layout the reference is prepared as TRL does (``trl/models/utils.py``):
  ``prepare_deepspeed`` keeps ZeRO-3 (the reference is sharded over the data-parallel ranks)
  and turns stages 1-2 into stage 0 (replicated); ``prepare_fsdp`` wraps it in FSDP like the
  policy (sharded); DDP replicates it.
- **batch**: ``DataCollatorForPreference`` stacks chosen and rejected rows into one batch of
  ``2 B`` rows (DPO, ORPO, CPO/SimPO, reward modelling) padded to the longest; ``-s`` is TRL's
  ``max_length`` (the padded length). KTO runs ``B`` rows plus ``B`` mismatched "KL" rows in a
  separate no-grad forward. ``padding_free`` falls back to padding in TRL 1.16's DPO
  (``dpo_trainer.py`` lines 732-739), so it changes nothing.
- **head** (``head_kind``): ``fused_logprob`` -- DPO/KTO call the model with
  ``fused_lm_head=True`` (``trl/trainer/utils.py`` ``add_fused_lm_head``), which copies the
  shifted hidden states and folds ``[4096, 32768]`` logit tiles into per-token log-probs
  (``trl/kernels/chunked_logprob.py``): no ``(N, V)`` logits; ``concat_logits`` -- ORPO/CPO
  compute full logits and ``selective_log_softmax``; ``score`` -- reward models project to one
  number per token (``AutoModelForSequenceClassification``, ``num_labels=1``); ``logits`` -- SFT.

Report rows: a non-SFT trainer names the model each byte belongs to -- ``params/policy``,
``params/reference`` (a copy; sharded or replicated as above), and the activations of the
reference's no-grad forward (``activations/reference_forward``) and of the log-prob kernel
(``activations/logprob_buffers``).

How the RL helper (GRPO/PPO/RLOO) plugs in: ``trainer_plan`` already returns, for those
trainers, the models from ``data/trainers.json`` (set ``reference`` to ``beta`` rows: a
reference only when ``beta > 0``). Generation is a list of ``TrainerEvent`` in
``TrainerWalk.before_forward`` with ``Phase.GENERATION`` (e.g. ``"generation (KV cache)"``),
whose ``rows`` carry ``activations/generation_kv_cache`` and whose ``bytes`` is what is live
above the resident models; the reward and value models are ``TrainerWalk.resident`` rows
``params/reward`` and ``params/value``. ``engine._walk`` adds ``resident`` to every event's
``params`` and inserts ``before_forward`` events before the forward and ``after_forward`` events
(the reference forward) between the policy's forward and its loss.

Source: trl 1.16.0 (paths above and in ``data/trainers.json``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from vramcalc import catalog
from vramcalc.enums import Phase, Trainer
from vramcalc.formulas.params import block
from vramcalc.specs import PeftSpec, TrainerSpec

__all__ = [
    "LOGPROB_TOKEN_CHUNK",
    "LOGPROB_VOCAB_CHUNK",
    "TrainerEvent",
    "TrainerPlan",
    "TrainerWalk",
    "fused_logprob_buffers",
    "trainer_plan",
    "trainer_row",
]

# trl 1.16.0 trl/kernels/chunked_logprob.py TOKEN_CHUNK_SIZE and trl/trainer/utils.py
# _CHUNKED_LOGPROB_CHUNK_SIZE (structural tile shape of the kernel, not a tunable)
LOGPROB_TOKEN_CHUNK = 4096
LOGPROB_VOCAB_CHUNK = 32768

ReferenceKind = Literal["none", "copy", "adapter_disabled", "precomputed"]


def trainer_row(name: Trainer | str) -> dict[str, Any]:
    """Return the ``data/trainers.json`` row of a trainer."""
    rows: dict[str, dict[str, Any]] = catalog.load("trainers")["trainers"]
    return rows[str(name)]


@dataclass(frozen=True)
class TrainerPlan:
    """What a trainer's step holds, resolved for one request.

    Attributes:
        name: the trainer.
        forward_rows: rows of the policy's forward with gradients (``2 B`` for paired
            trainers, ``B`` otherwise).
        reference_kind: how the reference is held (module docstring).
        reference_rows: rows of the reference's no-grad forward (0 without one).
        kl_rows: rows of KTO's no-grad KL forward of the policy (0 otherwise).
        head_kind: ``logits``, ``fused_logprob``, ``concat_logits``, ``score`` or
            ``ppo_logits`` (PPO's full logits, ``formulas/rl.ppo_head``).
        generation: the trainer generates rollouts (GRPO/RLOO/PPO; the RL helper's part).
        nll: ORPO/CPO add a cross-entropy term over the chosen rows' full logits.
        notes: what the estimate assumes for this trainer.
        source: the code path (``data/trainers.json``).

    """

    name: Trainer
    forward_rows: int
    reference_kind: ReferenceKind
    reference_rows: int
    kl_rows: int
    head_kind: str
    generation: bool
    nll: bool = False
    notes: tuple[str, ...] = ()
    source: str = ""

    @property
    def loss_event(self) -> str:
        """Name of the walk's loss event for this trainer's head."""
        return {
            "fused_logprob": "policy log-probs (chunked LM-head kernel)",
            "score": "score head, pairwise loss",
            "concat_logits": "loss (logits of chosen + rejected, log-softmax)",
            "ppo_logits": "PPO loss (policy logits, per-row log-softmax; value head)",
        }.get(self.head_kind, "loss (fp32 logits, log-softmax)")

    @property
    def has_reference_copy(self) -> bool:
        """A second model's weights are resident."""
        return self.reference_kind == "copy"


def trainer_plan(trainer: TrainerSpec, peft: PeftSpec | None, batch_size: int) -> TrainerPlan:
    """Resolve which models a trainer holds and how its batch is shaped.

    ``batch_size`` is TRL's ``per_device_train_batch_size`` (preference pairs, KTO examples,
    or completions for GRPO/RLOO).

    Source: ``data/trainers.json`` rows (TRL 1.16.0 code paths); reference loading in
    ``DPOTrainer.__init__`` / ``KTOTrainer.__init__`` (``if ref_model is None: if
    is_peft_model(model) or precompute_ref_log_probs: self.ref_model = None``).
    """
    row = trainer_row(trainer.name)
    rows = batch_size * int(row["sequences_per_example"])
    notes: list[str] = []
    ref = str(row["reference"])
    kind: ReferenceKind
    if ref == "none" or (ref == "beta" and not (trainer.beta or 0.0) > 0):
        kind = "none"
    elif trainer.precompute_ref_log_probs:
        kind = "precomputed"
    elif trainer.ref_model == "copy" or peft is None:
        kind = "copy"
    else:
        kind = "adapter_disabled"
    if trainer.padding_free and trainer.name == Trainer.DPO:
        notes.append(
            "padding_free: TRL 1.16's DPOTrainer warns and falls back to padding "
            "(dpo_trainer.py), so the batch is padded to -s"
        )
    if trainer.padded_batch:
        notes.append(
            "padded batch (TRL pads every row to the longest): with sdpa the attention mask "
            "reaches every layer -- K/V heads repeated and a rows x S x S bias saved per "
            "layer (--no-padded-batch if every row is -s tokens)"
        )
    if kind == "adapter_disabled":
        notes.append("reference = the PEFT base with the adapters disabled (no second copy)")
    elif kind == "precomputed":
        notes.append(
            "reference log-probs precomputed before training (one no-grad pass over the "
            "dataset); no reference model during the step"
        )
    elif kind == "copy":
        notes.append("reference = a second copy of the model (frozen, no gradients)")
    kl_rows = batch_size if row["kl_forward"] else 0
    return TrainerPlan(
        name=trainer.name,
        forward_rows=rows,
        reference_kind=kind,
        reference_rows=rows if kind in ("copy", "adapter_disabled") else 0,
        kl_rows=kl_rows,
        head_kind=str(row["head"]),
        generation=bool(row["generation"]),
        nll=bool(row.get("nll", False)),
        notes=tuple(notes),
        source=str(row["source"]),
    )


@dataclass(frozen=True)
class TrainerEvent:
    """One event a trainer adds to the step walk.

    ``bytes`` is what the event holds above the policy's own live state at that point
    (transient activations, a KV cache); ``rows`` splits it into ``activations/...`` keys.
    """

    phase: Phase
    event: str
    bytes: int
    rows: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainerWalk:
    """What a trainer adds to the SFT walk of the policy (see the module docstring)."""

    plan: TrainerPlan
    resident: dict[str, int] = field(default_factory=dict)
    """``params/<model>`` rows resident on the rank for the whole step (beyond the policy)."""
    before_forward: tuple[TrainerEvent, ...] = ()
    after_forward: tuple[TrainerEvent, ...] = ()
    after_step: tuple[TrainerEvent, ...] = ()
    """Events after ``zero_grad`` while ``after_loss`` is still alive (PPO's statistics)."""
    after_loss: int = 0
    """Bytes alive from the loss to the end of the optimizer step (PPO: the step's logits)."""
    extra_states: int = 0
    """Optimizer states of a second trained model (PPO: the value model's AdamW states)."""
    extra_grads: int = 0
    """Gradients of a second trained model at the optimizer step (PPO: the value model's)."""

    @property
    def resident_bytes(self) -> int:
        """Sum of the resident rows."""
        return sum(self.resident.values())


def fused_logprob_buffers(
    tokens: int, hidden: int, vocab: int, cb: int, *, n_outputs: int
) -> tuple[int, int]:
    """Transient bytes of TRL's chunked log-prob kernel: (forward, backward), above its inputs.

    Forward: seven fp32 per-token running statistics and one ``[min(N, 4096), 32768]`` tile
    in the compute dtype (``mm_buf``, allocated at the full chunk width), then the per-token
    outputs; on a GPU a Triton kernel folds each tile into the statistics in place.
    Backward: the fp32 ``grad_hidden`` ``[N, H]`` and the tile (the Triton kernel turns it into
    the logits' gradient in place).

    Source: trl 1.16.0 ``trl/kernels/chunked_logprob.py`` (``ChunkedLogProbFunction.forward``
    / ``.backward``, ``_forward_kernel``, ``_backward_kernel``).
    """
    # mm_buf is [min(N, 4096), chunk_size] whatever the vocabulary (a small vocabulary uses
    # only part of it)
    tile = block(min(tokens, LOGPROB_TOKEN_CHUNK) * LOGPROB_VOCAB_CHUNK * cb)
    stats = 7 * block(tokens * 4)
    fwd = stats + tile + n_outputs * block(tokens * 4)
    bwd = block(tokens * hidden * 4) + tile
    return fwd, bwd


def trainer_walk(
    plan: TrainerPlan,
    *,
    spec: Any,
    tokens_per_row: int,
    compute_bytes: int,
    hidden_bytes: int,
    reference_bytes: int,
    layer_temporaries: int,
) -> TrainerWalk:
    """Build what a DPO-family, KTO or reward trainer adds to the policy's walk.

    Args:
        plan: the resolved trainer plan.
        spec: the rank's ``ModelSpec``.
        tokens_per_row: padded sequence length (TRL ``max_length``).
        compute_bytes: bytes per element of the forward's compute dtype.
        hidden_bytes: bytes per element of the final norm's output (the head's input).
        reference_bytes: the reference copy's bytes on this rank (0 unless ``copy``).
        layer_temporaries: the largest no-grad temporaries of one block over the reference's
            rows (``formulas/inference._layer_temporaries``).

    The reference's no-grad forward holds one block's temporaries at a time, then its last
    hidden state, the head's shifted copy and the kernel's buffers; its log-probs stay until
    the loss. KTO's KL forward of the policy (no grad) runs before the policy's forward.

    Source: trl 1.16.0 ``trl/trainer/dpo_trainer.py`` ``_compute_loss``,
    ``trl/trainer/kto_trainer.py`` ``_compute_loss`` / ``_compute_kl_logps``,
    ``trl/trainer/utils.py`` ``add_fused_lm_head``.

    """
    resident: dict[str, int] = {}
    if plan.reference_kind == "copy":
        resident["params/reference"] = reference_bytes
    H, V = spec.hidden_size, spec.vocab_size

    def no_grad_forward(rows: int) -> tuple[int, dict[str, int]]:
        T = rows * tokens_per_row
        N = rows * (tokens_per_row - 1)
        last_hidden = block(T * H * hidden_bytes)
        head_in = block(N * H * hidden_bytes)
        k_fwd, _ = fused_logprob_buffers(N, H, V, compute_bytes, n_outputs=1)
        head = last_hidden + head_in + k_fwd + block(N * 8)
        return max(layer_temporaries, head), {
            "activations/reference_forward": max(layer_temporaries, head)
        }

    before: list[TrainerEvent] = []
    after: list[TrainerEvent] = []
    if plan.kl_rows:
        b, rows = no_grad_forward(plan.kl_rows)
        before.append(
            TrainerEvent(
                Phase.FORWARD,
                "KL completions forward (policy, no grad)",
                b,
                {"activations/kl_forward": b},
            )
        )
    if plan.reference_rows:
        b, rows = no_grad_forward(plan.reference_rows)
        logps = block(plan.reference_rows * (tokens_per_row - 1) * 4)
        who = "reference" if plan.reference_kind == "copy" else "reference (adapters disabled)"
        after.append(TrainerEvent(Phase.FORWARD, f"{who} forward (no grad)", b + logps, rows))
    return TrainerWalk(
        plan=plan, resident=resident, before_forward=tuple(before), after_forward=tuple(after)
    )


def apply_head(
    prof: Any,
    plan: TrainerPlan,
    *,
    spec: Any,
    rows: int,
    seq_len: int,
    compute_bytes: int,
    hidden_bytes: int,
    param_bytes: int,
    head_trainable: bool,
) -> None:
    """Replace the SFT head and loss terms of an ``ActivationProfile`` by the trainer's.

    ``fused_logprob`` (DPO, KTO): the head saves the shifted hidden-state copy ``[N, H]``
    (``hidden_states[:, :-1].reshape(-1, H)``; on a GPU ``hidden_states[mask]``), the int64
    targets and two fp32 per-token statistics (``log_z`` and the entropy); no logits. The
    per-token outputs (log-probs, entropy, mean logit; 4 bytes each, ``is_top1`` 1 byte) are
    re-laid to ``[rows, S - 1]`` by ``masked_fill``/``masked_scatter`` and live until the loss.
    Backward: the kernel's fp32 ``grad_hidden`` and (head trained) fp32 ``grad_weight``, cast
    back to the parameters' dtype at the end.

    ``score`` (reward models): the bias-free ``score`` Linear(H, 1) saves its input
    ``[rows, S, H]`` (always trained: full fine-tuning, or ``modules_to_save=["score"]``).

    Source: trl 1.16.0 ``trl/trainer/utils.py`` ``add_fused_lm_head``,
    ``trl/kernels/chunked_logprob.py``; transformers 5.24
    ``models/llama/modeling_llama.py`` (``LlamaForSequenceClassification``).
    """
    H, V = spec.hidden_size, spec.vocab_size
    S = seq_len
    if plan.head_kind == "fused_logprob":
        N = rows * (S - 1)
        # the head's input is no longer saved by an nn.Linear (full fine-tuning saved it)
        if head_trainable:
            head_in = block(rows * S * H * hidden_bytes)
            prof.head_saved -= head_in
            lin = prof.details.get("activations/linear_inputs", 0) - head_in
            prof.details["activations/linear_inputs"] = max(lin, 0)
        # hidden_states[mask] (N x H), its two int64 index tensors (saved by index's
        # backward), the int64 targets labels[mask], log_z and entropy (fp32)
        saved = block(N * H * hidden_bytes) + 3 * block(N * 8) + 2 * block(N * 4)
        k_fwd, k_bwd = fused_logprob_buffers(N, H, V, compute_bytes, n_outputs=4)
        outputs = 3 * block(N * 4) + block(N)
        prof.amp_weight_copies -= prof.amp_head_copy
        prof.amp_head_copy = 0
        prof.details.pop("activations/amp_weight_copies", None)
        if prof.amp_weight_copies:
            prof.details["activations/amp_weight_copies"] = prof.amp_weight_copies
        prof.details.pop("activations/logits", None)
        prof.head_saved += saved
        prof.logits_fwd = k_fwd
        prof.loss_saved = outputs
        prof.loss_bwd_extra = 0
        # fp32 accumulators cast back at the end (``.to`` is a no-op for fp32): the weight's
        # fp32 gradient (its cast is the gradient the walk already counts) and grad_hidden's
        wgrad = block(V * H * 4) if head_trainable and param_bytes != 4 else 0
        hcast = block(N * H * hidden_bytes) if hidden_bytes != 4 else 0
        prof.head_bwd_extra = k_bwd + hcast + wgrad
        prof.details["activations/logprob_buffers"] = saved + outputs
    elif plan.head_kind == "concat_logits":
        # ORPO/CPO/SimPO concatenated_forward: full logits of the 2B rows (kept: the
        # log-prob path saves views of them), cross-entropy over the chosen half of the
        # shifted logits (a contiguous copy, then log_softmax saved), get_batch_logps over all
        # rows through selective_log_softmax: gather + a per-row logsumexp loop (fp32 logits),
        # or a per-row log_softmax whose outputs are saved (16-bit logits)
        T, Ts = rows * S, rows * (S - 1)
        # SimPO (cpo_alpha = 0) skips the NLL term (trl/experimental/cpo/cpo_trainer.py)
        half = (rows // 2) * (S - 1) if plan.nll else 0
        logits = block(T * V * compute_bytes)
        ce_saved = block(half * V * compute_bytes) if half else 0
        rows_saved = 0 if compute_bytes == 4 else block(Ts * V * compute_bytes)
        prof.head_saved += logits
        prof.logits_fwd = ce_saved  # the contiguous chosen half
        prof.loss_saved = ce_saved + rows_saved
        # backward: the stacked per-row logsumexp gradients, gather's zeros and its
        # scatter_add (each rows x (S-1) x V), then the logits' gradient into the LM head
        prof.loss_bwd_extra = 3 * block(Ts * V * compute_bytes)
        prof.details.pop("activations/logits", None)
        prof.details["activations/logits"] = logits + ce_saved + rows_saved
    elif plan.head_kind == "score":
        T = rows * S
        saved = block(T * H * compute_bytes)
        prof.head_saved += saved
        prof.logits_fwd = block(T * 4)
        prof.loss_saved = 0
        prof.loss_bwd_extra = 0
        prof.head_bwd_extra = block(T * H * compute_bytes)
        prof.details["activations/score_head"] = saved
