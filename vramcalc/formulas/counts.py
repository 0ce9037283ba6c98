"""Parameter inventory and exact parameter counts of a ``ModelSpec``.

The inventory lists every parameter tensor group of the model with the facts the memory
formulas need: which groups are linear layers (quantizable, LoRA-targetable), embeddings,
the LM head, norms; their shapes; and how many instances the model holds.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from vramcalc.specs import ModelSpec

__all__ = ["ParamGroup", "count_params", "param_inventory"]


class ParamGroup(BaseModel):
    """One group of identical parameter tensors (e.g. every layer's ``q_proj``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    """Stable slash key, e.g. ``decoder/self_attn/q_proj``."""
    module: str
    """Leaf module name as PEFT matches ``target_modules`` (``q_proj``, ``c_attn``)."""
    kind: Literal["linear", "embedding", "lm_head", "norm", "other"]
    in_features: int = 0
    out_features: int = 0
    weight_numel: int
    bias_numel: int = 0
    count: int = 1
    """Instances in the whole model (layers x experts)."""
    stack: Literal["embed", "encoder", "decoder", "head"] = "decoder"

    @property
    def numel(self) -> int:
        """Elements of all instances, weights and biases."""
        return (self.weight_numel + self.bias_numel) * self.count


def param_inventory(spec: ModelSpec) -> tuple[ParamGroup, ...]:
    """Every parameter group of ``spec`` (tied embeddings listed once)."""
    raise NotImplementedError("being written: see the model-catalog work")


def count_params(spec: ModelSpec) -> int:
    """Exact parameter count (tied input/output embeddings counted once)."""
    return sum(g.numel for g in param_inventory(spec))
