"""Parameter inventory and exact parameter counts of a ``ModelSpec``.

The inventory lists every parameter tensor group of the model with the facts the memory
formulas need: which groups are linear layers (quantizable, LoRA-targetable), embeddings,
the LM head, norms; their shapes; and how many instances the model holds.

The groups come from the ``modules`` list of the architecture template of
``spec.model_type`` (``data/architectures.json``); this module only evaluates the template's
small arithmetic expressions over the spec's fields and ``spec.arch`` extras. It never
branches on model names.

Semantics of a group (what the formulas downstream rely on):

* ``kind="linear"``: an ``nn.Linear`` (or GPT-2 ``Conv1D``, memory-wise the same) inside a
  block, and also projection/pooler linears outside the blocks (OPT ``project_in``/
  ``project_out``, BERT ``pooler.dense``). ``weight_numel = in_features * out_features``,
  ``bias_numel = out_features`` when the layer has a bias. MoE expert weights are
  ``kind="linear"`` with ``expert=True``, listed per expert (``count = layers * experts``).
* ``kind="embedding"``: token, position and token-type embeddings
  (``in_features`` = rows, ``out_features`` = embedding width).
* ``kind="lm_head"``: an untied output projection. A tied head has no group: its storage
  is the token embedding's, counted once.
* ``kind="norm"``: LayerNorm/RMSNorm weights (and biases).
* ``kind="other"``: everything else: T5 ``relative_attention_bias``, MoE routers that are bare
  parameters (a router that subclasses ``nn.Linear``, as in Llama 4 and PhiMoE, is ``linear``),
  attention sinks, Mamba ``conv1d``/``A_log``/``D``. Their bias has ``bias_numel`` elements
  (default: as many as the weight).

``role`` says how tensor and expert parallelism shard a group (``column``, ``row``, ``vocab``,
``replicated``, ``expert_column``, ``expert_row``; see ``_meta.roles`` in the data file).

Source: the module constructors of transformers 5.24 (``models/<type>/modeling_<type>.py``),
checked against meta-device builds for every catalog row (``tests/test_counts.py``).
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from functools import cache, lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from vramcalc import catalog
from vramcalc.errors import InvalidConfigError
from vramcalc.specs import ModelSpec

__all__ = ["ParamGroup", "count_params", "evaluate", "param_inventory", "spec_names"]


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
    stack: Literal["embed", "encoder", "decoder", "head", "vision", "projector"] = "decoder"
    """Where the group sits: ``vision`` is a vision-language model's image tower (its blocks,
    patch and position embeddings, norms), ``projector`` the layers that map its features to
    the language model's width."""
    role: Literal["column", "row", "vocab", "replicated", "expert_column", "expert_row"] = (
        "replicated"
    )
    """How tensor/expert parallelism shard this group (Megatron / ``parallelize_module``)."""
    expert: bool = False
    """MoE expert weight: one slice of a 3-D ``nn.Parameter`` (transformers >= 5), not an
    ``nn.Linear``; bitsandbytes leaves it unquantized and PEFT ``target_modules`` cannot
    reach it (only ``target_parameters``)."""
    experts: int = 1
    """Experts stacked in each 3-D parameter of an ``expert`` group, so the model holds
    ``count // experts`` such tensors (1 for every other group)."""

    idle: int = 0
    """Instances whose output never reaches the loss (LLaVA's vision layers above
    ``vision_feature_layer``): built and counted, run in forward, but given no gradient."""

    @property
    def numel(self) -> int:
        """Elements of all instances, weights and biases."""
        return (self.weight_numel + self.bias_numel) * self.count


# ---------------------------------------------------------------- template expressions


def _every(n: int, step: int, offset: int, exclude: Any = None) -> int:
    """Layers ``i < n`` with ``i % step == offset`` and not in ``exclude`` (layer schedules)."""
    skip = set(exclude or ())
    return sum(1 for i in range(n) if i % step == offset and i not in skip)


def _among(n: int, layers: Any) -> int:
    """Layers ``i < n`` listed in ``layers`` (e.g. Llama 4 ``moe_layers``)."""
    listed = set(layers or ())
    return sum(1 for i in range(n) if i in listed)


