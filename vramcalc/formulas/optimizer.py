"""Optimizer states and the temporaries of ``optimizer.step()``.

States are what the library allocates per trainable tensor on the first ``step()``
(``data/optimizers.json`` lists them per optimizer with the code path it was read from).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vramcalc import catalog
from vramcalc.errors import InvalidConfigError
from vramcalc.formulas.params import ParamPlan, block

__all__ = ["OptimizerPlan", "plan_optimizer"]


@dataclass
class OptimizerPlan:
    """Bytes the optimizer holds.

    Attributes:
        name: resolved optimizer name.
        state_bytes: states on the GPU as the torch allocator counts them.
        paged_bytes: states in CUDA unified memory (paged bitsandbytes optimizers): visible
            to NVML, invisible to ``memory_allocated``.
        step_temp_bytes: extra bytes alive during ``step()`` at its peak.
        details: ``optimizer/<state>`` -> bytes.
        stores_grads: False for fused-backward optimizers (LOMO) that never keep gradients.

    """

    name: str
    state_bytes: int = 0
    paged_bytes: int = 0
    step_temp_bytes: int = 0
    details: dict[str, int] = field(default_factory=dict)
    stores_grads: bool = True
    row: dict[str, Any] = field(default_factory=dict)


def _state_bytes(numel: int, param_b: int, st: dict[str, Any], eight: dict[str, Any] | None) -> int:
    """Bytes of one state tensor (and its quantization statistics) for one parameter."""
    bits = st.get("bits", "param")
    if eight is not None and bits in (4, 8):
        bs = int(eight.get("block_size", 256))
        small = numel < int(eight.get("min_numel", 4096))
        if small or (eight.get("requires_block_multiple") and numel % bs):
            return block(numel * 4)
        n_abs = -(-numel // bs)
        absmax_b = int(eight.get("absmax_bits", 32)) // 8
        qmap = (
            0 if eight.get("qmap_shared") else block(int(eight.get("qmap_bytes_per_state", 1024)))
        )
        return block(-(-numel * int(bits) // 8)) + block(n_abs * absmax_b) + qmap
    width = param_b if bits == "param" else int(bits) // 8
    return block(numel * width)


def plan_optimizer(name: str, plan: ParamPlan, *, impl: str | None = None) -> OptimizerPlan:
    """States and step temporaries of optimizer ``name`` over the trainable tensors of ``plan``.

    * States: per trainable tensor, each listed state in the parameter's dtype (``"param"``),
      fp32, or 8-bit blocks (bitsandbytes: ``block_size`` values share an fp32 absmax, a
      256-entry fp32 quantization map per state, tensors under ``min_numel`` elements keep
      fp32 states). Adafactor's factored second moment is a row and a column vector for
      matrices (full for vectors). Paged optimizers allocate in unified memory.
    * Temporaries: torch's default multi-tensor (``foreach``) Adam/AdamW builds one
      ``_foreach_sqrt`` list per param group (the HF Trainer makes a weight-decay and a
      no-decay group), so the step peaks at states + the larger group's bytes; ``fused`` has
      none; the single-tensor loop holds two temporaries of the largest tensor; Adafactor's
      update is a param-sized temporary of the largest tensor (plus its square).

    Source: ``data/optimizers.json`` (each row names its library code path);
    torch 2.13 ``torch/optim/adamw.py`` (``_multi_tensor_adamw``, ``_single_tensor_adamw``);
    transformers 5.24 ``trainer.py`` (``get_decay_parameter_names``).
    """
    row = catalog.optimizer(name)
    if "unsupported" in row:
        raise InvalidConfigError(f"optimizer '{name}' is not modelled: {row['unsupported']}")
    out = OptimizerPlan(name=row["name"], row=row)
    out.stores_grads = bool(row.get("stores_grads", True))
    eight = row.get("eight_bit")
    factored = bool(row.get("factored", False))
    states: list[dict[str, Any]] = list(row.get("states", []))
    total = 0
    paged_total = 0
    paged = bool(row.get("paged"))
    paged_min = int(row.get("paged_min_numel", 0))
    if eight is not None and eight.get("qmap_shared") and plan.trainable_elements:
        shared = sum(1 for st in states if st.get("bits") in (4, 8))
        b = shared * block(int(eight.get("qmap_bytes_per_state", 1024)))
        out.details["optimizer/qmaps"] = b
        total += b
    # (detail key, state) of the states kept per tensor, in the row's order
    kept: list[tuple[str, dict[str, Any], Any]] = []
    for st in states:
        sname = str(st.get("name", "state"))
        if not (factored and sname in ("exp_avg_sq", "exp_avg_sq_row", "exp_avg_sq_col")):
            kept.append((f"optimizer/{sname}", st, st.get("bits", "param")))
    details = out.details
    for numel, count, pb, *_ in plan.trainable_elements:
        before = total
        per_bits: dict[Any, int] = {}  # equal widths, equal bytes (exp_avg, exp_avg_sq)
        for key, st, bits in kept:
            one = per_bits.get(bits)
            if one is None:
                one = per_bits[bits] = _state_bytes(numel, pb, st, eight)
            b = one * count
            details[key] = details.get(key, 0) + b
            total += b
        if factored:
            # Adafactor: matrices keep row+col fp32-ish vectors; vectors keep a full one.
            b = _factored_bytes(numel, 4) * count  # states follow the fp32 grad
            out.details["optimizer/exp_avg_sq"] = out.details.get("optimizer/exp_avg_sq", 0) + b
            total += b
        if paged and numel >= paged_min:
            # bitsandbytes pages only tensors of at least ``paged_min_numel`` elements
            paged_total += total - before
    out.paged_bytes = paged_total
    out.state_bytes = total - paged_total
    scalars = int(row.get("device_scalars_per_tensor", 0))
    if scalars:  # fused/capturable Adam keeps its step counters on the GPU
        b = scalars * block(4) * plan.n_trainable_tensors
        out.details["optimizer/step"] = b
        out.state_bytes += b
    temps = impl or str(row.get("temporaries", "none"))
    if temps == "foreach":
        copies = int(row.get("temp_param_copies", 1)) if impl is None else 1
        out.step_temp_bytes = copies * max(plan.decay_bytes, plan.nodecay_bytes)
    elif temps in ("for_loop", "for-loop"):
        out.step_temp_bytes = 2 * plan.largest_trainable
    elif temps == "adafactor":
        # fp32 update and its negation; 16-bit params add fp32 copies of grad and param
        largest = max((t.numel for t in plan.trainable_elements), default=0)
        sixteen = any(t.elt_bytes < 4 for t in plan.trainable_elements)
        out.step_temp_bytes = (4 if sixteen else 2) * block(largest * 4)
    else:
        out.step_temp_bytes = 0
    return out


def _factored_bytes(numel: int, pb: int) -> int:
    """Adafactor second moment for one tensor: row + column vectors if it is a matrix.

    The shape is not in the inventory, so a square-ish matrix is assumed: sqrt(n) rows and
    columns (the vectors are tiny either way). Source: transformers ``optimization.Adafactor``.
    """
    if numel < 4096:
        return block(numel * pb)
    side = int(numel**0.5)
    return 2 * block(side * pb)
