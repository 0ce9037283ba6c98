"""Hugging Face ``config.json`` -> ``ModelSpec``.

Pure Python at import. Everything model-specific comes from the architecture template of
the config's ``model_type`` (``data/architectures.json``): which keys are required, their
aliases and defaults, and how ModelSpec's fields and feature flags derive from them.
``meta_param_count`` alone imports torch and transformers, lazily, to build a model on the
meta device as an independent oracle of ``count_params``.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import suppress
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from vramcalc import catalog
from vramcalc.errors import InvalidConfigError, UnknownNameError, VramcalcError
from vramcalc.formulas.counts import count_params, evaluate
from vramcalc.limits import check_model_sizes, check_tree, current_limits, load_json
from vramcalc.specs import ModelSpec

__all__ = [
    "default_lora_targets",
    "load_config",
    "meta_param_count",
    "model_notes",
    "model_spec_from_config",
    "resolve_model",
    "untie_forced_heads",
]

_INT_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "vocab_size",
)
_Scalar = int | float | bool | str | None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _flatten(config: Mapping[str, Any], template: Mapping[str, Any]) -> dict[str, Any]:
    """Lift a composite config's sub-configs to the top level (template ``nested``).

    A vision-language config holds its language model in ``text_config`` and its vision
    tower in ``vision_config`` (transformers 5 serialisation; Qwen2.5-VL's Hub file keeps the
    text fields at the top level, ``text_at_top``). ``nested`` maps each sub-config to the
    prefix its keys get (``""`` for the text model, ``"vision_"`` for the tower); a
    sub-config's ``model_type`` becomes ``<prefix or 'text_'>model_type`` so the composite's
    own type stays. Without ``text_at_top`` only the composite's own keys (``top_keys``) are
    read at the top level, as the config class does (a top-level ``hidden_size`` of a
    Gemma 3 or LLaVA config does not reach its text model).

    Source: transformers v5.24 ``configuration_{llava,gemma3,qwen2_5_vl,qwen3_vl}.py``
    (``sub_configs``).
    """
    nested = template.get("nested")
    if not nested:
        return dict(config)
    own = set(template.get("top_keys", ())) | {"model_type"}
    top = template.get("text_at_top", False)
    cfg = {k: v for k, v in config.items() if k not in nested and (top or k in own)}
    for sub, prefix in nested.items():
        part = config.get(sub)
        if part is None:
            continue
        if not isinstance(part, Mapping):
            raise InvalidConfigError(
                f"config.json for model_type '{config.get('model_type')}': '{sub}' is "
                f"{_clip(repr(part))}; accepted: an object of {sub.split('_')[0]} model fields"
            )
        for key, value in part.items():
            name = (prefix or "text_") + key if key == "model_type" else prefix + key
            if prefix or key not in cfg or key != "tie_word_embeddings":
                cfg[name] = value
    return cfg


def _normalize(config: Mapping[str, Any], template: Mapping[str, Any]) -> dict[str, Any]:
    """Apply the template's key aliases and defaults (the config's own keys win)."""
    cfg = _flatten(config, template)
    for alias, key in template.get("aliases", {}).items():
        if alias in cfg and key not in cfg:
            cfg[key] = cfg[alias]
    for key, value in template.get("defaults", {}).items():
        cfg.setdefault(key, value)
    return cfg


def _alias_hint(key: str, template: Mapping[str, Any]) -> str:
    others = sorted(a for a, k in template.get("aliases", {}).items() if k == key)
    return f" (also accepted as {', '.join(others)})" if others else ""


def model_spec_from_config(
    config: Mapping[str, Any],
    *,
    name: str | None = None,
    hf_id: str | None = None,
    source: str | None = None,
) -> ModelSpec:
    """Build a ``ModelSpec`` from the contents of an HF ``config.json``.

    Args:
        config: the parsed ``config.json`` (only ``model_type`` and the keys the template
            reads matter; the rest is ignored).
        name: display name; defaults to ``hf_id`` or the model_type.
        hf_id: the Hub id, if known.
        source: where the config came from (URL or path).

    Returns:
        A validated spec with ``n_params`` filled from ``count_params``.

    Raises:
        UnknownNameError: ``model_type`` is not supported (lists the supported ones).
        InvalidConfigError: a required key is missing, a size is not a positive integer,
            heads do not divide the hidden size, or KV heads do not divide heads.

    """
    if not isinstance(config, Mapping):
        raise InvalidConfigError(
            f"a model config must be a JSON object, got {type(config).__name__}"
        )
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise InvalidConfigError(
            "config.json lacks 'model_type'; accepted: " + ", ".join(catalog.architecture_types())
        )
    template = catalog.architecture(model_type)
    cfg = _normalize(config, template)
    for key in template["required"]:
        if cfg.get(key) is None:
            raise InvalidConfigError(
                f"config.json for model_type '{model_type}' lacks '{key}'"
                f"{_alias_hint(key, template)}; required keys: {', '.join(template['required'])}"
            )

    def ev(field: str, expr: Any) -> Any:
        try:
            return evaluate(expr, cfg)
        except KeyError as exc:  # a key the template reads without a default
            raise InvalidConfigError(
                f"config.json for model_type '{model_type}' lacks '{exc.args[0]}' "
                f"(needed for {field})"
            ) from None
        except (TypeError, ValueError, ZeroDivisionError) as exc:
            raise InvalidConfigError(
                f"config.json for model_type '{model_type}': cannot derive {field} from "
                f"'{expr}' ({exc}); check the types of the keys it reads"
            ) from None

    # sizes are checked before anything divides by them
    for key in template["required"]:
        value = cfg[key]
        if not _is_int(value) or value <= 0:
            raise InvalidConfigError(
                f"config.json for model_type '{model_type}': '{key}' is {value!r}; "
                "accepted: a positive integer"
            )
    fields: dict[str, Any] = {}
    for field, expr in template["spec"].items():
        fields[field] = ev(field, expr)
    for field in _INT_FIELDS:
        value = fields[field]
        if not _is_int(value) or value <= 0:
            raise InvalidConfigError(
                f"config.json for model_type '{model_type}': {field} is {value!r}; "
                "accepted: a positive integer"
            )
    check_model_sizes(fields, f"config.json for model_type '{model_type}'")
    head_dim_key = template.get("head_dim_key")
    explicit_head_dim = head_dim_key is not None and config.get(head_dim_key) is not None
    if not explicit_head_dim and fields["hidden_size"] % fields["num_attention_heads"]:
        raise InvalidConfigError(
            f"config.json for model_type '{model_type}': num_attention_heads "
            f"({fields['num_attention_heads']}) does not divide hidden_size "
            f"({fields['hidden_size']}); "
            + (f"set '{head_dim_key}' or " if head_dim_key else "")
            + "use a head count that divides the hidden size"
        )
    if fields["num_attention_heads"] % fields["num_key_value_heads"]:
        raise InvalidConfigError(
            f"config.json for model_type '{model_type}': num_key_value_heads "
            f"({fields['num_key_value_heads']}) does not divide num_attention_heads "
            f"({fields['num_attention_heads']})"
        )
    experts = fields.get("num_local_experts") or 0
    per_tok = fields.get("num_experts_per_tok") or 0
    if _is_int(experts) and _is_int(per_tok) and experts > 0 and per_tok > experts:
        raise InvalidConfigError(
            f"config.json for model_type '{model_type}': num_experts_per_tok ({per_tok}) "
            f"exceeds the number of experts ({experts}); accepted: 1 to {experts}"
        )
    for rule in template.get("constraints", []):
        # a consistency rule of the transformers config class (its validate_architecture)
        if not ev("constraints", rule["expr"]):
            raise InvalidConfigError(f"config.json for model_type '{model_type}': {rule['error']}")
    arch: dict[str, _Scalar] = {}
    for key, expr in template.get("arch", {}).items():
        value = ev(key, expr)
        if value is not None and not isinstance(value, int | float | str):
            raise InvalidConfigError(
                f"config.json for model_type '{model_type}': '{key}' is {value!r}; "
                "accepted: a number, string, boolean or null"
            )
        arch[key] = value
    try:
        spec = ModelSpec(
            name=name or hf_id or model_type,
            hf_id=hf_id,
            model_type=model_type,
            source=source,
            arch=arch,
            **fields,
        )
        return spec.model_copy(update={"n_params": count_params(spec)})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise InvalidConfigError(
            f"config.json for model_type '{model_type}': {loc} = {err.get('input')!r}: {err['msg']}"
        ) from None


def default_lora_targets(model_type: str) -> tuple[str, ...] | None:
    """PEFT's default LoRA ``target_modules`` for ``model_type`` (None: PEFT has none).

    Source: peft ``utils/constants.py`` ``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING``,
    copied into ``data/architectures.json``. Where PEFT rewrites MoE target names for
    transformers 5 (template ``peft_moe_conversion``: Mixtral, Qwen3-MoE, DeepSeek, OLMoE) it
    replaces an omitted ``target_modules`` by an empty set before looking up that mapping
    (``utils/transformers_weight_conversion.py`` ``_convert_peft_config_moe``), so no default
    applies and PEFT asks for targets: None here.
    """
    template = catalog.architecture(model_type)
    if template.get("peft_moe_conversion"):
        return None
    targets = template.get("lora_targets")
    return None if targets is None else tuple(targets)


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a ``config.json`` file, or the ``config.json`` inside a model folder.

    The file goes through ``limits.load_json`` (size, depth, huge and non-finite numbers)
    and ``limits.check_tree`` (size fields within the limits, each refusal naming the key).

    Raises:
        InvalidConfigError: the file is missing, unreadable, not JSON, not an object, or
            outside the limits.

    """
    p = Path(path).expanduser()
    try:
        if p.is_dir():
            p = p / "config.json"
        found = p.is_file()
    except (OSError, ValueError):
        found = False
    if not found:
        raise InvalidConfigError(
            f"no such file: '{_clip(str(p))}'; accepted: a config.json file or a folder that "
            "holds one"
        )
    what = f"config.json '{_clip(str(p))}'"
    data = load_json(p, "config.json")
    if not isinstance(data, dict):
        raise InvalidConfigError(f"{what} must hold a JSON object, got {type(data).__name__}")
    check_tree(data, what)
    return data


