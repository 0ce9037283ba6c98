"""The inference timeline the engine records: ``generate`` (hf) or vLLM's start-up (vllm).

``engine._inference_walk`` calls ``inference_events``; ``engine._estimate`` calls
``serving_for`` for the report's ``serving`` object. The formulas live in
``formulas/inference.py`` and ``serving.py``; this module reads the resolved specs and checks
the request against the model (context length).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vramcalc.enums import Phase, Quant, ServeEngine
from vramcalc.errors import InvalidConfigError
from vramcalc.formulas.counts import ParamGroup
from vramcalc.formulas.inference import (
    cache_windows,
    compute_bytes,
    generate_walk,
    kv_dtype_bytes,
    kv_heads_per_rank,
    weights,
)
from vramcalc.formulas.params import ParamPlan, block
from vramcalc.report import ServingReport
from vramcalc.specs import InferenceSpec, ModelSpec

if TYPE_CHECKING:
    from vramcalc.engine import Resolved

__all__ = ["inference_events", "serving_for"]

Event = tuple[Phase, str, dict[str, int]]


def _inference(res: Resolved) -> InferenceSpec:
    inf = res.training.inference
    if inf is None:  # an inference TrainingSpec built by hand: the old seq_len meaning
        inf = InferenceSpec(prompt_len=res.training.seq_len)
    return inf


def _check_length(spec: ModelSpec, inf: InferenceSpec) -> None:
    limit = spec.max_position_embeddings
    total = inf.prompt_len + inf.new_tokens
    if limit and inf.engine == ServeEngine.HF and total > limit:
        raise InvalidConfigError(
            f"--prompt-len {inf.prompt_len} + --new-tokens {inf.new_tokens} = {total} exceeds "
            f"{spec.name}'s max_position_embeddings ({limit})"
        )


def _comps(rows: dict[str, int]) -> dict[str, int]:
    out = {"params": 0, "activations": 0, "gradients": 0, "optimizer": 0}
    for k, v in rows.items():
        out[k.split("/", 1)[0]] += v
    return out


def _dequant_bytes(inventory: tuple[ParamGroup, ...], quant: Quant | None, cb: int) -> int:
    """Return the largest bitsandbytes 4-bit weight dequantized to the compute dtype (prefill)."""
    if quant not in (Quant.NF4, Quant.FP4):
        return 0
    sizes = [g.weight_numel for g in inventory if g.kind == "linear" and not g.expert]
    return block(max(sizes, default=0) * cb)


def inference_events(
    res: Resolved, rank: ModelSpec, inventory: tuple[ParamGroup, ...], plan: ParamPlan
) -> tuple[list[Event], dict[str, int], list[str]]:
    """Events (phase, name, components), detail rows at the peak, and notes."""
    inf = _inference(res)
    tr = res.training
    _check_length(res.model, inf)
    wb, wrows = weights(inventory, tr.param_dtype, tr.quant, inf.weights)
    cb = compute_bytes(tr.param_dtype, inf.weights)
    notes: list[str] = []
    if inf.engine == ServeEngine.VLLM:
        serving = serving_for(res, rank, inventory)
        assert serving is not None
        rows_list: list[tuple[Phase, str, dict[str, int]]] = [
            (Phase.LOAD, "model loaded", dict(wrows)),
            (
                Phase.PREFILL,
                f"profile run ({serving.max_num_batched_tokens} tokens)",
                {**wrows, "activations/profile_peak": serving.activation_peak_bytes},
            ),
            (
                Phase.DECODE,
                f"serving: {serving.kv_blocks} KV blocks pre-allocated",
                {
                    **wrows,
                    "activations/kv_cache": serving.kv_cache_bytes,
                    "activations/cuda_graphs": serving.cuda_graph_bytes,
                },
            ),
        ]
        notes.append(
            "vLLM pre-allocates its whole budget (--gpu-memory-utilization x GPU memory): the "
            "peak is the KV-cache pool, not the load; see the serving table"
        )
        if serving.kv_layout:
            notes.append(
                f"vLLM KV cache: {serving.kv_layout}; a sliding-window group keeps only its "
                "window's blocks per sequence (not traced: vLLM needs a GPU)"
            )
    else:
        walk = generate_walk(
            rank,
            weight_bytes=wb,
            weight_rows=wrows,
            batch=tr.batch_size,
            prompt_len=inf.prompt_len,
            new_tokens=inf.new_tokens,
            compute=cb,
            kv_bytes=kv_dtype_bytes(inf.kv_dtype, cb),
            attn=tr.attn,
            kv_heads=kv_heads_per_rank(res.model.num_key_value_heads, res.parallel.tp),
            dequant_bytes=_dequant_bytes(inventory, tr.quant, cb),
        )
        rows_list = [(e.phase, e.event, e.rows) for e in walk.events]
        notes.append(
            "transformers generate with the default DynamicCache and logits_to_keep=1 "
            "(last-position logits only); a static cache allocates prompt + new tokens up front"
        )
        windows = sorted({w for w in cache_windows(rank) if w > 0})
        if windows:
            n = sum(1 for w in cache_windows(rank) if w > 0)
            notes.append(
                f"{n} of {rank.num_hidden_layers} layers keep a window of "
                f"{'/'.join(str(w) for w in windows)} tokens in the DynamicCache from the first "
                "decode step on; the prefill still holds the whole prompt in every layer"
            )
    events = [(p, name, _comps(rows)) for p, name, rows in rows_list]
    top = max(range(len(rows_list)), key=lambda i: sum(rows_list[i][2].values()))
    details = {k: 0 for k in plan.details}  # the training plan's rows do not apply
    details["params/inputs"] = 0
    details.update(rows_list[top][2])
    return events, details, notes


def serving_for(
    res: Resolved, rank: ModelSpec, inventory: tuple[ParamGroup, ...]
) -> ServingReport | None:
    """Return the ``serving`` object of a ``--engine vllm`` report (None otherwise)."""
    inf = res.training.inference
    if inf is None or inf.engine != ServeEngine.VLLM:
        return None
    gpu = res.hardware.gpu
    if gpu is None:
        raise InvalidConfigError("--engine vllm needs --gpu NAME (see `vramcalc gpus`)")
    from vramcalc.serving import serving_report

    tr = res.training
    wb, _ = weights(inventory, tr.param_dtype, tr.quant, inf.weights)
    return serving_report(
        res.model,
        rank,
        inf,
        gpu=gpu,
        param_dtype=tr.param_dtype,
        weights_bytes=wb,
        tp=res.parallel.tp,
    )
