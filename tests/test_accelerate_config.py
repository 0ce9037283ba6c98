"""accelerate config YAML -> request fields (``vramcalc/accelerate_config.py``).

The YAML files under ``tests/data/accelerate/`` are written from accelerate's documented
examples (each file names its source). The expected fields below are read off the YAML by
hand, applying accelerate 1.15's documented defaults where a key is absent (FSDP version 1,
FULL_SHARD, NO_PREFETCH, ZeRO stage 2); they are not copied from the module's output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vramcalc.accelerate_config import apply_accelerate, request_fields_from_accelerate
from vramcalc.errors import InvalidConfigError
from vramcalc.specs import EstimateRequest

yaml = pytest.importorskip("yaml")

DATA = Path(__file__).parent / "data" / "accelerate"


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((DATA / name).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


# file -> the request fields the file decides (and nothing else)
EXPECTED: dict[str, dict[str, Any]] = {
    # num_processes 2 on one machine; FSDP1 (no fsdp_version); FULL_SHARD; BACKWARD_PRE;
    # use_orig_params true; offload false; activation checkpointing false (sets nothing)
    "fsdp1_full_shard.yaml": {
        "gpus": 2,
        "nodes": 1,
        "mixed_precision": "bf16",
        "fsdp_version": 1,
        "fsdp": "full_shard",
        "fsdp_backward_prefetch": "backward_pre",
        "fsdp_use_orig_params": True,
        "fsdp_offload": False,
    },
    # sharding strategy code 1 = FULL_SHARD; fsdp_backward_prefetch_policy is not read, so
    # accelerate's default NO_PREFETCH applies
    "fsdp1_docs_integer_code.yaml": {
        "gpus": 2,
        "nodes": 1,
        "mixed_precision": "no",
        "fsdp_version": 1,
        "fsdp": "full_shard",
        "fsdp_backward_prefetch": "none",
        "fsdp_offload": False,
    },
    # FSDP1 without fsdp_sharding_strategy runs FULL_SHARD in accelerate 1.15 whatever
    # fsdp_reshard_after_forward says; offload, checkpointing, BACKWARD_POST, orig params off
    "fsdp1_offload_questionnaire.yaml": {
        "gpus": 4,
        "nodes": 1,
        "mixed_precision": "fp16",
        "fsdp_version": 1,
        "fsdp": "full_shard",
        "fsdp_backward_prefetch": "backward_post",
        "fsdp_use_orig_params": False,
        "fsdp_offload": True,
        "grad_ckpt": True,
    },
    "fsdp2.yaml": {
        "gpus": 8,
        "nodes": 1,
        "mixed_precision": "bf16",
        "fsdp_version": 2,
        "fsdp": "full_shard",
        "fsdp_reshard_after_forward": True,
        "fsdp_offload": False,
    },
    # reshard_after_forward false = the SHARD_GRAD_OP behaviour under FSDP2
    "fsdp2_offload_qlora.yaml": {
        "gpus": 2,
        "nodes": 1,
        "mixed_precision": "fp16",
        "fsdp_version": 2,
        "fsdp": "shard_grad_op",
        "fsdp_reshard_after_forward": False,
        "fsdp_offload": True,
        "grad_ckpt": True,
    },
    # 16 processes on 2 machines = 8 per node; replicate 2 x shard 4 = HSDP; TP 2
    "fsdp2_hsdp_tp.yaml": {
        "gpus": 8,
        "nodes": 2,
        "mixed_precision": "bf16",
        "fsdp_version": 2,
        "fsdp": "hybrid_shard",
        "fsdp_reshard_after_forward": True,
        "fsdp_offload": False,
        "grad_ckpt": True,
        "tp": 2,
    },
    "deepspeed_zero3_offload.yaml": {
        "gpus": 2,
        "nodes": 1,
        "mixed_precision": "no",
        "zero": 3,
        "offload_optimizer": "cpu",
        "offload_param": "cpu",
        "grad_accum": 4,
    },
    # the JSON decides stage and offload; the YAML only the process count
    "deepspeed_config_file.yaml": {"gpus": 2, "nodes": 1},
    "multi_gpu.yaml": {"gpus": 2, "nodes": 1, "mixed_precision": "bf16"},
    # num_processes is the total: 8 over 2 machines = 4 GPUs per node
    "multi_node.yaml": {"gpus": 4, "nodes": 2},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fields_match_what_the_yaml_says(name: str) -> None:
    got = request_fields_from_accelerate(load(name))
    assert got.fields == EXPECTED[name]


def test_every_documented_example_is_covered() -> None:
    on_disk = {p.name for p in DATA.glob("*.yaml")}
    assert on_disk - set(EXPECTED) == {"fsdp2_docs_bad_parallelism.yaml"}


@pytest.mark.parametrize(
    ("name", "ignored_keys"),
    [
        (
            "fsdp1_full_shard.yaml",
            {
                "fsdp_config.fsdp_cpu_ram_efficient_loading",
                "fsdp_config.fsdp_forward_prefetch",
                "fsdp_config.fsdp_state_dict_type",
                "fsdp_config.fsdp_sync_module_states",
            },
        ),
        (
            "fsdp1_docs_integer_code.yaml",
            {
                "fsdp_config.fsdp_backward_prefetch_policy",
                "fsdp_config.fsdp_state_dict_type",
                "fsdp_config.fsdp_transformer_layer_cls_to_wrap",
                "downcast_bf16",
                "machine_rank",
                "main_process_ip",
                "main_process_port",
                "main_training_function",
            },
        ),
        (
            "fsdp2_offload_qlora.yaml",
            {
                "fsdp_config.fsdp_use_orig_params",
                "fsdp_config.fsdp_cpu_ram_efficient_loading",
                "fsdp_config.fsdp_state_dict_type",
                "fsdp_config.fsdp_transformer_layer_cls_to_wrap",
                "rdzv_backend",
            },
        ),
        (
            "deepspeed_zero3_offload.yaml",
            {
                "deepspeed_config.gradient_clipping",
                "deepspeed_config.zero3_init_flag",
                "deepspeed_config.zero3_save_16bit_model",
                "downcast_bf16",
                "dynamo_backend",
                "machine_rank",
                "main_training_function",
                "rdzv_backend",
                "same_network",
            },
        ),
        ("multi_gpu.yaml", set()),
        (
            "multi_node.yaml",
            {
                "machine_rank",
                "main_process_ip",
                "main_process_port",
                "rdzv_backend",
                "same_network",
            },
        ),
    ],
)
def test_ignored_keys_are_listed_never_silent(name: str, ignored_keys: set[str]) -> None:
    got = request_fields_from_accelerate(load(name))
    listed = {entry.split(": ", 1)[0] for entry in got.ignored}
    assert listed == ignored_keys
    assert all(": " in entry and entry.split(": ", 1)[1] for entry in got.ignored)


def test_fsdp1_reshard_name_without_strategy_is_flagged() -> None:
    got = request_fields_from_accelerate(load("fsdp1_offload_questionnaire.yaml"))
    (entry,) = [e for e in got.ignored if e.startswith("fsdp_config.fsdp_reshard_after_forward")]
    assert "SHARD_GRAD_OP" in entry and "FULL_SHARD" in entry and "fsdp_sharding_strategy" in entry


@pytest.mark.parametrize("value", [True, "true", False])
def test_fsdp1_bool_reshard_is_not_read(value: Any) -> None:
    # no fsdp_version = FSDP1; accelerate launch passes the bool on, but the FSDP1 plugin
    # takes its sharding_strategy (FULL_SHARD by default) and never reads it
    cfg = {"distributed_type": "FSDP", "num_processes": 2,
           "fsdp_config": {"fsdp_reshard_after_forward": value}}  # fmt: skip
    got = request_fields_from_accelerate(cfg)
    assert got.fields["fsdp"] == "full_shard" and got.fields["fsdp_version"] == 1
    assert "fsdp_reshard_after_forward" not in got.fields
    (entry,) = [e for e in got.ignored if e.startswith("fsdp_config.fsdp_reshard_after_forward")]
    assert "fsdp_version 2" in entry


def test_fsdp1_reshard_name_equal_to_the_strategy_is_not_flagged() -> None:
    fsdp = {"fsdp_version": 1, "fsdp_reshard_after_forward": "FULL_SHARD"}
    cfg = {"distributed_type": "FSDP", "num_processes": 2, "fsdp_config": fsdp}
    got = request_fields_from_accelerate(cfg)
    assert got.fields["fsdp"] == "full_shard"
    assert not [e for e in got.ignored if "reshard" in e]


def test_deepspeed_config_file_path_is_reported() -> None:
    got = request_fields_from_accelerate(load("deepspeed_config_file.yaml"))
    assert got.deepspeed_config_file == "ds/zero_stage1_config.json"
    assert (DATA / got.deepspeed_config_file).is_file()


@pytest.mark.parametrize(
    ("code", "fsdp", "reshard"),
    [(1, "full_shard", None), (2, "shard_grad_op", None), (3, "no_shard", None),
     (4, "hybrid_shard", None), (5, "hybrid_shard", False),
     ("HYBRID_SHARD_ZERO2", "hybrid_shard", False), ("shard_grad_op", "shard_grad_op", None)],
)  # fmt: skip
def test_fsdp1_strategy_names_and_codes(code: Any, fsdp: str, reshard: bool | None) -> None:
    cfg = {"distributed_type": "FSDP", "num_processes": 8,
           "fsdp_config": {"fsdp_sharding_strategy": code}}  # fmt: skip
    got = request_fields_from_accelerate(cfg).fields
    assert got["fsdp"] == fsdp
    assert got.get("fsdp_reshard_after_forward") is reshard


def test_fsdp_config_keys_get_the_prefix_as_accelerate_launch_adds_it() -> None:
    cfg = {"distributed_type": "FSDP", "num_processes": 2,
           "fsdp_config": {"version": 2, "offload_params": True}}  # fmt: skip
    got = request_fields_from_accelerate(cfg).fields
    assert got["fsdp_version"] == 2 and got["fsdp_offload"] is True


def test_deepspeed_defaults_to_stage_2() -> None:
    got = request_fields_from_accelerate({"distributed_type": "DEEPSPEED", "num_processes": 4})
    assert got.fields == {"gpus": 4, "nodes": 1, "zero": 2}


@pytest.mark.parametrize(
    ("cfg", "must_name"),
    [
        ({"num_processes": 2}, ["distributed_type is missing"]),
        ({"distributed_type": "XLA"}, ["XLA", "FSDP"]),
        ({"distributed_type": "MEGATRON_LM"}, ["MEGATRON_LM", "not modelled"]),
        ({"distributed_type": "FSPD"}, ["FSPD", "Did you mean 'FSDP'"]),
        ({"distributed_type": "MULTI_GPU", "num_processes": 6, "num_machines": 4},
         ["num_processes 6", "num_machines 4"]),
        ({"distributed_type": "MULTI_GPU", "mixed_precision": "fp8"}, ["fp8", "bf16"]),
        ({"distributed_type": "MULTI_GPU", "mixed_precision": "bf61"}, ["bf61", "bf16"]),
        ({"distributed_type": "FSDP", "fsdp_config": {"fsdp_sharding_strategy": 7}},
         ["fsdp_sharding_strategy 7", "1-5"]),
        ({"distributed_type": "FSDP", "fsdp_config": {"fsdp_version": 3}}, ["fsdp_version 3"]),
        ({"distributed_type": "FSDP",
          "fsdp_config": {"fsdp_version": 2, "fsdp_reshard_after_forward": "FULL_SHARD"}},
         ["FULL_SHARD", "true or false"]),
        ({"distributed_type": "FSDP", "fsdp_config": {"fsdp_offload_params": "maybe"}},
         ["fsdp_offload_params", "'maybe'"]),
        ({"distributed_type": "DEEPSPEED", "deepspeed_config": {"zero_stage": 4}},
         ["zero_stage 4"]),
        ({"distributed_type": "DEEPSPEED", "deepspeed_config": {"offload_param_device": "gpu"}},
         ["offload_param_device", "cpu", "nvme"]),
        ({"distributed_type": "DEEPSPEED", "mixed_precision": "bf16",
          "deepspeed_config": {"deepspeed_config_file": "ds.json", "zero_stage": 3}},
         ["zero_stage", "mixed_precision", "deepspeed_config_file"]),
        ({"distributed_type": "NO", "num_processes": 2}, ["NO", "num_processes is 2"]),
        ({"distributed_type": "MULTI_GPU", "use_cpu": True}, ["use_cpu"]),
        ({"compute_environment": "AMAZON_SAGEMAKER", "distributed_type": "NO"},
         ["AMAZON_SAGEMAKER", "LOCAL_MACHINE"]),
        ({"distributed_type": "FSDP", "num_processes": 8,
          "parallelism_config": {"parallelism_config_sp_size": 2}}, ["sp_size 2"]),
        ({"distributed_type": "FSDP", "num_processes": 8, "fsdp_config": {"fsdp_version": 1},
          "parallelism_config": {"parallelism_config_tp_size": 2}}, ["fsdp_version 2"]),
        ({"distributed_type": "FSDP", "num_processes": 8, "fsdp_config": {"fsdp_version": 2},
          "parallelism_config": {"parallelism_config_dp_replicate_size": 8}},
         ["dp_replicate_size 8", "dp_shard_size"]),
        ({"distributed_type": "FSDP", "num_processes": 8, "fsdp_config": {"fsdp_version": 2},
          "parallelism_config": {"parallelism_config_dp_replicate_size": 4,
                                 "parallelism_config_dp_shard_size": 2}},
         ["dp_shard_size 2", "dp_shard_size 8"]),
        (["not", "a", "mapping"], ["mapping"]),
    ],
)  # fmt: skip
def test_bad_configs_are_one_clear_line(cfg: Any, must_name: list[str]) -> None:
    with pytest.raises(InvalidConfigError) as info:
        request_fields_from_accelerate(cfg)
    msg = str(info.value)
    assert msg.startswith("accelerate config: ") and "\n" not in msg
    for text in must_name:
        assert text in msg, (text, msg)


def test_documented_parallelism_example_is_refused_like_accelerate_does() -> None:
    with pytest.raises(InvalidConfigError, match=r"multiply to 4096 .* num_processes is 4"):
        request_fields_from_accelerate(load("fsdp2_docs_bad_parallelism.yaml"))


def test_unknown_keys_are_listed() -> None:
    cfg = {"distributed_type": "MULTI_GPU", "num_processes": 2, "num_gpus": 2,
           "parallelism_config": {"tp_size": 2}}  # fmt: skip
    got = request_fields_from_accelerate(cfg)
    listed = {e.split(": ", 1)[0] for e in got.ignored}
    assert listed == {"num_gpus", "parallelism_config.tp_size"}
    assert "tp" not in got.fields  # accelerate reads parallelism_config_tp_size only


# ----------------------------------------------------------------------------- apply_accelerate


def test_apply_fills_unset_fields_and_returns_notes() -> None:
    req = EstimateRequest(model="gpt2", batch_size=2, accelerate_config=load("fsdp2.yaml"))
    out, notes = apply_accelerate(req)
    assert out.accelerate_config is None
    assert out.gpus == 8 and out.nodes == 1 and out.batch_size == 2
    assert out.fsdp is not None and out.fsdp.value == "full_shard"
    assert out.fsdp_version == 2 and out.fsdp_reshard_after_forward is True
    assert out.mixed_precision.value == "bf16"
    assert any("num_processes 8" in n for n in notes)
    assert any(n.startswith("accelerate config ignored: ") for n in notes)


def test_apply_without_config_is_identity() -> None:
    req = EstimateRequest(model="gpt2", zero=2, gpus=4)
    assert apply_accelerate(req) == (req, [])


def test_apply_is_idempotent() -> None:
    req = EstimateRequest(model="gpt2", accelerate_config=load("deepspeed_zero3_offload.yaml"))
    once, _ = apply_accelerate(req)
    twice, notes = apply_accelerate(once)
    assert twice == once and notes == []


@pytest.mark.parametrize(
    ("file", "explicit", "must_name"),
    [
        ("fsdp2.yaml", {"zero": 2}, ["FSDP", "zero 2"]),
        ("fsdp2.yaml", {"gpus": 4}, ["num_processes 8", "gpus 8", "gpus 4"]),
        ("fsdp2.yaml", {"mixed_precision": "fp16"}, ["mixed_precision bf16", "fp16"]),
        ("fsdp1_full_shard.yaml", {"fsdp": "shard_grad_op"}, ["full_shard", "shard_grad_op"]),
        ("multi_gpu.yaml", {"fsdp": "full_shard"}, ["MULTI_GPU", "fsdp full_shard"]),
        ("multi_gpu.yaml", {"zero": 3}, ["MULTI_GPU", "zero 3"]),
        ("deepspeed_zero3_offload.yaml", {"fsdp": "full_shard"}, ["DEEPSPEED", "full_shard"]),
        ("deepspeed_zero3_offload.yaml", {"zero": 2}, ["zero_stage 3", "zero 2"]),
        ("deepspeed_zero3_offload.yaml", {"grad_accum": 8}, ["grad_accum 4", "grad_accum 8"]),
        ("multi_node.yaml", {"nodes": 4}, ["num_machines 2", "nodes 4"]),
        ("fsdp2.yaml", {"deepspeed": {"zero_optimization": {"stage": 2}}}, ["FSDP", "deepspeed"]),
    ],
)
def test_contradictions_name_both_values(
    file: str, explicit: dict[str, Any], must_name: list[str]
) -> None:
    req = EstimateRequest(model="gpt2", accelerate_config=load(file), **explicit)
    with pytest.raises(InvalidConfigError) as info:
        apply_accelerate(req)
    msg = str(info.value)
    for text in must_name:
        assert text in msg, (text, msg)


def test_agreeing_explicit_values_are_fine() -> None:
    req = EstimateRequest(
        model="gpt2", gpus=8, nodes=1, fsdp="full_shard", mixed_precision="bf16",
        accelerate_config=load("fsdp2.yaml"),
    )  # fmt: skip
    out, _ = apply_accelerate(req)
    assert out.gpus == 8


def test_explicit_options_the_yaml_leaves_open_are_kept() -> None:
    # fsdp_offload comes from the request when the file does not say it
    cfg = {"distributed_type": "FSDP", "num_processes": 4, "fsdp_config": {"fsdp_version": 2}}
    req = EstimateRequest(model="gpt2", fsdp_offload=True, accelerate_config=cfg)
    out, _ = apply_accelerate(req)
    assert out.fsdp_offload and out.gpus == 4


def test_rules_are_checked_after_the_merge() -> None:
    # sequence_parallel waits for the file's tp; a DDP file gives none, so it is refused then
    req = EstimateRequest(
        model="gpt2", sequence_parallel=True, accelerate_config=load("multi_gpu.yaml")
    )
    with pytest.raises(InvalidConfigError, match="sequence_parallel true needs tensor"):
        apply_accelerate(req)
    ok = EstimateRequest(
        model="gpt2", sequence_parallel=True, accelerate_config=load("fsdp2_hsdp_tp.yaml")
    )
    out, _ = apply_accelerate(ok)
    assert out.tp == 2 and out.sequence_parallel


def test_deepspeed_file_needs_its_contents() -> None:
    req = EstimateRequest(model="gpt2", accelerate_config=load("deepspeed_config_file.yaml"))
    with pytest.raises(InvalidConfigError, match="send its contents as 'deepspeed'"):
        apply_accelerate(req)
    ds = {"zero_optimization": {"stage": 1}}
    out, notes = apply_accelerate(
        EstimateRequest(
            model="gpt2", deepspeed=ds, accelerate_config=load("deepspeed_config_file.yaml")
        )
    )
    assert out.deepspeed == ds and out.gpus == 2
    assert any("ds/zero_stage1_config.json" in n for n in notes)
