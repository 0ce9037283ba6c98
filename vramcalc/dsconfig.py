"""Read the memory-relevant settings out of a real DeepSpeed config.

``"auto"`` values are resolved as transformers' ``HfTrainerDeepSpeedConfig`` does
(``trainer_config_process`` and ``trainer_config_finalize`` in
``transformers/integrations/deepspeed.py``): precision from the mixed-precision flag, micro
batch and accumulation from the command line, ``reduce_bucket_size = hidden^2``,
``stage3_prefetch_bucket_size = int(0.9 * hidden^2)``,
``stage3_param_persistence_threshold = 10 * hidden``. Absent keys take DeepSpeed's defaults
(``data/constants.json``, read from ``deepspeed/runtime/zero/config.py``).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field

from vramcalc import catalog
from vramcalc.enums import Offload, ZeroStage
from vramcalc.errors import InvalidConfigError
from vramcalc.limits import MAX_INT
from vramcalc.specs import ZeroSpec

__all__ = ["DeepSpeedSettings", "flag_conflicts", "parallel_from_deepspeed"]


class DeepSpeedSettings(ZeroSpec):
    """What a DeepSpeed config decides about memory: the ZeRO spec and notes on what it read."""

    notes: list[str] = Field(default_factory=list)

    def spec(self) -> ZeroSpec:
        """Return the ZeRO spec the engine reads (without the notes)."""
        return ZeroSpec(**self.model_dump(exclude={"notes"}))


def _is_auto(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() == "auto"


def _int(section: dict[str, Any], key: str, auto: int, default: int) -> int:
    value = section.get(key, default)
    if _is_auto(value):
        return auto
    number = _integer(value)
    if number is None:
        raise InvalidConfigError(
            f'DeepSpeed zero_optimization.{key} must be a whole number or "auto", got '
            f"{_shown(value)}"
        )
    if number < 0:
        raise InvalidConfigError(f"DeepSpeed zero_optimization.{key} must be >= 0, got {number}")
    if number > MAX_INT:
        raise InvalidConfigError(
            f"DeepSpeed zero_optimization.{key}={number:.3g} is above the limit of {MAX_INT} "
            "(2**53)"
        )
    return number


def _integer(value: Any) -> int | None:
    """Return a whole number from an int, an integral finite float (``5e8``) or a numeric str.

    Booleans, fractions (``2.7``), non-finite values (``Infinity``, ``"inf"``, ``1e400``) and
    integers beyond 2**53 give None: DeepSpeed's pydantic config refuses them too (or, for the
    non-finite ones, fails deep inside its engine).
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if abs(value) <= MAX_INT else None
    if isinstance(value, str):
        text = value.strip()
        if not text or len(text) > 32:
            return None
        try:
            value = int(text) if text.lstrip("+-").isdigit() else float(text)
        except ValueError:
            return None
        if isinstance(value, int):
            return value if abs(value) <= MAX_INT else None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value) if abs(value) <= MAX_INT else None
    return None


def _shown(value: Any) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int beyond sys.get_int_max_str_digits()
        return "a huge integer"
    return text if len(text) <= 60 else text[:57] + "..."


def _concrete_enabled(config: dict[str, Any], key: str) -> bool | None:
    """``config[key]["enabled"]`` when the file states it (None: absent or "auto")."""
    section = config.get(key)
    if section is None:
        return None
    if not isinstance(section, dict):
        raise InvalidConfigError(f"DeepSpeed {key} must be an object, got {_shown(section)}")
    value = section.get("enabled", False)
    if _is_auto(value):
        return None
    if not isinstance(value, bool):
        raise InvalidConfigError(
            f'DeepSpeed {key}.enabled must be true, false or "auto", got {_shown(value)}'
        )
    return value


def _enabled(config: dict[str, Any], key: str, flag: bool) -> bool:
    """Whether a precision section is on: the file's value, else the mixed-precision flag.

    ``"auto"`` takes the flag (HfTrainerDeepSpeedConfig); an absent section takes it too,
    as accelerate's ``DeepSpeedPlugin.set_mixed_precision`` adds ``{"enabled": true}`` for the
    chosen precision. A concrete value that contradicts an explicit flag is refused earlier
    (``flag_conflicts``); here the file's concrete value wins.
    """
    value = _concrete_enabled(config, key)
    return flag if value is None else value


