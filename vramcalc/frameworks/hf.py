"""The hf profile: transformers Trainer + PEFT and what builds on it (TRL, axolotl).

Data: ``data/frameworks.json`` row ``hf``. ``--liger`` switches transformers'
``use_liger_kernel``: ``apply_liger_kernel_to_<model>`` replaces RMSNorm
(``LigerRMSNorm``), RoPE (``liger_rotary_pos_emb``: q and k keep their dtype), the gated
MLP's ``act(gate) * up`` (``LigerSiLUMulFunction``) and the causal-LM loss (fused linear
cross-entropy, the default loss once Liger is on). Without ``--liger``, ``--loss
fused_linear`` is Cut Cross-Entropy (axolotl's ``cut_cross_entropy`` plugin).

Source: transformers 5.24 ``trainer.py`` (``use_liger_kernel``); Liger-Kernel 0.5
``transformers/monkey_patch.py``, ``ops/rms_norm.py``, ``ops/rope.py``, ``ops/swiglu.py``.
"""

from __future__ import annotations

from vramcalc.frameworks import FrameworkProfile
from vramcalc.specs import EstimateRequest, RecipeSpec

__all__ = ["PROFILE"]


class HfProfile(FrameworkProfile):
    """transformers + PEFT, with Liger kernels when ``--liger`` is on."""

    def problems(self, req: EstimateRequest) -> list[str]:
        """Add: ``--liger`` with ``--loss chunked`` (Liger's loss is the fused one)."""
        out = super().problems(req)
        if req.liger and req.loss == "chunked":
            out.append(
                "--liger replaces the loss with Liger's fused linear cross-entropy; accepted "
                "with --liger: --loss fused_linear or --loss full"
            )
        return out

    def recipe(self, req: EstimateRequest) -> RecipeSpec:
        """Resolve the base recipe, with Liger's kernels and loss when ``--liger`` is on."""
        base = super().recipe(req)
        if not req.liger:
            return base
        update: dict[str, object] = {
            "norm_impl": "liger",
            "swiglu_impl": "fused",
            "rope_dtype": "input",
        }
        if req.loss is None:
            update["loss"] = "fused_linear"
            update["loss_chunks"] = 1
        return base.model_copy(update=update)

    def notes(self, req: EstimateRequest, recipe: RecipeSpec) -> list[str]:
        """Add the untraced features' notes."""
        out = super().notes(req, recipe)
        if recipe.liger or recipe.loss != "full":
            out.append(
                "Liger kernels / chunked and fused losses under transformers are modelled "
                "from their source and not traced (Triton kernels need a GPU)"
            )
        if recipe.activation_offload:
            out.append(
                "activation offload (TRL/axolotl): the blocks' saved tensors are assumed in "
                "CPU memory except the running block's (and the prefetched one in backward); "
                "not traced"
            )
        if recipe.packing:
            out.append(
                "--packing: rows are full seq-len rows of packed samples (no padding); with "
                "flash_attention_2 / position_ids the memory is that of an unpadded batch"
            )
        return out


PROFILE = HfProfile.from_data("hf")
