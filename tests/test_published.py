"""validation.published: every published case maps to a request or states why it cannot.

Expected values are read off the reference file's quotes and converted by hand below; none is
copied from the mapping's output.
"""

from __future__ import annotations

from typing import Any

import pytest

from validation.published import (
    PublishedCase,
    case_to_published,
    load_raw,
    measured_bytes,
    metric_kind,
)

# The committed copy (validation/reference/): a missing file fails here, it is never skipped.
RAW = load_raw()

BY_ID: dict[str, dict[str, Any]] = {c["id"]: c for c in RAW}
CASES: dict[str, PublishedCase] = {c["id"]: case_to_published(c) for c in RAW}


def test_reference_has_45_cases_with_unique_ids() -> None:
    assert len(RAW) == 45
    assert len(BY_ID) == 45


@pytest.mark.parametrize("cid", list(BY_ID))
def test_every_case_maps_or_states_a_reason(cid: str) -> None:
    case = CASES[cid]
    if case.request is None:
        assert case.reason and len(case.reason) > 20, "an unmapped case needs a real reason"
    else:
        assert case.reason is None
        assert case.metric in ("allocated", "reserved", "device")
    assert case.measured_bytes > 0
    assert case.confidence == BY_ID[cid]["confidence"]


def test_most_cases_are_expressible() -> None:
    mapped = [c for c in CASES.values() if c.request is not None]
    # 3 torchtune rows state no metric (the other 4 are expressed with framework=torchtune,
    # issue 10); the 2 LitGPT FSDP rows are expressed as FSDP1 (issue 8)
    assert len(mapped) == 42
    tt = [c for c in CASES.values() if c.group == "torchtune" and c.request is not None]
    assert len(tt) == 4 and all(c.request.framework == "torchtune" for c in tt if c.request)
    fsdp = [c for c in CASES.values() if "fsdp" in c.id]
    assert fsdp and all(c.request is not None and c.request.fsdp == "full_shard" for c in fsdp)
    assert all(c.request is not None and c.request.gpus > 1 for c in fsdp)


def test_unit_seed_mib() -> None:
    # seed profiler: ".used / 1024 / 1024 ... Units printed as MB are MiB"; quote 8114.69 MB.
    # 8114.69 MiB = 8114 * 1048576 + 0.69 * 1048576 = 8,508,145,664 + 723,517.44 B
    n, _ = measured_bytes(BY_ID["seed-gpt2m-baseline-fp32-bs1-run1"])
    assert n == 8_508_869_181  # 8,508,869,181.44 rounded


def test_unit_litgpt_decimal_gb() -> None:
    # LitGPT: max_memory_allocated() / 1e9, quote "21.30 GB" -> 21.30 * 10**9 bytes
    # (= 21,300,000,000 / 1,048,576 = 20313.26 MiB, the file's 20313.3 rounded)
    n, unit = measured_bytes(BY_ID["litgpt-rt-llama2-7b-lora-mb1"])
    assert n == 21_300_000_000
    assert "GB" in unit
    n, _ = measured_bytes(BY_ID["litgpt-rt-inf-llama2-70b-nf4dq"])
    assert n == 37_210_000_000  # "37.21 GB"


def test_unit_torchtune_gib() -> None:
    # torchtune: active_bytes.all.peak / 1024**3, quote "60.0" GiB -> 60 * 2**30 bytes
    n, unit = measured_bytes(BY_ID["tt-llama32-3b-full-packed4096-bs2"])
    assert n == 60 * 1_073_741_824 == 64_424_509_440
    assert "GiB" in unit


def test_unit_hf_docs_integer_mib() -> None:
    # HF guide: used // 1024**2 printed as "MB"; quote 14949 MB -> 14949 * 1048576
    n, _ = measured_bytes(BY_ID["hf-bertL-bs4-fp32-adamw"])
    assert n == 14949 * 1_048_576 == 15_675_162_624