def _clip(text: str, n: int = 120) -> str:
    return text if len(text) <= n else f"{text[: n - 3]}... ({len(text)} characters)"


def _looks_like_path(text: str) -> bool:
    """Whether MODEL was meant as a file or folder (so "no such file" beats "unknown model")."""
    if text.startswith(("/", "./", "../", "~", ".\\", "..\\")) or text.endswith(".json"):
        return True
    parent = Path(text).parent
    try:
        return str(parent) not in ("", ".") and parent.expanduser().is_dir()
    except (OSError, ValueError):
        return False


@cache
def _catalog_spec(name: str) -> ModelSpec:
    row = catalog.model_row(name)
    return model_spec_from_config(
        row["config"], name=row["name"], hf_id=row.get("hf_id"), source=row.get("source")
    )


def resolve_model(model: str | Mapping[str, Any], *, hub: bool = True) -> ModelSpec:
    """Turn what a user typed into a ``ModelSpec``.

    Args:
        model: a catalog name, alias or HF id; a path to a ``config.json`` or a model folder;
            a Hugging Face Hub repo id ``namespace/name[@revision]`` (looked up with
            ``vramcalc.hub``, which imports huggingface_hub only then); or an inline config
            (a mapping with ``model_type``).
        hub: look up Hub ids that are neither catalog names nor existing paths (the REST
            service refuses them before this point unless its setting allows them).

    Raises:
        UnknownNameError: not in the catalog, not an existing path and not shaped like a Hub
            id (names the closest catalog match); or a remote-code ``model_type``.
        InvalidConfigError: the config is malformed.
        vramcalc.hub.HubError: the Hub lookup failed (one line: not found, gated, offline and
            not cached, network, invalid id).

    """
    return _resolve(model, hub=hub)[0]