def _offload(section: dict[str, Any], key: str) -> Offload:
    sub = section.get(key)
    if sub is None:
        return Offload.NONE
    if not isinstance(sub, dict):
        raise InvalidConfigError(f"DeepSpeed zero_optimization.{key} must be an object")
    raw = sub.get("device", "none")
    device = "none" if raw is None else raw.lower() if isinstance(raw, str) else raw
    try:
        return Offload(device)
    except ValueError:
        raise InvalidConfigError(
            f"DeepSpeed zero_optimization.{key}.device {_shown(device)} is not supported; "
            "accepted: none, cpu, nvme"
        ) from None


def _zero_section(config: dict[str, Any]) -> dict[str, Any]:
    zero = config.get("zero_optimization", {})
    if isinstance(zero, bool):
        # deprecated boolean form: deepspeed/runtime/zero/config.py read_zero_config_deprecated
        zero = {"stage": 1 if zero else 0}
    if not isinstance(zero, dict):
        raise InvalidConfigError("DeepSpeed zero_optimization must be an object")
    zero = dict(zero)
    # legacy booleans (DeepSpeedZeroConfig cpu_offload / cpu_offload_param, deprecated aliases)
    if zero.get("cpu_offload") is True and "offload_optimizer" not in zero:
        zero["offload_optimizer"] = {"device": "cpu"}
    if zero.get("cpu_offload_param") is True and "offload_param" not in zero:
        zero["offload_param"] = {"device": "cpu"}
    return zero


def _stage(zero: dict[str, Any]) -> ZeroStage:
    raw = zero.get("stage", 0)
    number = _integer(raw)
    if number is None or number not in {int(s) for s in ZeroStage}:
        raise InvalidConfigError(
            f"DeepSpeed zero_optimization.stage {_shown(raw)} is not supported; "
            "accepted: 0, 1, 2, 3"
        )
    return ZeroStage(number)


def flag_conflicts(
    config: dict[str, Any],
    *,
    zero: ZeroStage | None = None,
    offload_optimizer: Offload | None = None,
    offload_param: Offload | None = None,
    mixed_precision: str | None = None,
) -> list[str]:
    """List the explicit flags that contradict the DeepSpeed config's concrete values.

    A flag is ``None`` when the user did not give it. Each returned item names both values,
    e.g. ``--zero 3 contradicts zero_optimization.stage=2``.

    Raises:
        InvalidConfigError: the config itself is malformed (stage, offload, precision).

    """
    if not isinstance(config, dict):
        raise InvalidConfigError("a DeepSpeed config must be a JSON object")
    out: list[str] = []
    zsec = _zero_section(config)
    stage = _stage(zsec)
    if zero is not None and zero != stage:
        out.append(f"--zero {int(zero)} contradicts zero_optimization.stage={int(stage)}")
    for flag, key, value in (
        ("--offload-optimizer", "offload_optimizer", offload_optimizer),
        ("--offload-param", "offload_param", offload_param),
    ):
        given = _offload(zsec, key)
        if value is not None and value != given:
            out.append(
                f"{flag} {value.value} contradicts zero_optimization.{key}.device={given.value}"
            )
    if mixed_precision is not None:
        fp16 = _concrete_enabled(config, "fp16")
        bf16_key = "bf16" if "bf16" in config or "bfloat16" not in config else "bfloat16"
        bf16 = _concrete_enabled(config, bf16_key)
        want = {"fp16": mixed_precision == "fp16", bf16_key: mixed_precision == "bf16"}
        for key, state in (("fp16", fp16), (bf16_key, bf16)):
            if state is not None and state != want[key]:
                out.append(
                    f"--mixed-precision {mixed_precision} contradicts "
                    f"{key}.enabled={str(state).lower()}"
                )
    return out


