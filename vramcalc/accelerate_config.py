"""Read an accelerate config (the YAML ``accelerate config`` writes) into request fields.

``--accelerate-config FILE`` reads the file the way ``accelerate launch --config_file FILE``
does, so the estimate is for the job that command starts. Everything here follows
accelerate 1.15.0; the code paths are named where each rule is applied:

- the file's keys are ``ClusterConfig`` fields (``accelerate/commands/config/config_args.py``);
  ``accelerate launch`` copies them onto its arguments, adding the ``fsdp_`` prefix to
  ``fsdp_config`` keys that lack it (``_validate_launch_command`` in
  ``accelerate/commands/launch.py``), and turns them into ``FSDP_*`` /
  ``ACCELERATE_DEEPSPEED_*`` / ``PARALLELISM_CONFIG_*`` environment variables
  (``prepare_multi_gpu_env``, ``prepare_deepspeed_cmd_env`` and
  ``prepare_extend_env_parallelism_config`` in ``accelerate/utils/launch.py``);
- the plugins read those variables back with their own defaults
  (``FullyShardedDataParallelPlugin.__post_init__`` and ``DeepSpeedPlugin.__post_init__`` in
  ``accelerate/utils/dataclasses.py``, ``ParallelismConfig.__post_init__`` in
  ``accelerate/parallelism_config.py``).

``num_processes`` is the total number of processes (GPUs x machines), so GPUs per node are
``num_processes / num_machines``. Every key that does not change the estimate is listed as
ignored with the reason; values that would change it but cannot be modelled are refused.

The module is pure: it takes the parsed YAML as a mapping and never opens files (the CLI reads
the YAML, and the DeepSpeed JSON a ``deepspeed_config_file`` names, before building the
request; the REST service never opens paths).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vramcalc.errors import InvalidConfigError, closest_match
from vramcalc.specs import EstimateRequest

__all__ = [
    "ACCELERATE_VERSION",
    "AccelerateFields",
    "apply_accelerate",
    "request_fields_from_accelerate",
]

ACCELERATE_VERSION = "1.15.0"
_WHERE = "accelerate config"

# accelerate/utils/dataclasses.py DistributedType: the values that run data parallel on one
# device per process (launch.py `_validate_launch_command` sets args.multi_gpu for these).
_DATA_PARALLEL_TYPES = (
    "MULTI_GPU",
    "MULTI_NPU",
    "MULTI_MLU",
    "MULTI_SDAA",
    "MULTI_MUSA",
    "MULTI_XPU",
    "MULTI_HPU",
)
_MODELLED_TYPES = ("NO", *_DATA_PARALLEL_TYPES, "FSDP", "DEEPSPEED")
_NOT_MODELLED_TYPES = {
    "MULTI_CPU": "it trains on CPUs",
    "MULTI_NEURON": "Neuron cores are not GPUs",
    "XLA": "TPU/XLA memory is not modelled",
    "MEGATRON_LM": "Megatron-LM's own model code is not modelled",
}

# accelerate/utils/constants.py FSDP_SHARDING_STRATEGY; the integer codes are the list index
# + 1, as FullyShardedDataParallelPlugin.__post_init__ maps them onto torch's ShardingStrategy.
_FSDP1_STRATEGIES = (
    "FULL_SHARD",
    "SHARD_GRAD_OP",
    "NO_SHARD",
    "HYBRID_SHARD",
    "HYBRID_SHARD_ZERO2",
)
# strategy -> (request fsdp, reshard_after_forward); HYBRID_SHARD_ZERO2 is hybrid sharding that
# keeps parameters unsharded between forward and backward (torch _HYBRID_SHARD_ZERO2).
_STRATEGY_FIELDS: dict[str, tuple[str, bool | None]] = {
    "FULL_SHARD": ("full_shard", None),
    "SHARD_GRAD_OP": ("shard_grad_op", None),
    "NO_SHARD": ("no_shard", None),
    "HYBRID_SHARD": ("hybrid_shard", None),
    "HYBRID_SHARD_ZERO2": ("hybrid_shard", False),
}
# accelerate/utils/constants.py FSDP_BACKWARD_PREFETCH (codes = index + 1)
_PREFETCH = {
    "BACKWARD_PRE": "backward_pre",
    "BACKWARD_POST": "backward_post",
    "NO_PREFETCH": "none",
}
_WRAP_POLICIES = ("TRANSFORMER_BASED_WRAP", "SIZE_BASED_WRAP", "NO_WRAP")

# Keys accelerate reads that make no difference to GPU memory in a training step.
_LAUNCH_ONLY = {
    "compute_environment": "LOCAL_MACHINE is the only environment modelled",
    "machine_rank": "launch setting",
    "main_process_ip": "launch setting",
    "main_process_port": "launch setting",
    "main_training_function": "launch setting",
    "rdzv_backend": "launch setting",
    "same_network": "launch setting",
    "gpu_ids": "launch setting (num_processes gives the GPU count)",
    "debug": "launch setting",
    "enable_cpu_affinity": "launch setting",
    "use_cpu": "launch setting",
    "downcast_bf16": "TPU only",
    "tpu_name": "TPU only",
    "tpu_zone": "TPU only",
    "tpu_use_cluster": "TPU only",
    "tpu_use_sudo": "TPU only",
    "tpu_vm": "TPU only",
    "tpu_env": "TPU only",
    "command_file": "TPU only",
    "commands": "TPU only",
    "mpirun_config": "launch setting",
    "dynamo_config": "torch.compile is not modelled",
    "dynamo_backend": "torch.compile is not modelled",
    "fp8_config": "FP8 training is not modelled",
    "megatron_lm_config": "used only with distributed_type MEGATRON_LM",
}
_FSDP_NO_EFFECT = {
    "fsdp_state_dict_type": "checkpoint format, no effect on the training step",
    "fsdp_cpu_ram_efficient_loading": "host memory while loading only",
    "fsdp_sync_module_states": "a broadcast at load time only",
    "fsdp_transformer_layer_cls_to_wrap": "vramcalc wraps each decoder layer",
    "fsdp_min_num_params": "vramcalc wraps each decoder layer",
    "fsdp_ignored_modules": "not modelled",
    "fsdp_forward_prefetch": "not modelled separately",
    "fsdp_activation_checkpointing_offload": "not modelled",
    "fsdp_limit_all_gathers": "accelerate launch does not pass it on (limit_all_gathers "
    "stays True)",
    "fsdp_backward_prefetch_policy": "old key name, not read by accelerate 1.15 (it reads "
    "fsdp_backward_prefetch)",
}
_DEEPSPEED_NO_EFFECT = {
    "gradient_clipping": "no memory effect",
    "zero3_init_flag": "load path only",
    "zero3_save_16bit_model": "checkpoint saving only",
    "offload_optimizer_nvme_path": "a path; the device is offload_optimizer_device",
    "offload_param_nvme_path": "a path; the device is offload_param_device",
    "deepspeed_moe_layer_cls_names": "not modelled",
    "deepspeed_multinode_launcher": "launch setting",
    "deepspeed_hostfile": "launch setting",
    "deepspeed_exclusion_filter": "launch setting",
    "deepspeed_inclusion_filter": "launch setting",
}
# DeepSpeedPlugin._deepspeed_config_checks: with a deepspeed_config_file these accelerate
# config fields make accelerate raise (the JSON must say them).
_DS_FILE_EXCLUSIVE = (
    "gradient_accumulation_steps",
    "gradient_clipping",
    "zero_stage",
    "offload_optimizer_device",
    "offload_param_device",
    "offload_param_nvme_path",
    "offload_optimizer_nvme_path",
    "zero3_save_16bit_model",
)
_OFFLOAD_DEVICES = ("none", "cpu", "nvme")
_PARALLELISM_PREFIX = "parallelism_config_"
_PARALLELISM_SIZES = ("dp_replicate_size", "dp_shard_size", "tp_size", "cp_size", "sp_size")
_PARALLELISM_NO_EFFECT = {
    "cp_comm_strategy": "all-gather vs all-to-all K/V exchange is not modelled separately",
    "cp_backend": "torch is the only backend",
    "sp_backend": "used only with sp_size > 1",
    "sp_seq_length": "used only with sp_size > 1",
    "sp_seq_length_is_variable": "used only with sp_size > 1",
    "sp_attn_implementation": "used only with sp_size > 1",
}
_MIXED_PRECISION = ("no", "fp16", "bf16")


class AccelerateFields(BaseModel):
    """What an accelerate config decides: request fields, and the keys that change nothing.

    Attributes:
        fields: ``EstimateRequest`` field name -> value, for every setting the file makes.
        sources: field name -> the file's setting that decided it (for messages).
        ignored: ``"key: reason"`` for every key that does not change the estimate.
        notes: one line per setting used, in the file's words and the request's.
        deepspeed_config_file: the path ``deepspeed_config.deepspeed_config_file`` names
            (relative paths are relative to the YAML's folder; the caller reads the JSON).

    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    fields: dict[str, Any] = Field(default_factory=dict)
    sources: dict[str, str] = Field(
        default_factory=dict, description="request field -> the file's words for it"
    )
    ignored: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    deepspeed_config_file: str | None = None


def _fail(message: str) -> InvalidConfigError:
    return InvalidConfigError(f"{_WHERE}: {message}")


def _choice(key: str, value: Any, accepted: tuple[str, ...]) -> str:
    """``value`` upper-cased if it is one of ``accepted`` (case-insensitive), else an error."""
    text = str(value).strip()
    for option in accepted:
        if text.upper() == option.upper():
            return option
    hint = closest_match(text, accepted)
    did = f" Did you mean '{hint}'?" if hint else ""
    raise _fail(f"{key} '{text}' is not accepted.{did} Accepted: {', '.join(accepted)}")


def _bool(key: str, value: Any) -> bool:
    """Read a YAML boolean, or a string ``accelerate.utils.environment.str_to_bool`` accepts."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("y", "yes", "t", "true", "on", "1"):
        return True
    if text in ("n", "no", "f", "false", "off", "0"):
        return False
    raise _fail(f"{key} must be true or false, got {value!r}")


def _int(key: str, value: Any, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _fail(f"{key} must be an integer >= {minimum}, got {value!r}")
    try:
        number = int(str(value).strip())
    except ValueError:
        raise _fail(f"{key} must be an integer >= {minimum}, got {value!r}") from None
    if number < minimum:
        raise _fail(f"{key} must be an integer >= {minimum}, got {number}")
    return number


def _section(cfg: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = cfg.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(f"{key} must be a mapping of keys to values, got {type(value).__name__}")
    return {str(k): v for k, v in value.items()}


class _Reader:
    """Collects fields, notes and ignored keys while one config is read."""

    def __init__(self) -> None:
        self.fields: dict[str, Any] = {}
        self.sources: dict[str, str] = {}
        self.notes: list[str] = []
        self.ignored: list[str] = []
        self.ds_file: str | None = None

    def set(self, field: str, value: Any, note: str, source: str | None = None) -> None:
        self.fields[field] = value
        self.sources[field] = source or note.split(" -> ")[0]
        self.notes.append(note)

    def ignore(self, key: str, reason: str) -> None:
        self.ignored.append(f"{key}: {reason}")


def request_fields_from_accelerate(cfg: Mapping[str, Any]) -> AccelerateFields:
    """Map an accelerate config (parsed YAML) onto ``EstimateRequest`` fields.

    Args:
        cfg: the YAML's top-level mapping (``accelerate config`` output, accelerate 1.15).

    Returns:
        The request fields it sets, the keys it ignored (with reasons) and notes.

    Raises:
        InvalidConfigError: a value accelerate itself would refuse, or one that changes GPU
            memory in a way vramcalc does not model (``distributed_type: XLA``,
            ``mixed_precision: fp8``, ``parallelism_config_sp_size > 1``, ...).

    """
    if not isinstance(cfg, Mapping):
        raise _fail(f"the file must hold a mapping of keys to values, got {type(cfg).__name__}")
    r = _Reader()
    env = cfg.get("compute_environment", "LOCAL_MACHINE")
    if str(env).upper() != "LOCAL_MACHINE":
        raise _fail(
            f"compute_environment '{env}' is not modelled (SageMaker configs describe "
            "instances, not processes); accepted: LOCAL_MACHINE"
        )
    if "distributed_type" not in cfg:
        # config_args.py BaseConfig.process_config raises the same
        raise _fail("distributed_type is missing; accepted: " + ", ".join(_MODELLED_TYPES))
    raw_type = str(cfg["distributed_type"]).strip().upper()
    if raw_type in _NOT_MODELLED_TYPES:
        raise _fail(
            f"distributed_type {raw_type} is not modelled ({_NOT_MODELLED_TYPES[raw_type]}); "
            f"accepted: {', '.join(_MODELLED_TYPES)}"
        )
    dist = _choice("distributed_type", raw_type, _MODELLED_TYPES)
    if cfg.get("use_cpu") is not None and _bool("use_cpu", cfg["use_cpu"]):
        raise _fail("use_cpu true trains on the CPU; vramcalc estimates GPU memory")

    _read_processes(cfg, dist, r)
    _read_mixed_precision(cfg, dist, r)
    fsdp_version = 0
    if dist == "FSDP":
        fsdp_version = _read_fsdp(_section(cfg, "fsdp_config"), r)
    elif dist in _DATA_PARALLEL_TYPES:
        device = "" if dist == "MULTI_GPU" else f" (estimated on GPUs for {dist})"
        r.notes.append(f"distributed_type {dist}: DistributedDataParallel{device}")
    elif dist == "NO":
        r.notes.append("distributed_type NO: one process")
    if dist == "DEEPSPEED":
        _read_deepspeed(_section(cfg, "deepspeed_config"), cfg, r)
    _read_parallelism(_section(cfg, "parallelism_config"), dist, fsdp_version, r)

    handled = {
        "compute_environment",
        "use_cpu",
        "distributed_type",
        "num_processes",
        "num_machines",
        "mixed_precision",
        "fsdp_config",
        "deepspeed_config",
        "parallelism_config",
    }
    for key in cfg:
        name = str(key)
        if name in handled:
            if name in ("fsdp_config", "deepspeed_config") and _section(cfg, name):
                owner = "FSDP" if name == "fsdp_config" else "DEEPSPEED"
                if dist != owner:
                    r.ignore(name, f"distributed_type is {dist}, not {owner}")
            continue
        value = cfg[key]
        if isinstance(value, Mapping) and not value:
            continue  # an empty section holds no setting
        r.ignore(
            name,
            _LAUNCH_ONLY.get(
                name,
                f"unknown key (accelerate {ACCELERATE_VERSION} ClusterConfig has no such field)",
            ),
        )
    return AccelerateFields(
        fields=r.fields,
        sources=r.sources,
        ignored=tuple(r.ignored),
        notes=tuple(r.notes),
        deepspeed_config_file=r.ds_file,
    )


def _read_processes(cfg: Mapping[str, Any], dist: str, r: _Reader) -> None:
    machines = _int("num_machines", cfg.get("num_machines", 1))
    if "num_processes" not in cfg or cfg["num_processes"] in (None, -1):
        if dist == "NO":
            # BaseConfig.process_config: distributed_type NO defaults num_processes to 1
            r.set("gpus", 1, "distributed_type NO: 1 process")
            r.fields["nodes"] = 1
        else:
            # ClusterConfig.num_processes defaults to -1 and accelerate launch then needs
            # --num_processes; the request's gpus and nodes play that part here.
            r.notes.append("num_processes not set: GPUs come from gpus and nodes")
            if "num_machines" in cfg:
                r.set("nodes", machines, f"num_machines {machines} -> nodes {machines}")
        return
    processes = _int("num_processes", cfg["num_processes"])
    if processes % machines:
        raise _fail(
            f"num_processes {processes} (all processes on all machines) is not a multiple of "
            f"num_machines {machines}; accepted: num_processes = GPUs per machine x num_machines"
        )
    gpus = processes // machines
    if dist == "NO" and processes > 1:
        raise _fail(
            f"distributed_type NO runs one process, but num_processes is {processes}; "
            "accepted: num_processes 1, or distributed_type MULTI_GPU, FSDP or DEEPSPEED"
        )
    per_node = f"num_processes {processes} over num_machines {machines}"
    r.set("gpus", gpus, f"{per_node} -> gpus {gpus} per node x nodes {machines}", per_node)
    r.fields["nodes"] = machines
    r.sources["nodes"] = f"num_machines {machines}"


def _read_mixed_precision(cfg: Mapping[str, Any], dist: str, r: _Reader) -> None:
    value = cfg.get("mixed_precision")
    if value is None:
        return
    text = str(value).strip().lower()
    if text == "fp8":
        raise _fail("mixed_precision fp8 is not modelled; accepted: no, fp16, bf16")
    mp = _choice("mixed_precision", text, _MIXED_PRECISION).lower()
    r.set("mixed_precision", mp, f"mixed_precision {mp}")


def _strategy(key: str, value: Any) -> str:
    """Return the FSDP1 strategy name for a name or accelerate's integer code (1-5)."""
    text = str(value).strip()
    if text.isdigit():
        code = int(text)
        if not 1 <= code <= len(_FSDP1_STRATEGIES):
            raise _fail(
                f"{key} {code} is not a sharding strategy code; accepted: 1-5 ("
                + ", ".join(f"{i + 1} {s}" for i, s in enumerate(_FSDP1_STRATEGIES))
                + ")"
            )
        return _FSDP1_STRATEGIES[code - 1]
    return _choice(key, text, _FSDP1_STRATEGIES)


def _read_fsdp(section: dict[str, Any], r: _Reader) -> int:
    """FSDP settings; returns the FSDP version (1 or 2)."""
    # launch.py _validate_launch_command: fsdp_config keys without the prefix get it
    fsdp = {(k if k.startswith("fsdp") else f"fsdp_{k}"): v for k, v in section.items()}
    seen: set[str] = set()

    def take(key: str) -> Any:
        seen.add(key)
        return fsdp.get(key)

    raw_version = take("fsdp_version")
    # launch.py --fsdp_version defaults to "1"; so does the plugin's FSDP_VERSION fallback
    version = 1 if raw_version is None else _int("fsdp_version", raw_version)
    if version not in (1, 2):
        raise _fail(f"fsdp_version {version} is not accepted; accepted: 1, 2")
    r.set(
        "fsdp_version",
        version,
        f"fsdp_version {version}" + (" (accelerate's default)" if raw_version is None else ""),
    )
    reshard_raw = take("fsdp_reshard_after_forward")
    strategy_raw = take("fsdp_sharding_strategy")
    if version == 1:
        # FullyShardedDataParallelPlugin.__post_init__ (fsdp_version 1) sets sharding_strategy
        # from fsdp_sharding_strategy, defaulting to FULL_SHARD, and Accelerator.prepare_model
        # passes `sharding_strategy or reshard_after_forward` to FSDP: the strategy always
        # wins, so a strategy name in fsdp_reshard_after_forward has no effect in 1.15.
        strategy = (
            "FULL_SHARD"
            if strategy_raw is None
            else _strategy("fsdp_sharding_strategy", strategy_raw)
        )
        fsdp_name, reshard = _STRATEGY_FIELDS[strategy]
        source = "fsdp_sharding_strategy" if strategy_raw is not None else "default"
        r.set(
            "fsdp", fsdp_name, f"FSDP1 sharding strategy {strategy} ({source}) -> fsdp {fsdp_name}"
        )
        if reshard is not None:
            r.set(
                "fsdp_reshard_after_forward",
                reshard,
                f"{strategy} -> fsdp_reshard_after_forward false",
            )
        if reshard_raw is not None:
            text = str(reshard_raw).strip().upper()
            is_name = text in _FSDP1_STRATEGIES or text in ("1", "2", "3", "4", "5")
            named = _strategy("fsdp_reshard_after_forward", reshard_raw) if is_name else None
            if named is None:
                # e.g. `true` (the FSDP2 form): under fsdp_version 1 the plugin never reads it
                r.ignore(
                    "fsdp_config.fsdp_reshard_after_forward",
                    f"{_show(reshard_raw)} is not read under FSDP1 (fsdp_version 1, also when "
                    f"fsdp_version is absent) in accelerate {ACCELERATE_VERSION}: the plugin's "
                    f"sharding_strategy ({strategy}) decides; set fsdp_version 2 for the "
                    "true/false form",
                )
            elif named != strategy:
                r.ignore(
                    "fsdp_config.fsdp_reshard_after_forward",
                    f"{named} has no effect under FSDP1 in accelerate {ACCELERATE_VERSION}: "
                    f"the plugin's sharding_strategy ({strategy}) takes precedence "
                    "(FullyShardedDataParallelPlugin.__post_init__, Accelerator.prepare_model); "
                    f"estimated as {strategy}, set fsdp_sharding_strategy to change it",
                )
        prefetch_raw = take("fsdp_backward_prefetch")
        if prefetch_raw is None:
            # the plugin's backward_prefetch defaults to None = NO_PREFETCH (torch's own
            # default is BACKWARD_PRE, but accelerate passes None)
            r.set(
                "fsdp_backward_prefetch",
                "none",
                "fsdp_backward_prefetch not set -> none (accelerate's default NO_PREFETCH)",
            )
        else:
            text = str(prefetch_raw).strip()
            name = (
                list(_PREFETCH)[int(text) - 1]
                if text in ("1", "2", "3")
                else _choice("fsdp_backward_prefetch", text, tuple(_PREFETCH))
            )
            r.set("fsdp_backward_prefetch", _PREFETCH[name], f"fsdp_backward_prefetch {name}")
        orig = take("fsdp_use_orig_params")
        if orig is not None:
            value = _bool("fsdp_use_orig_params", orig)
            r.set("fsdp_use_orig_params", value, f"fsdp_use_orig_params {str(value).lower()}")
    else:
        if strategy_raw is not None:
            r.ignore(
                "fsdp_config.fsdp_sharding_strategy",
                "FSDP2 reads fsdp_reshard_after_forward (the plugin converts the strategy for "
                "fsdp_version 1 only)",
            )
        if reshard_raw is None:
            reshard2 = True  # launch.py --fsdp_reshard_after_forward defaults to "true"
        elif (
            not isinstance(reshard_raw, bool)
            and str(reshard_raw).strip().upper() in _FSDP1_STRATEGIES
        ):
            raise _fail(
                f"fsdp_reshard_after_forward {reshard_raw} is an FSDP1 strategy name; FSDP2 "
                "(fsdp_version 2) needs true or false (accelerate raises the same)"
            )
        else:
            reshard2 = _bool("fsdp_reshard_after_forward", reshard_raw)
        name2 = "full_shard" if reshard2 else "shard_grad_op"
        r.set(
            "fsdp",
            name2,
            f"FSDP2 fsdp_reshard_after_forward {str(reshard2).lower()} -> fsdp {name2}",
        )
        r.fields["fsdp_reshard_after_forward"] = reshard2
        for key, why in (
            ("fsdp_backward_prefetch", "FSDP2 always prefetches one layer (the plugin drops it)"),
            ("fsdp_use_orig_params", "obsolete in FSDP2 (the plugin drops it)"),
        ):
            if take(key) is not None:
                r.ignore(f"fsdp_config.{key}", why)
    offload = take("fsdp_offload_params")
    if offload is not None:
        value = _bool("fsdp_offload_params", offload)
        r.set("fsdp_offload", value, f"fsdp_offload_params {str(value).lower()} -> fsdp_offload")
    ckpt = take("fsdp_activation_checkpointing")
    if ckpt is not None and _bool("fsdp_activation_checkpointing", ckpt):
        r.set("grad_ckpt", True, "fsdp_activation_checkpointing true -> grad_ckpt")
    wrap = take("fsdp_auto_wrap_policy")
    # FullyShardedDataParallelPlugin: auto_wrap_policy defaults to NO_WRAP
    policy = "NO_WRAP" if wrap is None else _choice("fsdp_auto_wrap_policy", wrap, _WRAP_POLICIES)
    if policy == "TRANSFORMER_BASED_WRAP":
        r.notes.append(
            "fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP: one FSDP unit per decoder layer"
        )
    elif policy == "SIZE_BASED_WRAP":
        r.ignore(
            "fsdp_config.fsdp_auto_wrap_policy",
            "SIZE_BASED_WRAP is estimated as one unit per decoder layer",
        )
    else:
        r.ignore(
            "fsdp_config.fsdp_auto_wrap_policy",
            f"{policy}{' (not set)' if wrap is None else ''} wraps the whole model as one unit, "
            "which is not modelled: the estimate assumes one unit per decoder layer, and the "
            "real peak is higher",
        )
    for key in sorted(fsdp):
        if key in seen:
            continue
        r.ignore(f"fsdp_config.{key}", _FSDP_NO_EFFECT.get(key, "unknown key"))
    return version


def _read_deepspeed(section: dict[str, Any], cfg: Mapping[str, Any], r: _Reader) -> None:
    path = section.get("deepspeed_config_file")
    if path is not None and str(path).strip().lower() != "none":
        clash = [k for k in _DS_FILE_EXCLUSIVE if k in section]
        if cfg.get("mixed_precision") is not None:
            clash.append("mixed_precision")
        if clash:
            raise _fail(
                f"deepspeed_config_file is set together with {', '.join(clash)}, which "
                "accelerate refuses (DeepSpeedPlugin._deepspeed_config_checks); accepted: "
                "those settings inside the DeepSpeed JSON"
            )
        r.ds_file = str(path)
        r.notes.append(f"deepspeed_config_file {path}: ZeRO stage, offload and buckets from it")
    else:
        # DeepSpeedPlugin.__post_init__: zero_stage defaults to 2, offload devices to none
        stage = _int("zero_stage", section.get("zero_stage", 2), minimum=0)
        if stage > 3:
            raise _fail(f"zero_stage {stage} is not accepted; accepted: 0, 1, 2, 3")
        default = "" if "zero_stage" in section else " (accelerate's default)"
        r.set("zero", stage, f"zero_stage {stage}{default} -> zero {stage}")
        for key, field in (
            ("offload_optimizer_device", "offload_optimizer"),
            ("offload_param_device", "offload_param"),
        ):
            if section.get(key) is not None:
                device = _choice(key, section[key], _OFFLOAD_DEVICES)
                r.set(field, device, f"{key} {device} -> {field} {device}")
        gas = section.get("gradient_accumulation_steps")
        if gas is not None and str(gas).strip().lower() != "auto":
            steps = _int("gradient_accumulation_steps", gas)
            r.set("grad_accum", steps, f"gradient_accumulation_steps {steps} -> grad_accum {steps}")
    for key in sorted(section):
        if (
            key in (*_DS_FILE_EXCLUSIVE, "deepspeed_config_file")
            and key not in _DEEPSPEED_NO_EFFECT
        ):
            continue
        r.ignore(f"deepspeed_config.{key}", _DEEPSPEED_NO_EFFECT.get(key, "unknown key"))


def _read_parallelism(section: dict[str, Any], dist: str, fsdp_version: int, r: _Reader) -> None:
    if not section:
        return
    sizes: dict[str, int] = {}
    for key in sorted(section):
        if not key.startswith(_PARALLELISM_PREFIX):
            r.ignore(
                f"parallelism_config.{key}",
                f"accelerate reads {_PARALLELISM_PREFIX}{key} (launch.py copies the keys as "
                "they are)",
            )
            continue
        name = key.removeprefix(_PARALLELISM_PREFIX)
        if name in _PARALLELISM_SIZES:
            sizes[name] = _int(key, section[key])
        else:
            r.ignore(f"parallelism_config.{key}", _PARALLELISM_NO_EFFECT.get(name, "unknown key"))
    size = {n: sizes.get(n, 1) for n in _PARALLELISM_SIZES}  # ParallelismConfig defaults: 1
    if size["sp_size"] > 1:
        raise _fail(
            f"parallelism_config_sp_size {size['sp_size']} (DeepSpeed Ulysses sequence "
            "parallelism) is not modelled; accepted: parallelism_config_sp_size 1, or "
            "parallelism_config_cp_size for context parallelism"
        )
    if dist == "FSDP" and fsdp_version == 1 and any(v > 1 for v in size.values()):
        raise _fail(
            "parallelism_config needs fsdp_version 2 (accelerate launch refuses "
            "--use_parallelism_config with FSDP1); accepted: fsdp_version 2"
        )
    total = size["dp_replicate_size"] * size["dp_shard_size"] * size["tp_size"] * size["cp_size"]
    processes = r.fields.get("gpus", 0) * r.fields.get("nodes", 1)
    if total > 1 and "gpus" in r.fields and total != processes:
        # ParallelismConfig._validate_accelerator raises the same
        product = " x ".join(f"{n.removesuffix('_size')} {size[n]}" for n in _PARALLELISM_SIZES[:4])
        raise _fail(
            f"parallelism_config sizes multiply to {total} ({product}), "
            f"but num_processes is {processes}; accepted: sizes whose product is num_processes"
        )
    if size["tp_size"] > 1:
        r.set("tp", size["tp_size"], f"parallelism_config_tp_size {size['tp_size']} -> tp")
    if size["cp_size"] > 1:
        r.set("cp", size["cp_size"], f"parallelism_config_cp_size {size['cp_size']} -> cp")
    if dist != "FSDP":
        if size["dp_shard_size"] > 1:
            r.ignore(
                "parallelism_config.parallelism_config_dp_shard_size",
                f"no FSDP under {dist}: data parallel",
            )
        return
    replicate, shard = size["dp_replicate_size"], size["dp_shard_size"]
    if replicate > 1 and shard == 1 and size["cp_size"] == 1:
        raise _fail(
            f"parallelism_config_dp_replicate_size {replicate} with dp_shard_size 1 leaves FSDP "
            "nothing to shard over (ParallelismConfig._validate_accelerator refuses it); "
            "accepted: dp_shard_size > 1, or distributed_type MULTI_GPU for pure DDP"
        )
    if replicate > 1 and shard > 1:
        gpus = r.fields.get("gpus", 0)
        per_node_shard = gpus // (size["tp_size"] * size["cp_size"]) if gpus else 0
        if shard != per_node_shard:
            raise _fail(
                f"parallelism_config_dp_shard_size {shard} with dp_replicate_size {replicate}: "
                f"vramcalc's hybrid_shard shards over the GPUs of one node (gpus {gpus} / tp "
                f"{size['tp_size']} / cp {size['cp_size']} = {per_node_shard}); accepted: "
                f"dp_shard_size {per_node_shard}"
            )
        reshard = r.fields.get("fsdp_reshard_after_forward", True)
        r.set(
            "fsdp",
            "hybrid_shard",
            f"parallelism_config dp_replicate {replicate} x dp_shard {shard} -> fsdp hybrid_shard",
        )
        r.fields["fsdp_reshard_after_forward"] = reshard


def apply_accelerate(req: EstimateRequest) -> tuple[EstimateRequest, list[str]]:
    """Fill a request from its ``accelerate_config``; the engine's resolve calls this first.

    Fields the request sets explicitly (``req.model_fields_set``) win only when they agree
    with the file; a contradiction (the file says FSDP and the request ``zero 2``, the file
    ``num_processes 8`` and the request ``gpus 4``) is refused naming both values. Fields
    the request leaves unset take the file's values.

    Args:
        req: a request; without ``accelerate_config`` it is returned unchanged.

    Returns:
        The request with the file's settings filled in and ``accelerate_config`` cleared, and
        notes (the settings used, then the keys ignored).

    Raises:
        InvalidConfigError: a contradiction, a value the file may not hold, or a
            ``deepspeed_config_file`` whose contents are not in ``req.deepspeed``.

    """
    if req.accelerate_config is None:
        return req, []
    mapped = request_fields_from_accelerate(req.accelerate_config)
    explicit = {name: getattr(req, name) for name in req.model_fields_set}
    explicit.pop("accelerate_config", None)
    problems = _contradictions(req, explicit, mapped)
    if problems:
        raise _fail("; ".join(problems))
    notes = [f"{_WHERE}: {n}" for n in mapped.notes]
    if mapped.deepspeed_config_file is not None:
        if req.deepspeed is None:
            raise _fail(
                f"deepspeed_config_file '{mapped.deepspeed_config_file}' names a file; send its "
                "contents as 'deepspeed' (the CLI reads it next to the YAML)"
            )
        notes.append(f"{_WHERE}: deepspeed config taken from {mapped.deepspeed_config_file}")
    if mapped.ignored:
        notes.append(f"{_WHERE} ignored: " + "; ".join(mapped.ignored))
    merged = {**explicit, **mapped.fields}
    try:
        out = EstimateRequest.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        raise _fail(f"with its settings filled in, the request is invalid: {msg}") from None
    return out, notes


def _contradictions(
    req: EstimateRequest, explicit: dict[str, Any], mapped: AccelerateFields
) -> list[str]:
    dist = (
        str(req.accelerate_config.get("distributed_type", "")).upper()
        if req.accelerate_config
        else ""
    )
    out: list[str] = []
    if "fsdp" in mapped.fields:
        if req.zero != 0:
            out.append(f"distributed_type {dist} (FSDP) contradicts zero {int(req.zero)}")
        if req.deepspeed is not None and mapped.deepspeed_config_file is None:
            out.append(f"distributed_type {dist} (FSDP) contradicts the deepspeed config")
    else:
        if req.fsdp is not None:
            out.append(f"distributed_type {dist} contradicts fsdp {req.fsdp.value}")
        if dist != "DEEPSPEED":
            if req.zero != 0:
                out.append(f"distributed_type {dist} contradicts zero {int(req.zero)}")
            if req.deepspeed is not None:
                out.append(f"distributed_type {dist} contradicts the deepspeed config")
    for field, value in mapped.fields.items():
        if field not in explicit:
            continue
        mine = explicit[field]
        mine_v = getattr(mine, "value", mine)
        if isinstance(mine_v, int) and not isinstance(mine_v, bool) and field == "zero":
            mine_v = int(mine)
        if str(mine_v).lower() != str(value).lower():
            source = mapped.sources.get(field, field)
            out.append(
                f"{source} means {field} {_show(value)}, but the request says {field} "
                f"{_show(mine_v)} (--{field.replace('_', '-')})"
            )
    return out


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
