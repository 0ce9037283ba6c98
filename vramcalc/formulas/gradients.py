"""Gradient bytes by where backward creates them: the LM head, each block, the embeddings.

Backward runs the loss, the LM head, the blocks in reverse and the embeddings last; each part
creates the gradients of its trainable tensors (in the parameter's dtype, 512-byte blocks) as
it runs, so the step walk adds them part by part. A tied LM head's weight gradient is created
at the head's backward; the embedding's backward later adds a second V x H buffer that is
accumulated into it (``embedding_dense_backward``).

Source: torch 2.13 ``torch/csrc/autograd`` accumulation (``AccumulateGrad``),
``aten/src/ATen/native/Embedding.cpp``; transformers 5.24 ``modeling_<type>.py`` module order.
"""

from __future__ import annotations

from dataclasses import dataclass

from vramcalc.formulas.counts import ParamGroup
from vramcalc.formulas.params import ParamPlan, block
from vramcalc.specs import ModelSpec

__all__ = ["GradSplit", "grad_split"]

FP32_BYTES = 4


@dataclass(frozen=True)
class GradSplit:
    """Gradient bytes created by each part of backward (one rank's slice, unsharded).

    Attributes:
        head: the LM head (and a tied embedding's weight gradient).
        per_block: one block's gradients (adapters included).
        embed: the embeddings (without a tied weight, counted in ``head``).
        other: what does not divide evenly over the blocks (final norms).
        grad_bytes_per_elt: bytes per element of the trainable tensors.
        tower: of the blocks' gradients, the vision tower's and projector's.

    """

    head: int
    per_block: int
    embed: int
    other: int
    grad_bytes_per_elt: int
    tower: int = 0
    """A vision-language model's tower and projector gradients (inside ``per_block``'s
    total): created after the language model's blocks, in the tower's own backward."""

    def total(self, n_blocks: int) -> int:
        """All gradient bytes of the slice."""
        return self.head + self.per_block * n_blocks + self.embed + self.other


def grad_split(spec: ModelSpec, inventory: tuple[ParamGroup, ...], plan: ParamPlan) -> GradSplit:
    """Split the trainable tensors' gradient bytes by the part of backward that creates them."""
    pb = plan.trainable_elements[0][2] if plan.trainable_elements else FP32_BYTES
    head = embed = blocks = tower = 0
    for g in inventory:
        if g.key not in plan.trainable_keys:
            continue
        b = (block(g.weight_numel * pb) + block(g.bias_numel * pb)) * g.count
        if g.stack == "head":
            head += b
        elif g.stack == "embed":
            embed += b
        else:
            blocks += b
            if g.stack in ("vision", "projector"):
                tower += b
    for a in plan.adapters:
        blocks += a.tensor_bytes
        if a.base_key.startswith(("vision/", "projector/")):
            tower += a.tensor_bytes
    tied_head = spec.tie_word_embeddings and spec.has_lm_head
    if tied_head and not any(g.kind == "lm_head" for g in inventory):
        tokens = next((g for g in inventory if g.key == "embed/tokens"), None)
        if tokens is not None and tokens.key in plan.trainable_keys:
            tb = block(tokens.weight_numel * pb)
            head += tb
            embed -= tb
    n_blocks = spec.num_hidden_layers + (spec.num_decoder_layers if spec.is_encoder_decoder else 0)
    per_block = blocks // max(n_blocks, 1)
    return GradSplit(head, per_block, embed, blocks - per_block * n_blocks, pb, tower)
