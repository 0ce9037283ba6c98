"""Layout rules of ``EstimateRequest`` (issue 8): one sharding engine, options need a switch.

These hold for the Python API, the CLI and the REST service alike because all three build
``EstimateRequest``; the CLI and REST paths are checked in ``test_cli_layout.py`` and
``tests/api/test_layout_api.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from vramcalc.specs import EstimateRequest


def _message(**fields: Any) -> str:
    with pytest.raises(ValidationError) as info:
        EstimateRequest(model="gpt2", **fields)
    errors = info.value.errors()
    assert len(errors) == 1
    return str(errors[0]["msg"])


@pytest.mark.parametrize(
    ("fields", "must_name"),
    [
        ({"fsdp": "full_shard", "zero": 2}, ["fsdp full_shard", "zero 2"]),
        ({"fsdp": "shard_grad_op", "zero": 3}, ["fsdp shard_grad_op", "zero 3"]),
        ({"fsdp": "full_shard", "deepspeed": {"zero_optimization": {"stage": 2}}},
         ["fsdp full_shard", "deepspeed"]),
        ({"fsdp": "full_shard", "offload_optimizer": "cpu"},
         ["offload_optimizer cpu", "fsdp full_shard", "fsdp_offload"]),
        ({"fsdp": "full_shard", "offload_param": "nvme"}, ["offload_param nvme", "fsdp_offload"]),
    ],
)  # fmt: skip
def test_two_sharding_engines_are_refused(fields: dict[str, Any], must_name: list[str]) -> None:
    msg = _message(**fields)
    for text in must_name:
        assert text in msg, (text, msg)


@pytest.mark.parametrize(
    ("fields", "must_name"),
    [
        ({"fsdp_offload": True}, ["fsdp_offload true", "fsdp is not set", "full_shard"]),
        ({"fsdp_version": 1}, ["fsdp_version 1", "fsdp is not set"]),
        ({"fsdp_reshard_after_forward": False}, ["fsdp_reshard_after_forward false"]),
        ({"fsdp_use_orig_params": False}, ["fsdp_use_orig_params false"]),
        ({"fsdp_limit_all_gathers": False}, ["fsdp_limit_all_gathers false"]),
        ({"fsdp_backward_prefetch": "backward_post"}, ["fsdp_backward_prefetch backward_post"]),
        ({"fsdp_sync_each_batch": True}, ["fsdp_sync_each_batch true", "fsdp is not set"]),
        ({"fsdp_lora_in_blocks": True}, ["fsdp_lora_in_blocks true", "fsdp is not set"]),
    ],
)
def test_fsdp_options_need_fsdp(fields: dict[str, Any], must_name: list[str]) -> None:
    msg = _message(**fields)
    for text in must_name:
        assert text in msg, (text, msg)


@pytest.mark.parametrize(
    "fields",
    [
        {"fsdp_use_orig_params": False},
        {"fsdp_limit_all_gathers": False},
        {"fsdp_backward_prefetch": "none"},
        {"fsdp_lora_in_blocks": True, "lora": {"r": 8}},
    ],
)
def test_fsdp1_options_with_fsdp2_are_refused(fields: dict[str, Any]) -> None:
    msg = _message(fsdp="full_shard", fsdp_version=2, **fields)
    assert "fsdp_version is 2" in msg and "fsdp_version 1" in msg
    # the same options are fine under FSDP1
    EstimateRequest(model="gpt2", fsdp="full_shard", fsdp_version=1, **fields)


def test_sequence_parallel_needs_tp() -> None:
    msg = _message(sequence_parallel=True)
    assert "sequence_parallel true" in msg and "tp is 1" in msg and "tp 2 or more" in msg
    assert EstimateRequest(model="gpt2", tp=2, sequence_parallel=True).sequence_parallel


def test_virtual_stages_need_interleaved() -> None:
    msg = _message(pp=4, pp_virtual_stages=3)
    assert "pp_virtual_stages 3" in msg and "pp_schedule is 1f1b" in msg
    assert "pp_schedule interleaved" in msg
    ok = EstimateRequest(model="gpt2", pp=4, pp_schedule="interleaved", pp_virtual_stages=3)
    assert ok.pp_virtual_stages == 3


def test_interleaved_needs_pp() -> None:
    msg = _message(pp_schedule="interleaved")
    assert "pp_schedule interleaved" in msg and "pp is 1" in msg


def test_consistent_layouts_are_accepted() -> None:
    req = EstimateRequest(
        model="gpt2",
        gpus=8,
        nodes=2,
        fsdp="hybrid_shard",
        fsdp_version=1,
        fsdp_offload=True,
        fsdp_reshard_after_forward=False,
        fsdp_use_orig_params=False,
        fsdp_limit_all_gathers=False,
        fsdp_backward_prefetch="backward_post",
        tp=2,
        sequence_parallel=True,
        cp=2,
        pp=2,
        pp_schedule="interleaved",
        pp_virtual_stages=4,
        ep=2,
    )
    assert req.fsdp is not None and req.fsdp.value == "hybrid_shard"
    # ZeRO and DDP layouts keep working without any FSDP field
    assert EstimateRequest(model="gpt2", zero=3, gpus=8).fsdp is None


def test_rules_that_an_accelerate_config_may_satisfy_wait_for_it() -> None:
    # fsdp and tp may come from the YAML: checked after apply_accelerate merges it in
    req = EstimateRequest(
        model="gpt2",
        fsdp_offload=True,
        sequence_parallel=True,
        accelerate_config={"distributed_type": "FSDP"},
    )
    assert req.fsdp_offload


@pytest.mark.parametrize(
    ("fields", "must_name"),
    [
        # FSDP1 cannot flatten PEFT's fp32 adapters with 16-bit block weights
        ({"lora": {"r": 8}, "dtype": "bf16"}, ["uniform dtype", "framework litgpt"]),
        ({"qlora": {"r": 8}}, ["4-bit base", "uniform dtype"]),
        ({}, ["no lora or qlora"]),
        ({"lora": {"r": 8}, "fsdp_use_orig_params": False}, ["use_orig_params"]),
    ],
)
def test_fsdp_lora_in_blocks_is_refused_where_fsdp1_cannot_build_it(
    fields: dict[str, Any], must_name: list[str]
) -> None:
    msg = _message(fsdp="full_shard", fsdp_version=1, fsdp_lora_in_blocks=True, **fields)
    for text in must_name:
        assert text in msg, (text, msg)


def test_sync_each_batch_is_refused_under_pipeline_parallelism() -> None:
    msg = _message(fsdp="full_shard", gpus=8, pp=2, grad_accum=4, fsdp_sync_each_batch=True)
    assert "backward_maybe_with_nosync" in msg and "pp 2" in msg