def model_notes(model: str | Mapping[str, Any]) -> tuple[str, ...]:
    """Return notes on how ``model`` was resolved: for a Hub id, what was read from the Hub.

    Empty for catalog names, paths and inline configs. A Hub lookup is cached in-process, so
    calling this after ``resolve_model`` costs no network call.
    """
    if isinstance(model, str) and ("/" in model or "@" in model) and _hub_candidate(model):
        return _resolve(model, hub=True)[1]
    return ()


def _hub_candidate(model: str) -> bool:
    from vramcalc import hub as hub_mod

    if not hub_mod.looks_like_hub_id(model):
        return False
    try:
        catalog.model_row(model)
    except UnknownNameError:
        return not _path_exists(model)
    return False


def _path_exists(model: str) -> bool:
    """Whether ``model`` names an existing file or folder (a name too long for the OS: no)."""
    try:
        return Path(model).expanduser().exists()
    except (OSError, ValueError):
        return False


_INLINE_SPECS: dict[tuple[Any, ...], ModelSpec] = {}
_INLINE_MAX = 256


def _inline_spec(config: Mapping[str, Any], name: str | None) -> ModelSpec:
    """``model_spec_from_config`` of an inline config, remembered by the config's exact content.

    A sweep (or the REST service) sends the same inline config again and again; the spec is
    frozen, so the one built the first time is returned again (as for catalog names), under
    the same limits (``limits.use_limits``) only. Only configs of plain JSON values are
    remembered; anything else is built every time.
    """
    try:  # the limits in force are in the key: what one caller's limits allow, another's refuse
        key = (name, current_limits(), _frozen(config))
    except TypeError:
        return model_spec_from_config(config, name=name)
    spec = _INLINE_SPECS.get(key)
    if spec is None:
        spec = model_spec_from_config(config, name=name)
        if len(_INLINE_SPECS) >= _INLINE_MAX:
            with suppress(KeyError, RuntimeError, StopIteration):  # another thread evicted
                del _INLINE_SPECS[next(iter(_INLINE_SPECS))]
        _INLINE_SPECS[key] = spec
    return spec


