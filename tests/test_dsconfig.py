"""DeepSpeed config -> memory settings, with "auto" resolved as transformers does.

Oracles: DeepSpeed 0.19's own ``DeepSpeedZeroConfig`` (run in a subprocess, slow) for the
defaults of absent keys, and the formulas of transformers' ``HfTrainerDeepSpeedConfig``
(``integrations/deepspeed.py``, written out by hand below) for "auto".
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from vramcalc.dsconfig import parallel_from_deepspeed
from vramcalc.enums import Offload, ZeroStage
from vramcalc.errors import InvalidConfigError

HIDDEN = 4096


def settings(config: dict[str, Any], **kw: Any) -> Any:
    args: dict[str, Any] = {
        "gpus_per_node": 8,
        "nodes": 1,
        "hidden_size": HIDDEN,
        "mixed_precision": "bf16",
        "batch_size": 4,
        "grad_accum": 2,
    }
    args.update(kw)
    return parallel_from_deepspeed(config, **args)


def test_auto_values_follow_hf_trainer() -> None:
    s = settings(
        {
            "bf16": {"enabled": "auto"},
            "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto",
            "train_batch_size": "auto",
            "zero_optimization": {
                "stage": 3,
                "reduce_bucket_size": "auto",
                "stage3_prefetch_bucket_size": "auto",
                "stage3_param_persistence_threshold": "auto",
            },
        }
    )
    # trainer_config_finalize: hidden*hidden, int(0.9*hidden*hidden), 10*hidden
    assert s.reduce_bucket_size == 4096 * 4096 == 16_777_216
    assert s.stage3_prefetch_bucket_size == 15_099_494  # int(0.9 * 16,777,216)
    assert s.stage3_param_persistence_threshold == 40_960
    assert s.precision == "bf16"
    assert s.zero_stage == ZeroStage.PARAMETERS


def test_fp16_auto_from_mixed_precision() -> None:
    cfg = {"fp16": {"enabled": "auto"}, "bf16": {"enabled": "auto"}}
    assert settings(cfg, mixed_precision="fp16").precision == "fp16"
    assert settings(cfg, mixed_precision="no").precision == "fp32"
    assert settings({}, mixed_precision="no").precision == "fp32"  # DeepSpeed: both off


def test_legacy_bfloat16_key() -> None:
    assert settings({"bfloat16": {"enabled": True}}).precision == "bf16"


def test_absent_keys_take_deepspeed_defaults() -> None:
    # deepspeed/runtime/zero/config.py: 5e8, 5e8, 5e7, 1e9, 1e5; overlap_comm None -> stage==3
    s = settings({"zero_optimization": {"stage": 2}})
    assert s.reduce_bucket_size == 500_000_000
    assert s.allgather_bucket_size == 500_000_000
    assert s.stage3_prefetch_bucket_size == 50_000_000
    assert s.stage3_max_live_parameters == 1_000_000_000
    assert s.stage3_param_persistence_threshold == 100_000
    assert s.overlap_comm is False and s.contiguous_gradients is True
    assert settings({"zero_optimization": {"stage": 3}}).overlap_comm is True
    assert settings({}).zero_stage == ZeroStage.DISABLED


def test_concrete_values_and_floats() -> None:
    zero = {"stage": 2, "reduce_bucket_size": 2e8, "allgather_bucket_size": 2e8}
    s = settings({"zero_optimization": {**zero, "overlap_comm": False}})
    assert s.reduce_bucket_size == s.allgather_bucket_size == 200_000_000
    assert s.overlap_comm is False


def test_offload_devices() -> None:
    s = settings({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"},
                                        "offload_param": {"device": "nvme"}}})  # fmt: skip
    assert (s.offload_optimizer, s.offload_param) == (Offload.CPU, Offload.NVME)
    legacy = settings({"zero_optimization": {"stage": 2, "cpu_offload": True}})
    assert legacy.offload_optimizer == Offload.CPU
    assert settings({"zero_optimization": True}).zero_stage == ZeroStage.OPTIMIZER_STATES


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"zero_optimization": {"stage": 4}}, "stage"),
        ({"zero_optimization": {"stage": "auto"}}, "stage"),
        ({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "gpu"}}}, "nvme"),
        ({"zero_optimization": {"stage": 2, "reduce_bucket_size": "big"}}, "reduce_bucket_size"),
        ({"zero_optimization": {"stage": 2, "reduce_bucket_size": -1}}, ">= 0"),
        ({"zero_optimization": [1]}, "object"),
        ({"train_micro_batch_size_per_gpu": 8}, "--batch-size"),
        ({"gradient_accumulation_steps": 16}, "--grad-accum"),
        ({"train_batch_size": 1000}, "train_batch_size"),
        ({"train_micro_batch_size_per_gpu": "x"}, "train_micro_batch_size_per_gpu"),
        ({"fp16": {"enabled": True}, "bf16": {"enabled": True}}, "both"),
    ],
)
def test_bad_configs_raise(config: dict[str, Any], needle: str) -> None:
    with pytest.raises(InvalidConfigError, match=needle):
        settings(config)


def test_consistent_concrete_batch_values_pass() -> None:
    # train_batch_size = world x micro x accum = 8 x 4 x 2 (trainer_config_process)
    s = settings({"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2,
                  "train_batch_size": 64})  # fmt: skip
    assert s.zero_stage == ZeroStage.DISABLED


ORACLE = """
import json, sys, warnings
warnings.simplefilter("ignore")
from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
def dev(section):
    return "none" if section is None else str(getattr(section.device, "value", section.device))
out = []
for cfg in json.loads(sys.argv[1]):
    z = DeepSpeedZeroConfig(**cfg)
    out.append([int(z.stage), z.reduce_bucket_size, z.allgather_bucket_size,
                z.prefetch_bucket_size, z.max_live_parameters, z.param_persistence_threshold,
                bool(z.overlap_comm), bool(z.contiguous_gradients),
                dev(z.offload_optimizer), dev(z.offload_param)])
print(json.dumps(out))
"""


@pytest.mark.slow
def test_matches_deepspeed_own_parser() -> None:
    pytest.importorskip("deepspeed")
    configs: list[dict[str, Any]] = [
        {"stage": 0},
        {"stage": 1},
        {"stage": 2, "cpu_offload": True},
        {"stage": 3},
        {"stage": 3, "overlap_comm": False, "reduce_bucket_size": 2e8,
         "offload_param": {"device": "cpu"}, "offload_optimizer": {"device": "nvme"}},
        {"stage": 2, "contiguous_gradients": False, "allgather_bucket_size": 123},
    ]  # fmt: skip
    done = subprocess.run([sys.executable, "-c", ORACLE, json.dumps(configs)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"deepspeed not importable here: {done.stderr[-200:]}")
    expected = json.loads(done.stdout.strip().splitlines()[-1])
    for cfg, want in zip(configs, expected, strict=True):
        s = settings({"zero_optimization": cfg}, mixed_precision="no")
        got = [int(s.zero_stage), s.reduce_bucket_size, s.allgather_bucket_size,
               s.stage3_prefetch_bucket_size, s.stage3_max_live_parameters,
               s.stage3_param_persistence_threshold, s.overlap_comm, s.contiguous_gradients,
               s.offload_optimizer.value, s.offload_param.value]  # fmt: skip
        assert got == want, cfg