def test_decimal_gb_disagreeing_with_mib_is_refused() -> None:
    bad = dict(BY_ID["litgpt-rt-llama2-7b-lora-mb1"], measured_mib=20000.0)
    with pytest.raises(ValueError, match="is not"):
        measured_bytes(bad)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("NVML device-wide used memory: pynvml nvmlDeviceGetMemoryInfo(handle).used", "device"),
        ("GPU memory as shown by nvidia-smi", "device"),
        ("torch.cuda.max_memory_allocated() / 1e9", "allocated"),
        ("torch.cuda.max_memory_reserved()", "reserved"),
        ("torch.cuda.memory_stats()['active_bytes.all.peak'] / 1024**3", "allocated"),
        ("'Peak Memory per GPU' - exact stat not stated", "unknown"),
    ],
)
def test_metric_kind(text: str, kind: str) -> None:
    assert metric_kind(text) == kind


def test_metric_kinds_by_group() -> None:
    for case in CASES.values():
        if case.group in ("seed-genai-cookbook", "hf-transformers-docs"):
            assert case.metric == "device"
        elif case.group == "litgpt-resource-tables":
            assert case.metric == "allocated"


def test_seed_deepspeed_config_from_the_case() -> None:
    req = CASES["seed-gpt2m-dsbench-zero3-full-offload"].request
    assert req is not None and req.deepspeed is not None
    zo = req.deepspeed["zero_optimization"]
    assert zo["stage"] == 3 and int(req.zero) == 3
    assert zo["reduce_bucket_size"] == 50_000_000  # 5e7 in the case's extra_settings
    assert zo["stage3_param_persistence_threshold"] == 10_000
    assert zo["offload_optimizer"]["device"] == "cpu"
    assert zo["offload_param"]["device"] == "cpu"
    assert req.deepspeed["gradient_accumulation_steps"] == 4
    assert req.deepspeed["fp16"]["enabled"] is True
    z1 = CASES["seed-gpt2m-dsbench-zero1"].request
    assert z1 is not None and z1.deepspeed is not None
    assert z1.deepspeed["zero_optimization"]["reduce_bucket_size"] == 200_000_000
    assert "offload_optimizer" not in z1.deepspeed["zero_optimization"]


def test_litgpt_lora_settings() -> None:
    req = CASES["litgpt-rt-llama2-7b-lora-mb1"].request
    assert req is not None and req.lora is not None
    assert (req.lora.r, req.lora.alpha, req.lora.dropout) == (8, 16.0, 0.05)
    assert req.lora.targets == ("q_proj", "v_proj")
    assert (req.batch_size, req.seq_len, req.grad_accum) == (1, 1304, 128)
    assert req.dtype.value == "bf16" and req.gpu == "a100-40gb"
    q = CASES["litgpt-rt-llama2-7b-qlora-nf4dq-mb1"].request
    assert q is not None and q.qlora is not None and q.optim == "paged_adamw_32bit"


def test_optimizer_names_are_transformers_names() -> None:
    from transformers.training_args import OptimizerNames

    valid = {o.value for o in OptimizerNames}
    for case in CASES.values():
        if case.request is not None and case.request.task.value == "train":
            assert case.request.optim in valid, case.id


def test_lora_trainable_counts_match_the_sources() -> None:
    # LitGPT prints the trainable count; r * (in + out) per adapted weight, by hand:
    # Llama-2-7B q,v: 32 layers x 2 x 8 x (4096 + 4096) = 4,194,304
    # Llama-2-13B:    40 x 2 x 8 x (5120 + 5120)        = 6,553,600
    # phi-1.5:        24 x 2 x 8 x (2048 + 2048)        = 1,572,864
    # StableLM-3B fused query_key_value: 16 x 8 x (4096 + 3 x 4096) = 2,097,152
    expected = {
        "litgpt-rt-llama2-7b-lora-mb1": 32 * 2 * 8 * (4096 + 4096),
        "litgpt-rt-llama2-13b-lora-mb1": 40 * 2 * 8 * (5120 + 5120),
        "litgpt-rt-phi15-lora-mb1": 24 * 2 * 8 * (2048 + 2048),
        "litgpt-rt-stablelm3b-lora-mb4": 16 * 8 * (4096 + 3 * 4096),
    }
    for cid, n in expected.items():
        assert BY_ID[cid]["extra_settings"]["trainable_params"] == n


def test_unknown_text_is_refused_not_guessed() -> None:
    weird = dict(BY_ID["seed-gpt2m-dsbench-adamw-baseline"], optimizer="novograd", id="x")
    with pytest.raises(ValueError, match="optimizer"):
        case_to_published(weird)