def _match(config: dict[str, Any], key: str, value: int, flag: str) -> None:
    given = config.get(key)
    if given is None or _is_auto(given):
        return
    number = _integer(given)
    if number is None:
        raise InvalidConfigError(
            f'DeepSpeed {key} must be a whole number or "auto", got {_shown(given)}'
        )
    if number != value:
        raise InvalidConfigError(
            f"DeepSpeed {key}={given} disagrees with {flag}={value}; set one of them to match "
            'or use "auto" in the config'
        )


def parallel_from_deepspeed(
    config: dict[str, Any],
    *,
    gpus_per_node: int,
    nodes: int,
    hidden_size: int,
    mixed_precision: str,
    batch_size: int,
    grad_accum: int,
) -> DeepSpeedSettings:
    """Resolve a DeepSpeed config (a parsed JSON object) into memory settings.

    Raises:
        InvalidConfigError: unknown stage or offload device, a malformed value, or a concrete
            value that contradicts the command line (as the HF integration refuses it).

    """
    if not isinstance(config, dict):
        raise InvalidConfigError("a DeepSpeed config must be a JSON object")
    zero = _zero_section(config)
    stage = _stage(zero)
    _match(config, "train_micro_batch_size_per_gpu", batch_size, "--batch-size")
    _match(config, "gradient_accumulation_steps", grad_accum, "--grad-accum")
    world = gpus_per_node * nodes
    _match(config, "train_batch_size", batch_size * grad_accum * world, "batch x accum x GPUs")
    fp16 = _enabled(config, "fp16", mixed_precision == "fp16")
    # "bfloat16" is DeepSpeed's older spelling (runtime/precision_config.py BFLOAT16_OLD)
    bf16_key = "bf16" if "bf16" in config or "bfloat16" not in config else "bfloat16"
    bf16 = _enabled(config, bf16_key, mixed_precision == "bf16")
    if fp16 and bf16:
        raise InvalidConfigError("DeepSpeed config enables both fp16 and bf16; choose one")
    precision: Literal["fp16", "bf16", "fp32"] = "bf16" if bf16 else "fp16" if fp16 else "fp32"
    h2 = hidden_size * hidden_size
    off_opt = _offload(zero, "offload_optimizer")
    off_param = _offload(zero, "offload_param")
    notes: list[str] = []
    if off_param != Offload.NONE and stage != ZeroStage.PARAMETERS:
        notes.append("offload_param is ignored below ZeRO stage 3 (DeepSpeed ignores it too)")
        off_param = Offload.NONE
    if off_opt != Offload.NONE and stage == ZeroStage.DISABLED:
        notes.append("offload_optimizer is ignored at ZeRO stage 0")
        off_opt = Offload.NONE

    def default(key: str) -> int:
        return int(catalog.constant(f"deepspeed_{key}"))

    return DeepSpeedSettings(
        zero_stage=stage,
        offload_optimizer=off_opt,
        offload_param=off_param,
        reduce_bucket_size=_int(zero, "reduce_bucket_size", h2, default("reduce_bucket_size")),
        allgather_bucket_size=_int(
            zero,
            "allgather_bucket_size",
            default("allgather_bucket_size"),
            default("allgather_bucket_size"),
        ),
        stage3_prefetch_bucket_size=_int(
            zero,
            "stage3_prefetch_bucket_size",
            int(0.9 * h2),
            default("stage3_prefetch_bucket_size"),
        ),
        stage3_max_live_parameters=_int(
            zero,
            "stage3_max_live_parameters",
            default("stage3_max_live_parameters"),
            default("stage3_max_live_parameters"),
        ),
        stage3_param_persistence_threshold=_int(
            zero,
            "stage3_param_persistence_threshold",
            10 * hidden_size,
            default("stage3_param_persistence_threshold"),
        ),
        precision=precision,
        # DeepSpeedZeroConfig.overlap_comm_valid: absent (None) means True at stage 3 only
        overlap_comm=bool(zero["overlap_comm"])
        if zero.get("overlap_comm") is not None and not _is_auto(zero.get("overlap_comm"))
        else stage == ZeroStage.PARAMETERS,
        contiguous_gradients=bool(zero.get("contiguous_gradients", True)),
        notes=notes,
    )
