"""Read a trainer's own config file into request fields (``vramcalc --config FILE``).

Six formats, told apart by their keys (``detect_format``):

- ``litgpt``: a LitGPT fine-tune YAML (``litgpt finetune_lora --config``; keys of
  ``litgpt/finetune/{lora,full}.py`` ``setup()`` in litgpt 0.5.13: ``checkpoint_dir``,
  ``precision``, ``quantize``, ``devices``, ``lora_*``, ``train.{micro,global}_batch_size``,
  ``train.max_seq_length``);
- ``torchtune``: a torchtune recipe YAML (torchtune 0.6.1 ``recipes/configs/*``: ``model``
  with a ``_component_`` builder, ``batch_size``, ``dtype``, ``loss``, ``optimizer``,
  ``enable_activation_checkpointing``, ``enable_activation_offloading``,
  ``optimizer_in_bwd``, ``compile``, ``dataset.packed``, ``tokenizer.max_seq_len``);
- ``axolotl``: an axolotl YAML (``base_model``, ``adapter``, ``load_in_4bit``,
  ``sequence_len``, ``micro_batch_size``, ``sample_packing``, ``gradient_checkpointing``,
  ``deepspeed``/``fsdp``; axolotl ``src/axolotl/utils/schemas/config.py``);
- ``llamafactory``: a LLaMA-Factory YAML (``model_name_or_path``, ``stage``,
  ``finetuning_type``, ``lora_rank``, ``quantization_bit``, ``cutoff_len``; LLaMA-Factory
  ``src/llamafactory/hparams/{model,finetuning,data}_args.py``);
- ``trl``: a TRL / transformers ``TrainingArguments`` JSON or YAML (``per_device_train_batch_size``,
  ``gradient_accumulation_steps``, ``bf16``, ``optim``, ``gradient_checkpointing``, TRL's
  ``max_length``/``packing``/``use_liger_kernel`` and ``ModelConfig`` keys
  ``model_name_or_path``, ``use_peft``, ``lora_r``, ``load_in_4bit``);
- ``accelerate``: an accelerate config; it becomes the request's ``accelerate_config``
  (``vramcalc.accelerate_config`` reads it).

The module is pure: it takes the parsed mapping and never opens files (a ``deepspeed`` path
in the file is returned as ``deepspeed_config_file`` for the CLI to read). Fields the request
sets explicitly win over the file (flags override); every key of the file is either used
(``notes``) or listed as ignored with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vramcalc.errors import InvalidConfigError, UnknownNameError, closest_match

__all__ = [
    "CONFIG_FORMATS",
    "ConfigFields",
    "apply_config",
    "config_model",
    "detect_format",
    "model_from_config",
    "parse_config_text",
    "request_fields_from_config",
]

CONFIG_FORMATS = ("litgpt", "torchtune", "axolotl", "llamafactory", "trl", "accelerate")
MAX_CONFIG_CHARS = 200_000

_NO_MEMORY = "does not change memory"


class ConfigFields(BaseModel):
    """What a trainer config decides: request fields, their sources, and ignored keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: str
    fields: dict[str, Any] = Field(default_factory=dict)
    sources: dict[str, str] = Field(default_factory=dict)
    ignored: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    deepspeed_config_file: str | None = None