def _listed(n: int, layers: Any) -> str:
    """Layers ``i < n`` listed in ``layers``, as a comma-separated string (an arch scalar).

    Llama-3.2-Vision ``cross_attention_layers``: which decoder layers are cross-attention.
    """
    listed = set(layers or ())
    return ",".join(str(i) for i in range(n) if i in listed)


def _count(items: Any, value: Any) -> int:
    """Occurrences of ``value`` in a config list (``layer_types``, ``no_rope_layers``)."""
    return sum(1 for item in (items or ()) if item == value)


_FUNCS: dict[str, Callable[..., Any]] = {
    "int": int,
    "len": lambda x: len(x or ()),
    "count": _count,
    "every": _every,
    "among": _among,
    "listed": _listed,
    "min": min,
    "max": max,
    "startswith": lambda s, p: isinstance(s, str) and s.startswith(p),
    "endswith": lambda s, p: isinstance(s, str) and s.endswith(p),
    "first": lambda items: items[0] if isinstance(items, list | tuple) and items else None,
    "last_part": lambda s, sep: str(s).split(sep)[-1],
}
_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
}
_CMPOPS: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: lambda a, b: bool(a == b),
    ast.NotEq: lambda a, b: bool(a != b),
    ast.Lt: lambda a, b: bool(a < b),
    ast.LtE: lambda a, b: bool(a <= b),
    ast.Gt: lambda a, b: bool(a > b),
    ast.GtE: lambda a, b: bool(a >= b),
    ast.Is: lambda a, b: a is b,
    ast.IsNot: lambda a, b: a is not b,
}


@cache
def _parse(expr: str) -> ast.expr:
    return ast.parse(expr, mode="eval").body


