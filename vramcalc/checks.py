"""Request checks every entry point shares (CLI, Python API, REST): one place, one message.

``check_request`` runs at the top of ``engine.resolve``, so ``vramcalc.estimate``, ``fit``,
the CLI and the service all pass through it. It refuses what pydantic's field bounds cannot
see: config trees outside the limits (``limits.check_tree``), empty names, and flags that
contradict a DeepSpeed config (a flag the user gave explicitly is compared with the file's
concrete value; both are named, neither silently wins).
"""

from __future__ import annotations

from vramcalc.errors import InvalidConfigError
from vramcalc.limits import MAX_IMAGE_SIDE, MAX_NAME_CHARS, check_tree, current_limits
from vramcalc.specs import EstimateRequest, ModelSpec

__all__ = ["check_global_batch", "check_request", "check_vision", "parse_image_size"]


def check_request(req: EstimateRequest) -> None:
    """Refuse a request that is out of bounds or contradicts itself.

    Raises:
        LimitExceededError: an inline model, DeepSpeed or accelerate config outside the
            limits (size fields, depth, keys, non-finite or huge numbers), naming the key.
        InvalidConfigError: an empty or overlong name; a flag that contradicts the DeepSpeed
            config (naming both values).

    """
    lim = current_limits()
    if isinstance(req.model, str):
        if not req.model.strip():
            raise InvalidConfigError(
                "model is empty; accepted: a catalog name (see `vramcalc models`), a path to a "
                "config.json, or a config object"
            )
        if len(req.model) > MAX_NAME_CHARS:
            raise InvalidConfigError(
                f"model is {len(req.model)} characters long; accepted: a catalog name or a path "
                f"of at most {MAX_NAME_CHARS} characters"
            )
    else:
        check_tree(req.model, "model", lim)
    for name, value in (("gpu", req.gpu), ("optim", req.optim)):
        if value is not None and not value.strip():
            listing = "`vramcalc gpus`" if name == "gpu" else "`vramcalc optimizers`"
            raise InvalidConfigError(
                f"{name} is empty; accepted: a name listed by {listing}"
                + (" (or leave it out to skip the fit check)" if name == "gpu" else "")
            )
    if req.deepspeed is not None:
        check_tree(req.deepspeed, "deepspeed", lim, sizes=False)
        _deepspeed_flags(req)
    if req.accelerate_config is not None:
        check_tree(req.accelerate_config, "accelerate_config", lim, sizes=False)
    if isinstance(req.config, dict):
        check_tree(req.config, "config", lim, sizes=False)
    if req.image_size is not None:
        parse_image_size(req.image_size)


def parse_image_size(text: str) -> tuple[int, int]:
    """Read ``--image-size`` ``HxW`` (or one number for a square) as (height, width) pixels.

    Raises:
        InvalidConfigError: not ``HxW`` with integer sides from 1 to ``MAX_IMAGE_SIDE``.

    """
    parts = text.strip().lower().replace("*", "x").split("x")
    sides = [p.strip() for p in parts]
    if len(sides) == 1:
        sides = sides * 2
    ok = len(sides) == 2 and all(p.isdigit() for p in sides)
    if ok:
        h, w = int(sides[0]), int(sides[1])
        if 0 < h <= MAX_IMAGE_SIDE and 0 < w <= MAX_IMAGE_SIDE:
            return h, w
    raise InvalidConfigError(
        f"image size '{text[:40]}' is not HEIGHTxWIDTH in pixels; accepted: e.g. 448x448 or "
        f"1080x1920, each side 1 to {MAX_IMAGE_SIDE}"
    )


def check_vision(req: EstimateRequest, spec: ModelSpec) -> None:
    """Refuse image options on a model without an image tower.

    Raises:
        InvalidConfigError: ``images``, ``image_size`` or ``freeze_vision`` given for a
            text-only model (naming the model and its type).

    """
    from vramcalc.formulas.vision import is_vlm

    given = [
        flag
        for flag, on in (
            ("--images", req.images > 0),
            ("--image-size", req.image_size is not None),
            ("--freeze-vision", req.freeze_vision),
        )
        if on
    ]
    if given and not is_vlm(spec):
        raise InvalidConfigError(
            f"{', '.join(given)} applies to vision-language models (qwen2_5_vl, qwen3_vl, "
            f"llava, gemma3, mllama); {spec.name} is a text model ({spec.model_type})"
        )
    if req.images and is_vlm(spec):
        # what the image path is modelled and traced for: one SFT-style step of the
        # transformers model (HF Trainer or TRL's SFT/preference trainers), no pipeline split
        unsupported = [
            text
            for text, on in (
                (f"--task {req.task.value}", req.task.value != "train"),
                (f"--framework {req.framework}", req.framework != "hf"),
                (f"--trainer {req.trainer.value}", req.trainer.value in ("grpo", "rloo", "ppo")),
                (f"--pp {req.pp}", req.pp > 1),
            )
            if on
        ]
        if unsupported:
            raise InvalidConfigError(
                f"--images with {', '.join(unsupported)} is not modelled; images are "
                "estimated for training with the transformers model (--framework hf), "
                "without pipeline stages or RL generation (drop --images for the text path)"
            )


def _deepspeed_flags(req: EstimateRequest) -> None:
    from vramcalc.dsconfig import flag_conflicts

    assert req.deepspeed is not None
    given = req.model_fields_set
    conflicts = flag_conflicts(
        req.deepspeed,
        zero=req.zero if "zero" in given else None,
        offload_optimizer=req.offload_optimizer if "offload_optimizer" in given else None,
        offload_param=req.offload_param if "offload_param" in given else None,
        mixed_precision=req.mixed_precision.value if "mixed_precision" in given else None,
    )
    if conflicts:
        raise InvalidConfigError(
            "the DeepSpeed config decides this: "
            + "; ".join(conflicts)
            + "; drop the flag or change the config"
        )


def check_global_batch(target: int | None) -> None:
    """Refuse a ``--global-batch`` that is not a positive integer.

    Raises:
        InvalidConfigError: zero, negative or not an integer.

    """
    if target is None:
        return
    if isinstance(target, bool) or not isinstance(target, int) or target <= 0:
        raise InvalidConfigError(
            f"--global-batch must be a positive integer, got {target!r}; accepted: 1 or more"
        )
    if target > 1 << 40:
        raise InvalidConfigError(f"--global-batch {target} is above the limit of {1 << 40} (2**40)")