class _R:
    """Collects fields, notes and ignored keys while one file is read."""

    def __init__(self, fmt: str, cfg: Mapping[str, Any]) -> None:
        self.fmt = fmt
        self.cfg = cfg
        self.fields: dict[str, Any] = {}
        self.sources: dict[str, str] = {}
        self.notes: list[str] = []
        self.ignored: list[str] = []
        self.used: set[str] = set()
        self.ds_file: str | None = None

    def fail(self, msg: str) -> InvalidConfigError:
        return InvalidConfigError(f"{self.fmt} config: {msg}")

    def set(self, field: str, value: Any, key: str, shown: Any = None) -> None:
        self.fields[field] = value
        self.sources[field] = key
        self.used.add(key.split(".")[0].split(" ")[0])
        show = value if shown is None else shown
        self.notes.append(f"{key} -> {field} {_show(show)}")

    def use(self, *keys: str) -> None:
        self.used.update(keys)

    def get(self, key: str, default: Any = None) -> Any:
        return self.cfg.get(key, default)

    def flag(self, key: str, default: bool = False, value: Any = None) -> bool:
        v = self.cfg.get(key) if value is None else value
        if v is None:
            return default
        if isinstance(v, bool):
            return v
        text = str(v).strip().lower()
        if text in ("true", "yes", "1", "on", "auto"):
            return True
        if text in ("false", "no", "0", "off", "none", "null", ""):
            return False
        raise self.fail(f"{key} must be true or false, got {v!r}")

    def integer(self, key: str, value: Any = None, minimum: int = 1) -> int:
        v = self.cfg.get(key) if value is None else value
        if isinstance(v, bool) or not isinstance(v, int | str):
            raise self.fail(f"{key} must be an integer >= {minimum}, got {v!r}")
        try:
            n = int(str(v).strip())
        except ValueError:
            raise self.fail(f"{key} must be an integer >= {minimum}, got {v!r}") from None
        if n < minimum:
            raise self.fail(f"{key} must be an integer >= {minimum}, got {n}")
        return n

    def num(self, key: str, value: Any) -> float:
        if isinstance(value, bool):
            raise self.fail(f"{key} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise self.fail(f"{key} must be a number, got {value!r}") from None

    def section(self, key: str) -> dict[str, Any]:
        v = self.cfg.get(key)
        if v is None:
            return {}
        if not isinstance(v, Mapping):
            raise self.fail(f"{key} must be a mapping of keys to values, got {type(v).__name__}")
        return {str(k): x for k, x in v.items()}

    def done(self, reasons: Mapping[str, str]) -> ConfigFields:
        for key in self.cfg:
            if key in self.used:
                continue
            self.ignored.append(f"{key}: {reasons.get(str(key), _NO_MEMORY)}")
        return ConfigFields(
            format=self.fmt,
            fields=self.fields,
            sources=self.sources,
            ignored=tuple(self.ignored),
            notes=tuple(self.notes),
            deepspeed_config_file=self.ds_file,
        )


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return ",".join(f"{k}={_show(v)}" for k, v in value.items() if v is not None)
    if isinstance(value, list | tuple):
        return "+".join(str(v) for v in value)
    return str(value)


# ----------------------------------------------------------------------------- parsing


def parse_config_text(text: str, where: str = "config") -> dict[str, Any]:
    """Parse YAML (or JSON, which YAML reads) text into a mapping, with one-line errors."""
    import yaml

    if len(text) > MAX_CONFIG_CHARS:
        raise InvalidConfigError(f"{where}: longer than {MAX_CONFIG_CHARS} characters")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InvalidConfigError(f"{where}: not valid YAML/JSON: {problem}{at}") from None
    if not isinstance(data, dict):
        raise InvalidConfigError(
            f"{where}: must hold a mapping of keys to values (a trainer config), "
            f"got {type(data).__name__}"
        )
    return {str(k): v for k, v in data.items()}


def detect_format(cfg: Mapping[str, Any]) -> str:
    """Name the trainer whose config ``cfg`` is (one of ``CONFIG_FORMATS``).

    Raises:
        InvalidConfigError: no format's marker keys are present.

    """
    keys = set(cfg)
    model = cfg.get("model")
    if isinstance(model, Mapping) and str(model.get("_component_", "")).startswith("torchtune."):
        return "torchtune"
    if "checkpoint_dir" in keys and ("train" in keys or "precision" in keys):
        return "litgpt"
    if "base_model" in keys:
        return "axolotl"
    if "model_name_or_path" in keys and keys & {"stage", "finetuning_type", "cutoff_len"}:
        return "llamafactory"
    if keys & {"distributed_type", "compute_environment"}:
        return "accelerate"
    if keys & {"per_device_train_batch_size", "output_dir", "model_name_or_path"}:
        return "trl"
    raise InvalidConfigError(
        "config: cannot tell which trainer this file is for (keys: "
        f"{', '.join(sorted(keys)[:8])}); accepted: a LitGPT fine-tune YAML (checkpoint_dir), "
        "a torchtune recipe YAML (model._component_), an axolotl YAML (base_model), a "
        "LLaMA-Factory YAML (model_name_or_path + stage), a TRL/transformers TrainingArguments "
        "JSON (per_device_train_batch_size) or an accelerate config (distributed_type)"
    )


# ----------------------------------------------------------------------------- models

# torchtune 0.6.1 model builders (torchtune/models/*/_model_builders.py) -> catalog names
_TORCHTUNE_MODELS = {
    "llama2_7b": "llama-2-7b",
    "llama2_13b": "llama-2-13b",
    "llama2_70b": "llama-2-70b",
    "llama3_8b": "llama-3-8b",
    "llama3_70b": "llama-3-70b",
    "llama3_1_8b": "llama-3.1-8b",
    "llama3_1_70b": "llama-3.1-70b",
    "llama3_2_1b": "llama-3.2-1b",
    "llama3_2_3b": "llama-3.2-3b",
    "qwen2_5_0_5b": "qwen2.5-0.5b",
    "qwen2_5_1_5b": "qwen2.5-1.5b",
    "qwen2_5_3b": "qwen2.5-3b",
    "qwen2_5_7b": "qwen2.5-7b",
    "qwen2_5_14b": "qwen2.5-14b",
    "qwen2_5_32b": "qwen2.5-32b",
    "qwen2_5_72b": "qwen2.5-72b",
    "qwen3_8b": "qwen3-8b",
    "mistral_7b": "mistral-7b-v0.1",
    "gemma_2b": "gemma-2b",
    "gemma_7b": "gemma-7b",
    "gemma2_2b": "gemma-2-2b",
    "gemma2_9b": "gemma-2-9b",
    "gemma2_27b": "gemma-2-27b",
    "phi3_mini": "phi-3-mini",
}
_SUFFIXES = ("-instruct", "-chat", "-hf", "-it", "-base", "-chat-hf")


def catalog_model(value: str) -> str | None:
    """Find the catalog name of an HF id or a local checkpoint path (None: not in it).

    Tries the whole value, ``org/name`` from its last two path parts, the last part, and the
    last part without an instruct/chat suffix (``Llama-3.2-1B-Instruct`` -> ``llama-3.2-1b``).
    """
    from vramcalc import catalog

    parts = [p for p in re.split(r"[\\/]+", value.strip()) if p]
    if not parts:
        return None
    tries = [value.strip(), "/".join(parts[-2:]), parts[-1]]
    last = parts[-1].lower()
    for suffix in _SUFFIXES:
        if last.endswith(suffix):
            tries.append(last[: -len(suffix)])
    if last.startswith("meta-llama-3-"):
        tries.append("llama-3-" + last.removeprefix("meta-llama-3-").split("-")[0])
    for t in tries:
        try:
            return str(catalog.model_row(t)["name"])
        except UnknownNameError:
            continue
    return None


def _model_field(r: _R, key: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise r.fail(f"{key} must name a model (an HF id or a local path), got {value!r}")
    name = catalog_model(value)
    if name is not None:
        r.set("model", name, key, shown=f"{name} (catalog; from {value})")
    else:
        r.set("model", value.strip(), key)


def config_model(config: str | Mapping[str, Any]) -> str | None:
    """Return the model a config (text or mapping) names, or None.

    Raises:
        InvalidConfigError: the config cannot be read (the request cannot take it either).

    """
    cfg = parse_config_text(config) if isinstance(config, str) else config
    model = request_fields_from_config(cfg).fields.get("model")
    return model if isinstance(model, str) else None


def model_from_config(cfg: Mapping[str, Any]) -> str | None:
    """Return the model a config names (its catalog name where possible), or None."""
    try:
        got = request_fields_from_config(cfg)
    except InvalidConfigError:
        return None
    model = got.fields.get("model")
    return model if isinstance(model, str) else None


# ----------------------------------------------------------------------------- readers


def _lora(r: int, alpha: Any, dropout: Any, targets: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"r": r}
    if alpha is not None:
        out["alpha"] = float(alpha)
    if dropout is not None:
        out["dropout"] = float(dropout)
    if targets:
        out["targets"] = list(targets)
    return out


def _targets(r: _R, key: str, value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        items = [t.strip() for t in value.replace("+", ",").split(",") if t.strip()]
    elif isinstance(value, list | tuple):
        items = [str(t).strip() for t in value]
    else:
        raise r.fail(f"{key} must be a list of module names, got {value!r}")
    if any(t in ("all", "all-linear", "all_linear") for t in items):
        return ["all-linear"]
    return items


def _litgpt(r: _R) -> None:
    """LitGPT 0.5.13 ``finetune/{lora,full}.py`` ``setup()`` arguments."""
    r.set("framework", "litgpt", "(format)")
    _model_field(r, "checkpoint_dir", r.get("checkpoint_dir"))
    precision = r.get("precision")
    if precision is not None:
        p = str(precision).strip().lower()
        table = {
            "bf16-true": ("bf16", "no"),
            "bf16-mixed": ("fp32", "bf16"),
            "16-true": ("fp16", "no"),
            "16-mixed": ("fp32", "fp16"),
            "32-true": ("fp32", "no"),
            "32": ("fp32", "no"),
        }
        if p not in table:
            hint = closest_match(p, list(table))
            raise r.fail(
                f"precision '{precision}' is not accepted"
                + (f". Did you mean '{hint}'?" if hint else "")
                + f" Accepted: {', '.join(table)}"
            )
        dtype, mp = table[p]
        r.set("dtype", dtype, "precision", shown=f"{dtype} ({precision})")
        if mp != "no":
            r.set("mixed_precision", mp, "precision")
    else:
        r.notes.append("precision not set: LitGPT picks bf16-mixed on a bf16 GPU")
        r.set("dtype", "fp32", "precision (default bf16-mixed)")
        r.set("mixed_precision", "bf16", "precision (default bf16-mixed)")
    quantize = r.get("quantize")
    lora_keys = [k for k in r.cfg if str(k).startswith("lora_")]
    if lora_keys or quantize is not None:
        rank = r.integer("lora_r", r.get("lora_r", 8))
        names = {
            "lora_query": ("q_proj", True),
            "lora_key": ("k_proj", False),
            "lora_value": ("v_proj", True),
            "lora_projection": ("o_proj", False),
            "lora_mlp": ("gate_proj+up_proj+down_proj", False),
            "lora_head": ("lm_head", False),
        }
        targets: list[str] = []
        for key, (mod, default) in names.items():
            if r.flag(key, default):
                targets += mod.split("+")
        if not targets:
            raise r.fail(
                "lora_query, lora_key, lora_value, lora_projection, lora_mlp and "
                "lora_head are all false: LoRA would train nothing"
            )
        spec = _lora(rank, r.get("lora_alpha", 16), r.get("lora_dropout", 0.05), targets)
        r.use(*lora_keys, "lora_r")
        if quantize is not None:
            q = str(quantize).strip().lower()
            if q not in ("bnb.nf4", "bnb.nf4-dq", "bnb.fp4", "bnb.fp4-dq", "bnb.int8-training"):
                raise r.fail(
                    f"quantize '{quantize}' is not accepted; accepted: bnb.nf4, "
                    "bnb.nf4-dq, bnb.fp4, bnb.fp4-dq, bnb.int8-training"
                )
            if "mixed" in str(precision or "bf16-mixed"):
                raise r.fail(
                    f"quantize {quantize} with precision {precision or 'bf16-mixed (default)'}: "
                    "LitGPT refuses quantization with mixed precision; use bf16-true"
                )
            if q.startswith("bnb.int8"):
                r.set("lora", spec, "lora_*")
                r.set("quant", "int8", "quantize")
            else:
                r.set("qlora", spec, "lora_* + quantize")
                r.set("quant", q[4:7], "quantize")
        else:
            r.set("lora", spec, "lora_*")
    train = r.section("train")
    r.use("train")
    devices = r.integer("devices", r.get("devices", 1)) if r.get("devices") != "auto" else 1
    nodes = r.integer("num_nodes", r.get("num_nodes", 1))
    micro = r.integer("train.micro_batch_size", train.get("micro_batch_size", 1))
    r.set("batch_size", micro, "train.micro_batch_size")
    glob = r.integer("train.global_batch_size", train.get("global_batch_size", 16))
    per_rank = glob // (devices * nodes)
    if per_rank // micro < 1:
        raise r.fail(
            f"train.global_batch_size {glob} is smaller than train.micro_batch_size {micro} x "
            f"devices {devices * nodes}: LitGPT asserts gradient_accumulation_iters > 0"
        )
    r.set(
        "grad_accum",
        per_rank // micro,
        "train.global_batch_size",
        shown=f"{per_rank // micro} ({glob} // {devices * nodes} // {micro})",
    )
    seq = train.get("max_seq_length")
    if seq is not None:
        r.set("seq_len", r.integer("train.max_seq_length", seq), "train.max_seq_length")
    else:
        r.notes.append(
            "train.max_seq_length not set: LitGPT trains on the longest sample; give --seq-len"
        )
    if devices * nodes > 1:
        r.set("gpus", devices, "devices")
        if nodes > 1:
            r.set("nodes", nodes, "num_nodes")
        full = not (lora_keys or quantize is not None)
        # finetune/full.py: FSDPStrategy(activation_checkpointing_policy={Block});
        # finetune/lora.py: ModelParallelStrategy + parallelize_fn (fully_shard, checkpoint)
        r.set("fsdp", "full_shard", "devices")
        r.set("fsdp_version", 1 if full else 2, "devices")
        r.set("grad_ckpt", True, "devices", shown="true (LitGPT checkpoints each Block under FSDP)")
    r.use("devices", "num_nodes", "precision", "quantize", "checkpoint_dir")
    optimizer = r.get("optimizer")
    if optimizer is not None:
        name = optimizer if isinstance(optimizer, str) else (optimizer or {}).get("class_path")
        short = str(name).rsplit(".", 1)[-1].lower()
        optim = {"adamw": "adamw_torch", "adam": "adamw_torch", "sgd": "sgd"}.get(short)
        if optim is None:
            raise r.fail(f"optimizer '{name}' is not modelled; accepted: AdamW, Adam, SGD")
        r.set("optim", optim, "optimizer")


def _component(value: Any) -> str:
    if isinstance(value, Mapping):
        return str(value.get("_component_", ""))
    return str(value or "")


def _torchtune(r: _R) -> None:
    """Torchtune 0.6.1 recipe configs (``recipes/configs/*``) and recipe options."""
    r.set("framework", "torchtune", "(format)")
    model = r.section("model")
    comp = _component(model)
    builder = comp.rsplit(".", 1)[-1]
    qlora = builder.startswith("qlora_")
    lora = qlora or builder.startswith("lora_")
    base = re.sub(r"^(q?lora_)", "", builder)
    base = re.sub(r"_(instruct|base)$", "", base)
    name = _TORCHTUNE_MODELS.get(base)
    if name is None:
        hint = closest_match(base, list(_TORCHTUNE_MODELS))
        raise r.fail(
            f"model._component_ '{comp}' has no catalog model"
            + (f". Did you mean '{hint}'?" if hint else "")
            + f" Accepted builders: {', '.join(sorted(_TORCHTUNE_MODELS))}"
        )
    r.set("model", name, "model._component_", shown=f"{name} ({builder})")
    if lora:
        attn = model.get("lora_attn_modules") or []
        tmap = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "output_proj": "o_proj"}
        bad = [m for m in attn if m not in tmap]
        if bad:
            raise r.fail(f"model.lora_attn_modules {bad} not accepted; accepted: {list(tmap)}")
        targets = [tmap[m] for m in attn]
        if r.flag("model.apply_lora_to_mlp", False, model.get("apply_lora_to_mlp")):
            targets += ["gate_proj", "up_proj", "down_proj"]
        if r.flag("model.apply_lora_to_output", False, model.get("apply_lora_to_output")):
            targets.append("lm_head")
        if not targets:
            raise r.fail(
                "model.lora_attn_modules is empty and no MLP/output LoRA: LoRA would train nothing"
            )
        rank = r.integer("model.lora_rank", model.get("lora_rank", 8))
        spec = _lora(rank, model.get("lora_alpha"), model.get("lora_dropout", 0.0), targets)
        r.set("qlora" if qlora else "lora", spec, "model.lora_*")
        if qlora:
            r.set("quant", "nf4", "model._component_", shown="nf4 (torchao NF4Tensor)")
    dtype = str(r.get("dtype", "bf16")).lower()
    table = {"bf16": "bf16", "fp32": "fp32", "float32": "fp32", "bfloat16": "bf16"}
    if dtype not in table:
        raise r.fail(f"dtype '{dtype}' is not accepted; torchtune recipes take bf16 or fp32")
    r.set("dtype", table[dtype], "dtype")
    r.set("batch_size", r.integer("batch_size", r.get("batch_size", 1)), "batch_size")
    accum = r.integer("gradient_accumulation_steps", r.get("gradient_accumulation_steps", 1))
    r.set("grad_accum", accum, "gradient_accumulation_steps")
    tok = r.section("tokenizer")
    r.use("tokenizer")
    if tok.get("max_seq_len") is not None:
        r.set(
            "seq_len",
            r.integer("tokenizer.max_seq_len", tok["max_seq_len"]),
            "tokenizer.max_seq_len",
        )
    else:
        r.notes.append(
            "tokenizer.max_seq_len is null: samples keep their own length; give --seq-len"
        )
    ds = r.get("dataset")
    dsets = ds if isinstance(ds, list) else [ds] if isinstance(ds, Mapping) else []
    if any(
        isinstance(d, Mapping) and r.flag("dataset.packed", False, d.get("packed")) for d in dsets
    ):
        r.set("packing", True, "dataset.packed")
    r.use("dataset")
    ckpt = r.flag("enable_activation_checkpointing", False)
    r.set("grad_ckpt", ckpt, "enable_activation_checkpointing")
    offload = r.flag("enable_activation_offloading", False)
    if offload and not ckpt:
        raise r.fail(
            "enable_activation_offloading true needs enable_activation_checkpointing "
            "true (the recipes raise RuntimeError otherwise)"
        )
    if offload:
        r.set("activation_offload", True, "enable_activation_offloading")
    r.use("enable_activation_offloading")
    in_bwd = r.flag("optimizer_in_bwd", False)
    if in_bwd:
        if lora:
            raise r.fail(
                "optimizer_in_bwd is a full-finetune recipe option; the LoRA recipes do not read it"
            )
        if accum > 1:
            raise r.fail(
                f"optimizer_in_bwd true with gradient_accumulation_steps {accum}: "
                "the recipe raises RuntimeError (set it to 1)"
            )
        r.set("optimizer_in_backward", True, "optimizer_in_bwd")
    r.use("optimizer_in_bwd")
    if r.flag("compile", False):
        r.set("compile", True, "compile")
    r.use("compile")
    loss = _component(r.get("loss"))
    if loss:
        short = loss.rsplit(".", 1)[-1]
        if short == "CEWithChunkedOutputLoss":
            r.set("loss", "chunked", "loss._component_")
            lo = r.section("loss")
            if lo.get("num_output_chunks") is not None:
                r.set(
                    "loss_chunks",
                    r.integer("loss.num_output_chunks", lo["num_output_chunks"]),
                    "loss.num_output_chunks",
                )
        elif short == "CrossEntropyLoss":
            r.set("loss", "full", "loss._component_")
        elif short == "LinearCrossEntropyLoss":
            r.set("loss", "fused_linear", "loss._component_")
        else:
            raise r.fail(
                f"loss._component_ '{loss}' is not modelled; accepted: "
                "CEWithChunkedOutputLoss, torch.nn.CrossEntropyLoss"
            )
    opt = _component(r.get("optimizer"))
    if opt:
        short = opt.rsplit(".", 1)[-1]
        table_o = {
            "AdamW": "adamw_torch",
            "Adam": "adamw_torch",
            "SGD": "sgd",
            "PagedAdamW8bit": "paged_adamw_8bit",
            "AdamW8bit": "adamw_bnb_8bit",
            "PagedAdamW": "paged_adamw_32bit",
            "PagedAdamW32bit": "paged_adamw_32bit",
        }
        optim = table_o.get(short)
        if optim is None:
            raise r.fail(
                f"optimizer._component_ '{opt}' is not modelled; accepted: {', '.join(table_o)}"
            )
        if opt.startswith("torchao.") and short == "AdamW8bit":
            r.notes.append("torchao AdamW8bit modelled as bitsandbytes 8-bit AdamW (same widths)")
        if optim == "adamw_torch" and r.flag(
            "optimizer.fused", False, r.section("optimizer").get("fused")
        ):
            optim = "adamw_torch_fused"
        r.set("optim", optim, "optimizer._component_", shown=f"{optim} ({opt})")
    fsdp_keys = [k for k in ("fsdp_cpu_offload", "fsdp_reshard_after_forward") if k in r.cfg]
    if fsdp_keys:
        r.set("fsdp", "full_shard", fsdp_keys[0], shown="full_shard (a distributed recipe)")
        r.set("fsdp_version", 2, fsdp_keys[0], shown="2 (torchtune shards with fully_shard)")
        if r.flag("fsdp_cpu_offload", False):
            r.set("fsdp_offload", True, "fsdp_cpu_offload")
        if "fsdp_reshard_after_forward" in r.cfg:
            r.set(
                "fsdp_reshard_after_forward",
                r.flag("fsdp_reshard_after_forward"),
                "fsdp_reshard_after_forward",
            )
        r.notes.append("the world size comes from `tune run --nproc_per_node`: give --gpus")
        r.use(*fsdp_keys)
    r.use("model", "dtype", "batch_size", "gradient_accumulation_steps", "loss", "optimizer")


def _attn(r: _R, key: str, value: str) -> None:
    r.set("attn", value, key)


def _hf_precision(r: _R, loaded: str | None, bf16_default: bool = False) -> None:
    """``bf16``/``fp16`` TrainingArguments flags (AMP) over the load dtype ``loaded``."""
    fp16 = r.flag("fp16", False)
    bf16 = r.flag("bf16", bf16_default and not fp16)
    if bf16 and fp16:
        raise r.fail("bf16 and fp16 are both true; transformers refuses both (set one)")
    flag = "bf16" if bf16 else "fp16" if fp16 else None
    if loaded is not None:
        r.set("dtype", loaded, flag or "dtype")
    if flag is not None:
        if loaded in (None, "fp32"):
            r.set("mixed_precision", flag, flag if flag in r.cfg else f"{flag} (default)")
        else:
            r.notes.append(f"{flag} autocast over {loaded} weights: modelled as pure {loaded}")
    r.use("bf16", "fp16")


def _sharding(r: _R, ds_key: str = "deepspeed") -> None:
    ds = r.get(ds_key)
    fsdp = r.get("fsdp")
    fsdp_on = bool(fsdp) and fsdp not in ("", [], None)
    if ds and fsdp_on:
        raise r.fail(f"{ds_key} and fsdp are both set; a run uses one of them")
    if ds:
        if isinstance(ds, str):
            r.ds_file = ds
            r.notes.append(f"{ds_key} -> the DeepSpeed config {ds}")
        elif isinstance(ds, Mapping):
            r.set("deepspeed", dict(ds), ds_key, shown="(inline config)")
        else:
            raise r.fail(f"{ds_key} must be a path or a mapping, got {ds!r}")
        r.use(ds_key)
    if fsdp_on:
        words = fsdp if isinstance(fsdp, list) else str(fsdp).split()
        words = [str(w).strip().lower() for w in words]
        strategies = ("full_shard", "shard_grad_op", "hybrid_shard", "no_shard")
        strat = next((w for w in words if w in strategies), "full_shard")
        r.set("fsdp", strat, "fsdp")
        if "offload" in words:
            r.set("fsdp_offload", True, "fsdp")
        fc = r.section("fsdp_config")
        if fc.get("fsdp_version") is not None or fc.get("version") is not None:
            v = r.integer("fsdp_config.fsdp_version", fc.get("fsdp_version", fc.get("version")))
            r.set("fsdp_version", v, "fsdp_config.fsdp_version")
        off = fc.get("offload_params", fc.get("fsdp_offload_params"))
        if off is not None and r.flag("fsdp_config.offload_params", False, off):
            r.set("fsdp_offload", True, "fsdp_config.offload_params")
        r.use("fsdp", "fsdp_config")


def _axolotl(r: _R) -> None:
    """Read axolotl YAML keys (``src/axolotl/utils/schemas/config.py``; its ``examples/``)."""
    r.set("framework", "hf", "(format)", shown="hf (axolotl runs transformers' Trainer)")
    _model_field(r, "base_model", r.get("base_model"))
    adapter = str(r.get("adapter") or "").lower()
    four, eight = r.flag("load_in_4bit", False), r.flag("load_in_8bit", False)
    if four and eight:
        raise r.fail("load_in_4bit and load_in_8bit are both true; set one")
    if adapter == "qlora" and not four:
        raise r.fail("adapter qlora needs load_in_4bit: true (axolotl refuses it otherwise)")
    if adapter not in ("", "lora", "qlora"):
        raise r.fail(f"adapter '{adapter}' is not modelled; accepted: lora, qlora")
    if adapter:
        targets = _targets(r, "lora_target_modules", r.get("lora_target_modules"))
        if r.flag("lora_target_linear", False):
            targets = ["all-linear"]
        spec = _lora(
            r.integer("lora_r", r.get("lora_r", 8)),
            r.get("lora_alpha"),
            r.get("lora_dropout"),
            targets,
        )
        if four:
            r.set("qlora", spec, "adapter + load_in_4bit")
        else:
            r.set("lora", spec, "adapter")
            if eight:
                r.set("quant", "int8", "load_in_8bit")
        r.use("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_target_linear")
    elif four or eight:
        raise r.fail(
            "load_in_4bit/load_in_8bit without an adapter: a quantized base cannot be "
            "fully fine-tuned (set adapter: lora or qlora)"
        )
    r.use("adapter", "load_in_4bit", "load_in_8bit")
    bf16 = r.flag("bf16", False)
    fp16 = r.flag("fp16", False)
    loaded = "bf16" if bf16 else "fp16" if fp16 else None
    _hf_precision(r, loaded)
    if r.get("sequence_len") is not None:
        r.set("seq_len", r.integer("sequence_len"), "sequence_len")
    r.set(
        "batch_size",
        r.integer("micro_batch_size", r.get("micro_batch_size", 1)),
        "micro_batch_size",
    )
    if r.get("gradient_accumulation_steps") is not None:
        r.set("grad_accum", r.integer("gradient_accumulation_steps"), "gradient_accumulation_steps")
    if r.get("optimizer") is not None:
        r.set("optim", str(r.get("optimizer")), "optimizer")
    gc = r.get("gradient_checkpointing")
    if gc is not None:
        offload = str(gc).lower() in ("offload", "offload_disk", "unsloth")
        r.set("grad_ckpt", offload or r.flag("gradient_checkpointing"), "gradient_checkpointing")
        if offload:
            r.set("checkpoint_offload", True, "gradient_checkpointing")
    if r.flag("sample_packing", False):
        r.set("packing", True, "sample_packing")
    r.use("sample_packing")
    if r.flag("flash_attention", False):
        _attn(r, "flash_attention", "flash_attention_2")
    elif r.flag("sdp_attention", False):
        _attn(r, "sdp_attention", "sdpa")
    elif r.flag("eager_attention", False):
        _attn(r, "eager_attention", "eager")
    elif r.get("attn_implementation") is not None:
        _attn(r, "attn_implementation", str(r.get("attn_implementation")))
    r.use("attn_implementation")
    r.use("flash_attention", "sdp_attention", "eager_attention")
    plugins = [str(p) for p in (r.get("plugins") or [])]
    liger = any("liger" in p.lower() for p in plugins)
    if liger and any(
        r.flag(k, False) for k in ("liger_rms_norm", "liger_glu_activation", "liger_rope")
    ):
        r.set("liger", True, "plugins (LigerPlugin)")
    if liger and r.flag("liger_fused_linear_cross_entropy", False):
        r.set("loss", "fused_linear", "liger_fused_linear_cross_entropy")
    if r.flag("cut_cross_entropy", False):
        r.set("loss", "fused_linear", "cut_cross_entropy")
    r.use(
        "plugins",
        "liger_rms_norm",
        "liger_glu_activation",
        "liger_rope",
        "liger_fused_linear_cross_entropy",
        "cut_cross_entropy",
        "liger_layer_norm",
    )
    if r.flag("torch_compile", False):
        r.set("compile", True, "torch_compile")
    r.use(
        "torch_compile",
        "base_model",
        "sequence_len",
        "micro_batch_size",
        "gradient_accumulation_steps",
        "optimizer",
        "gradient_checkpointing",
    )
    _sharding(r)


def _llamafactory(r: _R) -> None:
    """LLaMA-Factory YAML keys (``src/llamafactory/hparams/*_args.py``; ``examples/``)."""
    stage = str(r.get("stage", "sft")).lower()
    if stage not in ("sft", "pt"):
        raise r.fail(f"stage '{stage}' is not modelled; accepted: sft, pt")
    unsloth = r.flag("use_unsloth", False)
    r.set("framework", "unsloth" if unsloth else "hf", "use_unsloth" if unsloth else "(format)")
    _model_field(r, "model_name_or_path", r.get("model_name_or_path"))
    ft = str(r.get("finetuning_type", "lora")).lower()
    if ft not in ("lora", "full"):
        raise r.fail(f"finetuning_type '{ft}' is not modelled; accepted: lora, full")
    qbit = r.get("quantization_bit")
    if qbit is not None and str(qbit) not in ("4", "8"):
        raise r.fail(f"quantization_bit {qbit} is not modelled; accepted: 4, 8 (bitsandbytes)")
    method = str(r.get("quantization_method", "bitsandbytes")).lower()
    if qbit is not None and method != "bitsandbytes":
        raise r.fail(f"quantization_method '{method}' is not modelled; accepted: bitsandbytes")
    r.use("quantization_method")
    if qbit is not None and ft != "lora":
        raise r.fail(
            f"quantization_bit {qbit} with finetuning_type {ft}: only LoRA trains "
            "over a quantized base"
        )
    if ft == "lora":
        targets = _targets(r, "lora_target", r.get("lora_target", "all"))
        rank = r.integer("lora_rank", r.get("lora_rank", 8))
        # finetuning_args.py: lora_alpha defaults to lora_rank * 2
        spec = _lora(
            rank,
            r.get("lora_alpha", rank * 2),
            r.get("lora_dropout", 0.0),
            targets,
        )
        if str(qbit) == "4":
            r.set("qlora", spec, "finetuning_type lora + quantization_bit 4")
        else:
            r.set("lora", spec, "finetuning_type lora")
            if str(qbit) == "8":
                r.set("quant", "int8", "quantization_bit")
    r.use(
        "stage",
        "finetuning_type",
        "quantization_bit",
        "lora_rank",
        "lora_alpha",
        "lora_dropout",
        "lora_target",
        "model_name_or_path",
        "use_unsloth",
    )
    bf16 = r.flag("bf16", False)
    fp16 = r.flag("fp16", False)
    # model_args.py: compute dtype = bf16/fp16 when those flags are set; the model is loaded in
    # it (infer_optim_dtype), and full fine-tuning upcasts to fp32 unless pure_bf16
    loaded = ("bf16" if bf16 else "fp16" if fp16 else None) if ft == "lora" else None
    if ft == "full" and r.flag("pure_bf16", False):
        loaded = "bf16"
    r.use("pure_bf16")
    _hf_precision(r, loaded)
    if r.get("cutoff_len") is not None:
        r.set("seq_len", r.integer("cutoff_len"), "cutoff_len")
    r.set(
        "batch_size",
        r.integer("per_device_train_batch_size", r.get("per_device_train_batch_size", 1)),
        "per_device_train_batch_size",
    )
    if r.get("gradient_accumulation_steps") is not None:
        r.set("grad_accum", r.integer("gradient_accumulation_steps"), "gradient_accumulation_steps")
    if r.get("optim") is not None:
        r.set("optim", str(r.get("optim")), "optim")
    # model_args.py: disable_gradient_checkpointing defaults to False -> checkpointing on
    r.set(
        "grad_ckpt",
        not r.flag("disable_gradient_checkpointing", False),
        "disable_gradient_checkpointing",
    )
    if r.flag("use_unsloth_gc", False):
        r.set("checkpoint_offload", True, "use_unsloth_gc")
    fa = str(r.get("flash_attn", "auto")).lower()
    table = {"fa2": "flash_attention_2", "sdpa": "sdpa", "disabled": "eager", "auto": "sdpa"}
    if fa not in table:
        raise r.fail(f"flash_attn '{fa}' is not accepted; accepted: {', '.join(table)}")
    if "flash_attn" in r.cfg:
        r.set("attn", table[fa], "flash_attn")
    if r.flag("packing", False) or r.flag("neat_packing", False):
        r.set("packing", True, "packing")
    if r.flag("enable_liger_kernel", False):
        r.set("liger", True, "enable_liger_kernel")
    r.use(
        "cutoff_len",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "optim",
        "disable_gradient_checkpointing",
        "use_unsloth_gc",
        "flash_attn",
        "packing",
        "neat_packing",
        "enable_liger_kernel",
    )
    _sharding(r)


def _trl(r: _R) -> None:
    """TRL ``SFTConfig`` (a ``TrainingArguments``) + ``ModelConfig`` keys (trl 1.16)."""
    r.set("framework", "hf", "(format)", shown="hf (transformers Trainer / TRL)")
    if r.get("model_name_or_path") is not None:
        _model_field(r, "model_name_or_path", r.get("model_name_or_path"))
    loaded = None
    for key in ("dtype", "torch_dtype"):
        v = r.get(key)
        if v is not None and str(v) != "auto":
            table = {
                "bfloat16": "bf16",
                "float16": "fp16",
                "float32": "fp32",
                "bf16": "bf16",
                "fp16": "fp16",
                "fp32": "fp32",
            }
            if str(v) not in table:
                raise r.fail(f"{key} '{v}' is not accepted; accepted: bfloat16, float16, float32")
            loaded = table[str(v)]
        r.use(key)
    # trl/trainer/sft_config.py + base_config.py (trl 1.16): bf16 defaults to true unless fp16,
    # gradient_checkpointing to true, max_length to 1024; ModelConfig.dtype to float32
    if loaded is None:
        loaded = "fp32"
        r.notes.append("dtype not set: TRL's ModelConfig loads the model in float32")
    _hf_precision(r, loaded, bf16_default=True)
    r.set(
        "batch_size",
        r.integer("per_device_train_batch_size", r.get("per_device_train_batch_size", 8)),
        "per_device_train_batch_size",
    )
    if r.get("gradient_accumulation_steps") is not None:
        r.set("grad_accum", r.integer("gradient_accumulation_steps"), "gradient_accumulation_steps")
    key = next((k for k in ("max_length", "max_seq_length") if k in r.cfg), "max_length")
    if r.get(key, 1024) is not None:
        r.set(
            "seq_len",
            r.integer(key, r.get(key, 1024)),
            key if key in r.cfg else "max_length (default)",
        )
    r.use("max_length", "max_seq_length")
    if r.get("optim") is not None:
        r.set("optim", str(r.get("optim")), "optim")
    gc = r.flag("gradient_checkpointing", True)
    r.set(
        "grad_ckpt",
        gc,
        "gradient_checkpointing" + ("" if "gradient_checkpointing" in r.cfg else " (default)"),
    )
    if r.flag("packing", False):
        r.set("packing", True, "packing")
    if r.flag("use_liger_kernel", False):
        r.set("liger", True, "use_liger_kernel")
    if r.flag("torch_compile", False):
        r.set("compile", True, "torch_compile")
    if r.get("attn_implementation") is not None:
        r.set("attn", str(r.get("attn_implementation")), "attn_implementation")
    four, eight = r.flag("load_in_4bit", False), r.flag("load_in_8bit", False)
    if four and eight:
        raise r.fail("load_in_4bit and load_in_8bit are both true; set one")
    if r.flag("use_peft", False):
        targets = _targets(r, "lora_target_modules", r.get("lora_target_modules"))
        spec = _lora(
            r.integer("lora_r", r.get("lora_r", 16)),
            r.get("lora_alpha", 32),
            r.get("lora_dropout", 0.05),
            targets,
        )
        if four:
            r.set("qlora", spec, "use_peft + load_in_4bit")
        else:
            r.set("lora", spec, "use_peft")
            if eight:
                r.set("quant", "int8", "load_in_8bit")
    elif four or eight:
        raise r.fail(
            "load_in_4bit/load_in_8bit without use_peft: a quantized base cannot be "
            "fully fine-tuned"
        )
    r.use(
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "optim",
        "gradient_checkpointing",
        "packing",
        "use_liger_kernel",
        "torch_compile",
        "attn_implementation",
        "use_peft",
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "lora_target_modules",
        "load_in_4bit",
        "load_in_8bit",
        "model_name_or_path",
    )
    _sharding(r)


def _accelerate(r: _R) -> None:
    from vramcalc.accelerate_config import request_fields_from_accelerate

    got = request_fields_from_accelerate(r.cfg)  # validates; resolve applies it
    ds_file = got.deepspeed_config_file
    r.fields["accelerate_config"] = dict(r.cfg)
    r.sources["accelerate_config"] = "(file)"
    # its notes and ignored keys are reported once, by apply_accelerate
    del got
    r.ds_file = ds_file
    r.use(*[str(k) for k in r.cfg])


_READERS: dict[str, Callable[[_R], None]] = {
    "litgpt": _litgpt,
    "torchtune": _torchtune,
    "axolotl": _axolotl,
    "llamafactory": _llamafactory,
    "trl": _trl,
    "accelerate": _accelerate,
}


def request_fields_from_config(cfg: Mapping[str, Any], fmt: str | None = None) -> ConfigFields:
    """Map a trainer config (parsed YAML/JSON) onto ``EstimateRequest`` fields.

    Args:
        cfg: the parsed file.
        fmt: one of ``CONFIG_FORMATS``; detected from the keys when None.

    Raises:
        InvalidConfigError: unknown format, a bad value or contradictory keys (the message
            names the key).

    """
    fmt = fmt or detect_format(cfg)
    if fmt not in _READERS:
        raise UnknownNameError("config format", fmt, list(CONFIG_FORMATS))
    r = _R(fmt, cfg)
    _READERS[fmt](r)
    return r.done({})


def apply_config(req: Any) -> tuple[Any, list[str]]:
    """Fill a request's unset fields from its ``config``; explicit fields (flags) win.

    Returns the request with the file's settings filled in and ``config`` cleared, and notes:
    the format, each setting used, each setting a flag overrode, and the ignored keys.

    Raises:
        InvalidConfigError: a bad file, a ``deepspeed`` path whose contents are not in the
            request, or a filled-in request that does not validate.

    """
    from vramcalc.specs import EstimateRequest

    cfg = getattr(req, "config", None)
    if cfg is None:
        return req, []
    if isinstance(cfg, str):
        cfg = parse_config_text(cfg)
    mapped = request_fields_from_config(cfg)
    explicit = {name: getattr(req, name) for name in req.model_fields_set}
    explicit.pop("config", None)
    fmt = mapped.format
    notes = [f"config ({fmt}): {n}" for n in mapped.notes]
    overridden = []
    for field, value in mapped.fields.items():
        if field in explicit and field != "model":
            mine = getattr(explicit[field], "value", explicit[field])
            if str(mine).lower() != str(value).lower():
                overridden.append(f"{field} {_show(mine)} (the file says {_show(value)})")
    if overridden:
        notes.append(f"config ({fmt}): overridden by options: " + "; ".join(overridden))
    if mapped.deepspeed_config_file is not None and explicit.get("deepspeed") is None:
        raise InvalidConfigError(
            f"config ({fmt}): deepspeed names the file '{mapped.deepspeed_config_file}'; send "
            "its contents as 'deepspeed' (the CLI reads it next to the config)"
        )
    if mapped.ignored:
        notes.append(f"config ({fmt}) ignored: " + "; ".join(mapped.ignored))
    merged = {**mapped.fields, **explicit}
    merged.pop("config", None)
    try:
        out = EstimateRequest.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first.get("loc", ()))
        msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        src = mapped.sources.get(loc.split(".")[0], loc)
        raise InvalidConfigError(
            f"config ({fmt}): {src} gives {loc} a value the estimator refuses: {msg}"
        ) from None
    return out, notes