def _eval(node: ast.expr, names: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in names:
            raise KeyError(node.id)
        return names[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _BINOPS[type(node.op)](_eval(node.left, names), _eval(node.right, names))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return not _eval(node.operand, names)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval(node.operand, names)
    if isinstance(node, ast.BoolOp):
        if isinstance(node.op, ast.And):
            return all(_eval(v, names) for v in node.values)
        return any(_eval(v, names) for v in node.values)
    if isinstance(node, ast.IfExp):
        branch = node.body if _eval(node.test, names) else node.orelse
        return _eval(branch, names)
    if isinstance(node, ast.Compare):
        left = _eval(node.left, names)
        for op, comp in zip(node.ops, node.comparators, strict=True):
            right = _eval(comp, names)
            if type(op) not in _CMPOPS or not _CMPOPS[type(op)](left, right):
                return False
            left = right
        return True
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCS
        and not node.keywords
    ):
        return _FUNCS[node.func.id](*(_eval(a, names) for a in node.args))
    raise ValueError(f"unsupported template expression element: {ast.dump(node)}")


def evaluate(expr: str | int | float | bool | None, names: Mapping[str, Any]) -> Any:
    """Evaluate one architecture-template expression over ``names``.

    Literals pass through. Expressions are a small, safe subset of Python (see
    ``data/architectures.json`` ``_meta.expressions``); a name missing from ``names`` raises
    ``KeyError`` with that name.
    """
    if not isinstance(expr, str):
        return expr
    return _eval(_parse(expr), names)


def spec_names(spec: ModelSpec) -> dict[str, Any]:
    """Names a template's ``modules`` expressions may read.

    ``spec.arch`` extras, then the spec's own fields. An extra missing from ``spec.arch``
    (a ``ModelSpec`` built by hand rather than by ``hf.py``) is derived from the template's
    ``arch`` expression over the transformers config defaults and the spec's fields.
    """
    template = catalog.architecture(spec.model_type)
    fields = {f: getattr(spec, f) for f in type(spec).model_fields if f != "arch"}
    base: dict[str, Any] = {**template.get("defaults", {}), **fields}
    names: dict[str, Any] = {}
    for key, expr in template.get("arch", {}).items():
        if key in spec.arch:
            names[key] = spec.arch[key]
            continue
        try:
            names[key] = evaluate(expr, base)
        except KeyError:
            continue  # reported by param_inventory if a module needs it
    names.update({k: v for k, v in spec.arch.items() if k not in names})
    names.update(fields)
    return names


# ---------------------------------------------------------------- inventory


def _as_int(value: Any, what: str, names: Mapping[str, Any]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidConfigError(
            f"{names['model_type']} model '{names['name']}': {what} evaluates to {value!r}; "
            "accepted: a non-negative integer"
        )
    return value


def _group(module: Mapping[str, Any], names: Mapping[str, Any]) -> ParamGroup | None:
    if "when" in module and not evaluate(module["when"], names):
        return None
    key = module["key"]
    kind = module["kind"]
    count = _as_int(evaluate(module.get("count", 1), names), f"{key} count", names)
    has_bias = bool(evaluate(module.get("bias", False), names))
    in_f = out_f = 0
    if kind in ("linear", "embedding", "lm_head"):
        in_f = _as_int(evaluate(module["in"], names), f"{key} in_features", names)
        out_f = _as_int(evaluate(module["out"], names), f"{key} out_features", names)
        weight = in_f * out_f
        bias = out_f if has_bias else 0
    else:
        if "in" in module:  # a 2-D "other" weight (a router): its shape, for target_parameters
            in_f = _as_int(evaluate(module["in"], names), f"{key} in_features", names)
            out_f = _as_int(evaluate(module["out"], names), f"{key} out_features", names)
        weight = _as_int(evaluate(module["numel"], names), f"{key} numel", names)
        bias_expr = module.get("bias_numel", module["numel"])
        bias = _as_int(evaluate(bias_expr, names), f"{key} bias numel", names) if has_bias else 0
    if count == 0:
        return None
    return ParamGroup(
        key=key,
        module=module["module"],
        kind=kind,
        in_features=in_f,
        out_features=out_f,
        weight_numel=weight,
        bias_numel=bias,
        count=count,
        stack=module["stack"],
        expert=bool(module.get("expert", False)),
        experts=_as_int(evaluate(module.get("experts", 1), names), f"{key} experts", names),
        role=module["role"],
        idle=min(count, _as_int(evaluate(module.get("idle", 0), names), f"{key} idle", names)),
    )


def param_inventory(spec: ModelSpec) -> tuple[ParamGroup, ...]:
    """Every parameter group of ``spec`` (tied embeddings listed once).

    Args:
        spec: a resolved model; ``spec.model_type`` selects the architecture template and
            ``spec.arch`` holds the template's extra config values.

    Returns:
        The groups in model order (embeddings, blocks, final norm, head). Sizes are element
        counts, not bytes.

    Source: transformers 5.24 ``modeling_<model_type>.py`` constructors, transcribed in
    ``data/architectures.json``.

    """
    names = spec_names(spec)
    return _inventory(spec.model_type, tuple(sorted(names.items())))


@lru_cache(maxsize=1024)
def _inventory(model_type: str, items: tuple[tuple[str, Any], ...]) -> tuple[ParamGroup, ...]:
    # Cached: the engine asks for the same model's inventory many times per estimate
    # (and a batch sweep thousands of times); ParamGroup is frozen, so sharing is safe.
    template = catalog.architecture(model_type)
    names = dict(items)
    groups: list[ParamGroup] = []
    for module in template["modules"]:
        try:
            group = _group(module, names)
        except KeyError as exc:
            raise InvalidConfigError(
                f"{model_type} model '{names['name']}' lacks '{exc.args[0]}' "
                f"(needed by parameter group {module['key']}); set it in ModelSpec.arch"
            ) from None
        if group is not None:
            groups.append(group)
    return tuple(groups)


def count_params(spec: ModelSpec) -> int:
    """Exact parameter count (tied input/output embeddings counted once).

    Source: sum over ``param_inventory``; equals ``sum(p.numel() for p in
    model.parameters())`` of the transformers model built from the same config (test oracle).
    """
    return sum(g.numel for g in param_inventory(spec))
