"""``vramcalc --config FILE``: one documented example per trainer format (tests/data/configs/).

Expected fields are read off the example files and each project's documented defaults
(LitGPT 0.5.13 ``finetune/lora.py`` setup(), torchtune 0.6.1 recipes, axolotl and
LLaMA-Factory example YAMLs, TRL 1.16 ``SFTConfig``/``ModelConfig`` defaults), not copied from
the reader's output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vramcalc.accelerate_config import apply_accelerate
from vramcalc.cli import run
from vramcalc.errors import InvalidConfigError
from vramcalc.specs import EstimateRequest
from vramcalc.trainer_config import (
    apply_config,
    detect_format,
    parse_config_text,
    request_fields_from_config,
)

DATA = Path(__file__).resolve().parent / "data" / "configs"


def _fields(name: str) -> tuple[str, dict[str, Any]]:
    cfg = parse_config_text((DATA / name).read_text("utf-8"))
    got = request_fields_from_config(cfg)
    return got.format, got.fields


def test_litgpt_qlora_example() -> None:
    fmt, f = _fields("litgpt_llama-3.2-1B_qlora.yaml")
    assert fmt == "litgpt"
    assert f["framework"] == "litgpt" and f["model"] == "llama-3.2-1b"
    assert f["dtype"] == "bf16"  # precision: bf16-true
    # lora_r 32, alpha 16, dropout 0.05, lora_query + lora_value; quantize bnb.nf4
    assert f["qlora"] == {"r": 32, "alpha": 16.0, "dropout": 0.05, "targets": ["q_proj", "v_proj"]}
    assert f["quant"] == "nf4"
    # micro_batch_size 2, global_batch_size 8 on 1 device -> 8 // 1 // 2 = 4 accumulation steps
    assert (f["batch_size"], f["grad_accum"], f["seq_len"]) == (2, 4, 512)


def test_torchtune_lora_example() -> None:
    fmt, f = _fields("torchtune_llama3_2_1B_lora_single_device.yaml")
    assert fmt == "torchtune" and f["model"] == "llama-3.2-1b"
    assert f["lora"]["r"] == 64 and f["lora"]["alpha"] == 128.0
    # lora_attn_modules q_proj, v_proj, output_proj + apply_lora_to_mlp
    assert set(f["lora"]["targets"]) == {
        "q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    }  # fmt: skip
    assert (f["batch_size"], f["grad_accum"], f["dtype"]) == (4, 8, "bf16")
    assert f["loss"] == "chunked" and f["grad_ckpt"] is False
    assert f["optim"] == "adamw_torch_fused"  # torch.optim.AdamW, fused: True
    assert "seq_len" not in f  # tokenizer.max_seq_len: null


def test_torchtune_full_example_turns_on_optimizer_in_backward() -> None:
    fmt, f = _fields("torchtune_llama3_2_3B_full_single_device.yaml")
    assert fmt == "torchtune" and f["model"] == "llama-3.2-3b"
    assert f["optimizer_in_backward"] is True and f["grad_ckpt"] is True
    assert f["optim"] == "paged_adamw_8bit"  # bitsandbytes.optim.PagedAdamW8bit


def test_axolotl_qlora_example() -> None:
    fmt, f = _fields("axolotl_llama-3_qlora-1b.yml")
    assert fmt == "axolotl" and f["framework"] == "hf"
    assert f["model"] == "llama-3.2-1b"  # NousResearch/Llama-3.2-1B
    assert f["qlora"]["r"] == 32 and len(f["qlora"]["targets"]) == 7
    assert (f["seq_len"], f["batch_size"], f["grad_accum"]) == (2048, 2, 4)
    assert f["optim"] == "adamw_bnb_8bit" and f["grad_ckpt"] is True and f["packing"] is True
    assert f["attn"] == "flash_attention_2"


def test_llamafactory_qlora_example() -> None:
    fmt, f = _fields("llamafactory_llama3_lora_sft_otfq.yaml")
    assert fmt == "llamafactory" and f["model"] == "llama-3-8b"
    # quantization_bit 4 + lora_target all; lora_rank default 8, lora_alpha default 2 x rank
    assert f["qlora"] == {"r": 8, "alpha": 16.0, "dropout": 0.0, "targets": ["all-linear"]}
    assert (f["seq_len"], f["batch_size"], f["grad_accum"]) == (2048, 1, 8)
    assert f["grad_ckpt"] is True  # disable_gradient_checkpointing defaults to false


def test_trl_example_takes_sftconfig_defaults() -> None:
    fmt, f = _fields("trl_sft_qwen2-0.5b_lora.json")
    assert fmt == "trl"
    assert f["lora"] == {"r": 32, "alpha": 16.0, "dropout": 0.05}
    assert (f["batch_size"], f["grad_accum"], f["packing"]) == (2, 8, True)
    # SFTConfig: bf16 true unless fp16, gradient_checkpointing true, max_length 1024;
    # ModelConfig dtype float32
    assert f["mixed_precision"] == "bf16" and f["grad_ckpt"] is True and f["seq_len"] == 1024
    assert f["dtype"] == "fp32"


def test_accelerate_example_is_read_by_the_accelerate_reader() -> None:
    cfg = parse_config_text((DATA / "accelerate_fsdp2.yaml").read_text("utf-8"))
    assert detect_format(cfg) == "accelerate"
    req, _ = apply_config(EstimateRequest(model="gpt2", config=cfg))
    req2, _ = apply_accelerate(req)
    assert (req2.gpus, req2.fsdp_version, req2.fsdp.value) == (8, 2, "full_shard")


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("litgpt_llama-3.2-1B_qlora.yaml", None),
        ("torchtune_llama3_2_1B_lora_single_device.yaml", None),
        ("torchtune_llama3_2_3B_full_single_device.yaml", None),
        ("axolotl_llama-3_qlora-1b.yml", None),
        ("llamafactory_llama3_lora_sft_otfq.yaml", None),
        # Qwen/Qwen2-0.5B is not in the catalog (offline): the MODEL argument overrides it
        ("trl_sft_qwen2-0.5b_lora.json", "qwen2.5-0.5b"),
        ("accelerate_fsdp2.yaml", "llama-3.2-1b"),
    ],
)
def test_cli_dry_run(name: str, model: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [model] if model else []
    rc = run([*argv, "--config", str(DATA / name), "--seq-len", "512", "--json"])
    out = capsys.readouterr().out
    assert rc == 0, out
    report = json.loads(out)
    assert report["peak"]["allocated_bytes"] > 0
    notes = " ".join(report["notes"])
    assert "ignored" in notes  # every example has keys that do not change memory
    if not name.startswith("accelerate"):
        assert "config (" in notes


def test_flags_override_the_file(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(DATA / "litgpt_llama-3.2-1B_qlora.yaml")
    assert run(["--config", path, "-b", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    notes = " ".join(report["notes"])
    assert "overridden by options: batch_size 4 (the file says 2)" in notes


def test_contradictory_file_names_the_key() -> None:
    text = "base_model: gpt2\nbf16: true\nfp16: true\n"
    with pytest.raises(InvalidConfigError, match="bf16 and fp16 are both true"):
        request_fields_from_config(parse_config_text(text))