def _frozen(value: Any) -> tuple[Any, ...]:
    """Return a hashable copy of a JSON value that tells 1, 1.0 and True apart (``==`` does not).

    Raises:
        TypeError: a value that is not plain JSON (or a key that is not a string).

    """
    if value is None or isinstance(value, str):
        return (type(value).__name__, value)
    if isinstance(value, bool | int):
        return (type(value).__name__, int(value))
    if isinstance(value, float):
        return ("float", repr(value))
    if isinstance(value, Mapping):
        if not all(type(k) is str for k in value):
            raise TypeError("non-string key")
        return ("map", tuple((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return (type(value).__name__, tuple(_frozen(v) for v in value))
    raise TypeError(type(value).__name__)


def _resolve(model: str | Mapping[str, Any], *, hub: bool) -> tuple[ModelSpec, tuple[str, ...]]:
    if isinstance(model, Mapping):
        name = str(model.get("_name_or_path") or "") or None
        return _inline_spec(model, name), ()
    if not isinstance(model, str) or not model.strip():
        raise InvalidConfigError(
            "model must be a catalog name, a path to a config.json, a Hugging Face Hub repo id, "
            "or a config object"
        )
    try:
        row = catalog.model_row(model)
    except UnknownNameError as unknown:
        path = Path(model).expanduser()
        if _path_exists(model):
            config = load_config(path)
            _refuse_remote_code(config, str(path))
            return model_spec_from_config(
                config, name=path.parent.name if path.is_file() else path.name, source=str(path)
            ), ()
        if hub:
            from vramcalc import hub as hub_mod

            if hub_mod.looks_like_hub_id(model):
                return _hub_spec(model)
        if _looks_like_path(model):
            raise InvalidConfigError(
                f"no such file: '{_clip(model)}'; MODEL is neither an existing config.json or "
                "model folder nor a catalog name (see `vramcalc models`)"
            ) from None
        raise unknown from None
    return _catalog_spec(row["name"]), ()


def _refuse_remote_code(config: Mapping[str, Any], where: str) -> str | None:
    """Refuse a custom-code config whose ``model_type`` has no template; else a note or None.

    vramcalc never runs remote code (``trust_remote_code``): an ``auto_map`` config is read
    as JSON, and estimated from its fields when its ``model_type`` is one we know.
    """
    auto_map = config.get("auto_map")
    model_type = config.get("model_type")
    if not auto_map or not isinstance(model_type, str):
        return None
    if model_type not in catalog.architecture_types():
        from vramcalc.hub import RemoteCodeError

        raise RemoteCodeError(where, model_type, auto_map, catalog.architecture_types())
    return (
        f"config.json has auto_map (custom modelling code); vramcalc never runs remote code "
        f"and estimates it from its fields as model_type '{model_type}'"
    )


def _hub_spec(text: str) -> tuple[ModelSpec, tuple[str, ...]]:
    from vramcalc import hub as hub_mod

    found = hub_mod.lookup(text)
    notes = list(found.notes)
    try:
        remote = _refuse_remote_code(found.config, f"Hub repo '{found.repo_id}'")
        name = found.repo_id + (f"@{found.revision}" if found.revision else "")
        spec = model_spec_from_config(
            found.config, name=name, hf_id=found.repo_id, source=found.source
        )
    except hub_mod.RemoteCodeError:
        raise
    except VramcalcError as exc:
        exc.args = (f"Hub repo '{found.repo_id}': {exc}",)
        raise
    if remote:
        notes.append(remote)
    stored = found.stored_params
    if stored is not None and stored != spec.n_params:
        notes.append(
            f"parameter count {stored:,} from the safetensors headers, where the "
            f"'{spec.model_type}' template counts {spec.n_params:,} ({stored - spec.n_params:+,}); "
            "memory is estimated from the template's layers"
        )
        spec = spec.model_copy(update={"n_params": stored})
    if found.stored_dtype is not None:
        notes.append(f"weights stored as {found.stored_dtype} (--dtype sets the training dtype)")
    return spec, tuple(notes)


def untie_forced_heads(model: Any, config: Mapping[str, Any]) -> None:
    """Give ``model`` its own LM-head weight when transformers forced a tie ``config`` refuses.

    T5Config and MT5Config (transformers 5.24) set ``tie_word_embeddings=True`` whatever
    config.json says, but ``from_pretrained`` leaves ``lm_head`` untied when the checkpoint
    holds it with values different from ``shared`` (``PreTrainedModel.tie_weights``: "both are
    present in the checkpoints with different values, so we will NOT tie them"), which is the
    case for every checkpoint saved with ``tie_word_embeddings=false`` (T5 v1.1, flan-t5, T0,
    mT5). This reproduces the loaded model on the meta device.
    """
    import torch  # noqa: TID251 - lazy: only the meta-device oracle calls this

    if config.get("tie_word_embeddings") is not False:
        return
    head = model.get_output_embeddings()
    if head is not None and head.weight is model.get_input_embeddings().weight:
        weight = head.weight
        head.weight = torch.nn.Parameter(
            torch.empty_like(weight), requires_grad=weight.requires_grad
        )


def meta_param_count(config: Mapping[str, Any]) -> int:
    """Count parameters of the transformers model built from ``config`` on the meta device.

    The model class is the config's ``architectures[0]`` when transformers has that class for
    the config type (an encoder's task head: ``ModernBertForMaskedLM``), else the template's
    ``model_class`` (causal LM, seq2seq LM, or the bare encoder for BERT-style models). Tied
    weights are tied with ``tie_weights()`` before counting, and parameters are counted once
    per identity (``model.parameters()`` de-duplicates shared tensors). Needs torch and
    transformers; used as a test oracle.
    """
    try:
        import torch  # noqa: TID251 - lazy: only this oracle helper needs torch
        import transformers
    except ImportError as exc:  # pragma: no cover - exercised only without the hf extra
        raise VramcalcError(
            "meta_param_count needs torch and transformers (pip install 'vramcalc[hf]')"
        ) from exc
    cfg = dict(config)
    model_type = cfg.pop("model_type")
    template = catalog.architecture(model_type)
    for key in ("architectures", "transformers_version", "torch_dtype", "dtype", "_name_or_path"):
        cfg.pop(key, None)
    hf_config = transformers.AutoConfig.for_model(model_type, **cfg)
    model_cls = getattr(transformers, template["model_class"])
    named = config.get("architectures")
    if isinstance(named, list) and named:
        # a task head the config names (ModernBertForMaskedLM) when transformers has that
        # class for this config type, as validation/build.py builds it
        head_cls = getattr(transformers, str(named[0]), None)
        if head_cls is not None and getattr(head_cls, "config_class", None) is type(hf_config):
            model_cls = head_cls
    with torch.device("meta"):
        model = model_cls(hf_config)
    if getattr(hf_config, "tie_word_embeddings", False):
        model.tie_weights()
        untie_forced_heads(model, config)
    seen: set[int] = set()
    total = 0
    for param in model.parameters():
        if id(param) not in seen:
            seen.add(id(param))
            total += param.numel()
    return total
