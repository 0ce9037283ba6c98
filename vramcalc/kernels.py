"""Which attention implementation transformers runs for a model, and what the user asked for.

``transformers`` picks ``attn_implementation`` per model class when the caller does not:
``sdpa`` when the class sets ``_supports_sdpa``, else ``eager`` (flash-attention only when
asked for). Gemma-2 (soft-capping), GPT-OSS (attention sinks), BLOOM (ALiBi) and Mamba build
eager; asking such a class for ``sdpa`` (or for ``flash_attention_2`` without
``_supports_flash_attn``) is refused by transformers. Each architecture template of
``data/architectures.json`` carries ``attention`` (``default``, ``supported``, ``source``).

Source: transformers v5.24 ``modeling_utils.py``
(``PreTrainedModel._check_and_adjust_attn_implementation``,
``get_correct_attn_implementation``) and each model's ``<Model>PreTrainedModel`` flags.
"""

from __future__ import annotations

from vramcalc import catalog
from vramcalc.enums import Attention

__all__ = ["default_attention", "resolve_attention"]


def default_attention(model_type: str) -> Attention:
    """Return the ``attn_implementation`` transformers builds ``model_type`` with by default."""
    tpl = catalog.architecture(model_type).get("attention") or {}
    return Attention(tpl.get("default", Attention.SDPA.value))


def resolve_attention(model_type: str, requested: Attention | None) -> tuple[Attention, list[str]]:
    """Return the implementation to estimate, and notes where transformers would run another.

    ``requested`` ``None`` means "what transformers picks" (``default_attention``). A request
    for another implementation is honoured, with a note naming the default; one the model
    class does not support (transformers raises) is honoured with a note saying so.
    """
    tpl = catalog.architecture(model_type)
    att = tpl.get("attention") or {}
    default = Attention(att.get("default", Attention.SDPA.value))
    if requested is None:
        return default, []
    cls = tpl.get("model_class", model_type)
    supported = [str(s) for s in att.get("supported", [a.value for a in Attention])]
    notes: list[str] = []
    if requested.value not in supported:
        notes.append(
            f"--attn {requested.value}: transformers 5.24 refuses attn_implementation="
            f"'{requested.value}' for {cls} (supported: {', '.join(supported)}); estimated as "
            f"asked, but that run would fail; transformers' default is {default.value}"
        )
    elif requested != default:
        notes.append(
            f"--attn {requested.value}: transformers 5.24 builds {cls} with {default.value} "
            f"unless attn_implementation='{requested.value}' is passed"
        )
    return requested, notes
