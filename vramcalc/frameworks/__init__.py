"""Framework profiles: the same job as transformers+PEFT, LitGPT, torchtune or Unsloth run it.

How a profile plugs into the engine
-----------------------------------
A profile is one row of ``data/frameworks.json`` (facts, each with a ``source``) plus one
small module ``vramcalc/frameworks/<name>.py`` that exposes ``PROFILE``, a
``FrameworkProfile`` (or a subclass overriding its hooks). ``profile(name)`` imports that
module on first use; a framework without a module gets the data-only base profile.

The engine never branches on a framework's name. The request passes through three hooks:

1. ``FrameworkProfile.problems(req)`` -- called by ``EstimateRequest``'s validator (through
   ``request_problems``): features the framework does not have, loss kinds it does not run.
   The base implementation reads ``loss.accepted`` and ``features`` of the data row; a
   module adds framework-specific rules by overriding it (call ``super().problems``).
2. ``FrameworkProfile.recipe(req) -> RecipeSpec`` -- called by ``engine.resolve``: the
   row's ``implementation`` keys become ``RecipeSpec`` fields (which implementation each
   block kind uses, what it saves, the adapter dtype and dropout placement), the loss and its
   chunk count are resolved (the request's, else the row's default), the load path and the
   peak-reset point are copied, and the request's feature switches are carried over.
   ``TrainingSpec.recipe`` holds the result; the formulas (``formulas/activations.py``,
   ``formulas/params.py``, the walk in ``engine.py``) read only those fields.
3. ``FrameworkProfile.notes(req, recipe)`` -- lines added to the report's ``notes`` (stated
   approximations such as ``--compile``, untraced profiles).

Adding a framework: add its row to ``data/frameworks.json`` (and its name to
``specs.FRAMEWORKS``), write ``vramcalc/frameworks/<name>.py`` with ``PROFILE``, and model any
new implementation choice as a new ``RecipeSpec`` field with the hf behaviour as its default.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from vramcalc import catalog
from vramcalc.specs import FEATURES, FRAMEWORKS, EstimateRequest, RecipeSpec

if TYPE_CHECKING:
    from vramcalc.formulas.activations import ActivationProfile
    from vramcalc.formulas.optimizer import OptimizerPlan
    from vramcalc.formulas.params import ParamPlan
    from vramcalc.specs import ModelSpec, TrainingSpec

__all__ = [
    "FrameworkProfile",
    "profile",
    "profiles",
    "request_problems",
    "resolve_recipe",
]

# RecipeSpec fields a data row's ``implementation`` may set
_IMPL_KEYS = (
    "logits_fp32",
    "hold_logits",
    "gelu_tanh",
    "qkv_fused",
    "norm_impl",
    "swiglu_impl",
    "rope_dtype",
    "adapter_dtype",
    "lora_dropout",
)


@dataclass(frozen=True)
class FrameworkProfile:
    """One framework's profile: its data row and the hooks the engine calls.

    Attributes:
        name: the ``--framework`` value.
        row: the row of ``data/frameworks.json``.

    """

    name: str
    row: Mapping[str, Any]

    @classmethod
    def from_data(cls, name: str) -> FrameworkProfile:
        """Build the profile from its ``data/frameworks.json`` row."""
        return cls(name, catalog.framework_row(name))

    # ---------------------------------------------------------------- facts

    @property
    def title(self) -> str:
        """Human-readable name of the framework and its recipes."""
        return str(self.row["title"])

    @property
    def traced(self) -> bool:
        """Whether the validation tracer runs this framework's real step."""
        return bool(self.row.get("traced", False))

    @property
    def losses(self) -> tuple[str, ...]:
        """Loss kinds this framework runs (``--loss``)."""
        return tuple(self.row["loss"]["accepted"])

    @property
    def default_loss(self) -> str:
        """The loss its recipes use."""
        return str(self.row["loss"]["default"])

    @property
    def features(self) -> tuple[str, ...]:
        """Boolean memory features it supports (request field names)."""
        return tuple(f for f in FEATURES if f in self.row.get("features", {}))

    # ---------------------------------------------------------------- hooks

    def problems(self, req: EstimateRequest) -> list[str]:
        """Messages for settings this framework does not support (empty when all are fine)."""
        out: list[str] = []
        flag = f"--framework {self.name}"
        on = [f for f in FEATURES if getattr(req, f)]
        if req.task.value != "train":
            given = on + (["loss"] if req.loss is not None else [])
            given += ["loss_chunks"] if req.loss_chunks is not None else []
            if given:
                out.append(f"{_opts(given)}: training feature(s), not accepted with --task infer")
            if self.name != "hf":
                out.append(
                    f"{flag} models training steps; --task infer takes --framework hf "
                    "(transformers generate) or --engine vllm"
                )
            return out
        for f in on:
            if f not in self.features:
                acc = ", ".join("--" + x.replace("_", "-") for x in self.features) or "none"
                where = [n for n in FRAMEWORKS if f in _row_features(n)]
                out.append(
                    f"--{f.replace('_', '-')} is not a {self.name} feature "
                    f"(supported by: {', '.join(where) or 'no profile'}); accepted with "
                    f"{flag}: {acc}"
                )
        if req.loss is not None and req.loss not in self.losses:
            out.append(
                f"--loss {req.loss} is not run by {self.name}; accepted with {flag}: "
                f"{', '.join(self.losses)}"
            )
        loss = req.loss or self.default_loss
        if req.loss_chunks is not None and loss == "full":
            other = [x for x in self.losses if x != "full"] or ["chunked"]
            out.append(
                f"--loss-chunks {req.loss_chunks} needs a chunked or fused loss, but the loss "
                f"is full; accepted: --loss {' or --loss '.join(other)}"
            )
        if req.checkpoint_offload and not req.grad_ckpt:
            out.append(
                "--checkpoint-offload offloads the checkpointed layer inputs and needs "
                "--grad-ckpt; accepted: --grad-ckpt --checkpoint-offload"
            )
        return out

    def recipe(self, req: EstimateRequest) -> RecipeSpec:
        """Resolve the request's recipe: implementations, loss, load path, features."""
        impl = {k: v for k, v in self.row["implementation"].items() if k in _IMPL_KEYS}
        loss_row = self.row["loss"]
        loss = req.loss or self.default_loss
        chunks = 1
        if loss != "full":
            if req.loss_chunks is not None:
                chunks = req.loss_chunks
            elif loss_row.get("chunk_tokens"):
                chunks = -(-req.seq_len // int(loss_row["chunk_tokens"]))
            else:
                chunks = int(loss_row.get("default_chunks") or 1)
        load = self.row["load"]
        return RecipeSpec(
            framework=self.name,
            loss=loss,
            loss_chunks=chunks,
            quant_load=load["quantize"],
            quant_lm_head=bool(load["lm_head"]),
            kbit_upcast=bool(load.get("upcast_other_fp32", True)),
            double_quant=bool(load["double_quant"]),
            peak_reset=self.row["peak_reset"]["at"],
            **impl,
            **{f: bool(getattr(req, f)) for f in FEATURES},
        )

    def adjust(
        self,
        spec: ModelSpec,
        tr: TrainingSpec,
        plan: ParamPlan,
        prof: ActivationProfile,
        opt: OptimizerPlan,
    ) -> tuple[ParamPlan, ActivationProfile, OptimizerPlan]:
        """Adjust one rank's parameter, activation and optimizer plans (hook 4, engine._rank).

        For what the framework's own modules save and its memory features do (the torchtune
        profile: its chunked loss, expanded GQA keys/values, activation offloading,
        optimizer-in-backward). The base profile changes nothing.
        """
        return plan, prof, opt

    def notes(self, req: EstimateRequest, recipe: RecipeSpec) -> list[str]:
        """Lines for the report's notes (approximations, untraced profiles)."""
        out: list[str] = []
        if self.name != "hf":
            out.append(f"framework {self.name}: {self.title} ({self.row['version']})")
        if not self.traced:
            out.append(
                f"the {self.name} profile is modelled from its source and not traced "
                "(docs/accuracy.md)"
            )
        if recipe.compile:
            out.append(
                "--compile is an approximation: the estimate assumes torch.compile saves the "
                "same tensors as eager mode (Inductor's min-cut recomputation usually saves "
                "less, so the estimate is an upper bound); not traced"
            )
        return out


def _opts(names: list[str]) -> str:
    return ", ".join("--" + n.replace("_", "-") for n in names)


def _row_features(name: str) -> tuple[str, ...]:
    return tuple(catalog.framework_row(name).get("features", {}))


@cache
def profile(name: str) -> FrameworkProfile:
    """Return the profile of ``--framework name`` (its module's ``PROFILE``, else the data).

    Raises:
        UnknownNameError: a name that is not in ``data/frameworks.json``.

    """
    catalog.framework_row(name)  # unknown names: one error with the closest match
    try:
        module = importlib.import_module(f"vramcalc.frameworks.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"vramcalc.frameworks.{name}":
            raise
        return FrameworkProfile.from_data(name)
    prof: FrameworkProfile = module.PROFILE
    return prof


def profiles() -> list[FrameworkProfile]:
    """Every profile, in ``--framework`` order."""
    return [profile(n) for n in FRAMEWORKS]


def request_problems(req: EstimateRequest) -> list[str]:
    """Messages for the request's framework features that its framework does not support."""
    return profile(req.framework).problems(req)


def resolve_recipe(req: EstimateRequest) -> RecipeSpec:
    """Return the request's resolved recipe (``TrainingSpec.recipe``)."""
    return profile(req.framework).recipe(req)
