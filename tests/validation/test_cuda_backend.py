"""GPU-free tests of the CUDA backend (validation/cuda.py, validation/deepspeed_run.py).

Oracles: published parameter counts and hand derivations written out below; the DeepSpeed
config reference (deepspeed.ai/docs/config-json); package metadata read independently.
GPU-only tests are marked ``gpu`` and skip without CUDA.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
from pathlib import Path
from typing import Any

import pytest

from validation import cuda
from validation.deepspeed_run import deepspeed_config, launch_command
from validation.records import Measured, Measurement, Scenario
from vramcalc.errors import InvalidConfigError, VramcalcError

GPT2_MEDIUM = {
    "model_type": "gpt2",
    "n_layer": 24,
    "n_embd": 1024,
    "n_head": 16,
    "n_positions": 1024,
    "vocab_size": 50257,
}
LLAMA2_7B = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
}
TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 1000,
    "max_position_embeddings": 128,
}


def scenario(sid: str = "t", **request: Any) -> Scenario:
    request.setdefault("model", TINY_LLAMA)
    return Scenario.model_validate({"id": sid, "request": request})


# ----------------------------------------------------------------------------- scenario parsing


def test_plan_full_fp32_defaults() -> None:
    plan = cuda.resolve_plan(scenario(model=GPT2_MEDIUM))
    assert plan.model_type == "gpt2"
    assert plan.param_dtype == "float32"
    assert plan.autocast_dtype is None
    assert plan.attn_implementation == "sdpa"
    assert plan.optim == "adamw_torch"
    assert plan.peft is None and plan.quant is None
    assert not plan.uses_deepspeed
    assert (plan.batch_size, plan.seq_len, plan.grad_accum, plan.steps) == (1, 512, 1, 2)


def test_plan_amp_and_flash() -> None:
    plan = cuda.resolve_plan(
        scenario(mixed_precision="bf16", attn="flash_attention_2", grad_ckpt=True)
    )
    assert plan.autocast_dtype == "bfloat16"
    assert plan.grad_ckpt
    # without the flash-attn package, SDPA restricted to its fused kernels stands in
    assert plan.sdpa_backends == ("FLASH_ATTENTION", "EFFICIENT_ATTENTION")


def test_plan_qlora_defaults_to_nf4() -> None:
    plan = cuda.resolve_plan(scenario(dtype="bf16", qlora={"r": 8, "alpha": 16}))
    assert plan.quant == "nf4"
    # the engine's resolve fills PEFT's own default targets for the model type
    constants = pytest.importorskip("peft.utils.constants")
    default = constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING["llama"]
    assert plan.peft == {
        "method": "qlora", "r": 8, "alpha": 16.0, "dropout": 0.0, "targets": list(default),
    }  # fmt: skip
    assert not cuda.uses_shared_builder(plan)


def test_plan_lora_targets_are_kept() -> None:
    plan = cuda.resolve_plan(scenario(lora={"r": 4, "targets": "q_proj+v_proj"}))
    assert plan.peft is not None and plan.peft["targets"] == ["q_proj", "v_proj"]
    assert cuda.uses_shared_builder(plan)


@pytest.mark.parametrize(
    ("request_fields", "needle"),
    [
        ({"dtype": "bf16", "mixed_precision": "fp16"}, "needs fp32 weights"),
        ({"adapter": {"dim": 16}}, "accepted PEFT"),
        ({"quant": "nf4"}, "cannot be fully fine-tuned"),
        ({"qlora": {"r": 8}, "zero": 3}, "ZeRO-3"),
    ],
)
def test_plan_rejects_what_a_run_cannot_do(request_fields: dict[str, Any], needle: str) -> None:
    with pytest.raises(InvalidConfigError, match=needle):
        cuda.resolve_plan(scenario(**request_fields))


def test_plan_deepspeed_routing() -> None:
    assert cuda.resolve_plan(scenario(zero=2)).uses_deepspeed
    assert cuda.resolve_plan(scenario(gpus=2)).uses_deepspeed
    plan = cuda.resolve_plan(scenario(deepspeed={"zero_optimization": {"stage": 3}}))
    assert plan.zero_stage == 3 and plan.uses_deepspeed


def test_model_config_needs_model_type() -> None:
    with pytest.raises(InvalidConfigError, match="model_type"):
        cuda.model_config_of({"hidden_size": 8})


def test_model_config_unknown_name_is_a_vramcalc_error() -> None:
    with pytest.raises(VramcalcError):
        cuda.model_config_of("no-such-model-xyz")


def test_seq_classification_head_is_built_here() -> None:
    bert = {
        "model_type": "bert", "architectures": ["BertForSequenceClassification"],
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 128, "vocab_size": 1000,
    }  # fmt: skip
    plan = cuda.resolve_plan(scenario(model=bert))
    assert plan.model_class == "BertForSequenceClassification"
    assert not cuda.uses_shared_builder(plan)


# ----------------------------------------------------------------------------- fingerprint


def test_fingerprint_fields_without_gpu() -> None:
    import transformers

    fp = cuda.fingerprint(None, dry_run=True, note="x")
    assert fp.backend == "cuda"
    assert fp.device == "dry-run (no CUDA)"
    assert fp.transformers == transformers.__version__
    assert fp.torch == importlib.metadata.version("torch")
    assert fp.python == platform.python_version()
    assert fp.model_extra is not None and fp.model_extra["note"] == "x"
    for name in ("peft", "bitsandbytes", "deepspeed"):
        try:
            expected: str | None = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            expected = None
        assert getattr(fp, name) == expected


def test_fingerprint_with_torch_reports_its_cuda_build() -> None:
    import torch  # noqa: TID251

    fp = cuda.fingerprint(torch, dry_run=True)
    assert fp.torch == torch.__version__
    assert fp.cuda == torch.version.cuda


# ----------------------------------------------------------------------------- per-phase peaks


def test_measured_from_phases_peak_phase_and_load_excluded() -> None:
    mib = 2**20
    allocated = {
        "0/load": 9000 * mib,  # a load peak never names the training peak
        "1/forward": 100 * mib,
        "1/optimizer": 300 * mib,
        "2/backward": 350 * mib,
        "2/optimizer": 340 * mib,
    }
    reserved = {"0/load": 9100 * mib, "1/optimizer": 320 * mib, "2/backward": 400 * mib}
    device = {"0/load": 9500 * mib, "1/optimizer": 800 * mib, "2/backward": 900 * mib}
    m = cuda.measured_from_phases(allocated, reserved, device, context_bytes=500 * mib)
    assert (m.allocated_bytes, m.step, m.phase) == (350 * mib, 2, "backward")
    assert m.reserved_bytes == 400 * mib
    assert m.device_bytes == 900 * mib
    assert m.context_bytes == 500 * mib
    assert m.per_phase_peak == allocated


def test_measured_from_phases_tie_goes_to_the_earlier_phase() -> None:
    m = cuda.measured_from_phases({"1/backward": 7, "2/backward": 7}, {}, {}, context_bytes=None)
    assert (m.step, m.phase) == (1, "backward")
    assert m.reserved_bytes is None and m.device_bytes is None


def test_measured_from_phases_needs_a_training_phase() -> None:
    with pytest.raises(ValueError, match="no training phase"):
        cuda.measured_from_phases({"0/load": 1}, {}, {}, context_bytes=None)


def test_micro_batches_fold_to_their_maximum() -> None:
    folded = cuda._fold_micro({"1/forward#1": 5, "1/forward#2": 9, "1/optimizer": 3})
    assert folded == {"1/forward": 9, "1/optimizer": 3}


def test_categories_only_claim_what_is_live_at_the_peak() -> None:
    at_opt = Measured(allocated_bytes=100, phase="optimizer", step=1)
    assert cuda._categories(at_opt, 10, 10, 20) == {
        "params": 10,
        "gradients": 10,
        "optimizer": 20,
        "other": 60,
    }
    at_bwd2 = Measured(allocated_bytes=100, phase="backward", step=2)
    assert cuda._categories(at_bwd2, 10, 10, 20) == {"params": 10, "optimizer": 20, "other": 70}
    at_fwd1 = Measured(allocated_bytes=100, phase="forward", step=1)
    assert cuda._categories(at_fwd1, 10, 10, 20) == {"params": 10, "other": 90}


# ----------------------------------------------------------------------------- JSONL schema


def test_measurement_jsonl_round_trip() -> None:
    m = Measurement(
        scenario=scenario(),
        fingerprint=cuda.fingerprint(None, dry_run=True, step_s=[0.1, 0.2]),
        measured=cuda.measured_from_phases(
            {"1/forward": 10, "1/optimizer": 20}, {"1/optimizer": 30}, {}, context_bytes=None
        ),
        created="2026-11-28T00:00:00+00:00",
        wall_s=1.5,
    )
    line = m.model_dump_json()
    assert "\n" not in line
    back = Measurement.model_validate_json(line)
    assert back == m
    assert json.loads(line)["fingerprint"]["step_s"] == [0.1, 0.2]


def test_failure_line_validates() -> None:
    m = cuda.failure_measurement(scenario(), "RuntimeError: boom", wall_s=0.5)
    back = Measurement.model_validate_json(m.model_dump_json())
    assert back.error == "RuntimeError: boom"
    assert back.measured.allocated_bytes == 0


# ----------------------------------------------------------------------------- meta-device dry run


def test_dry_run_gpt2_medium_counts_tied_params_once() -> None:
    # 354,823,168: MEMORY_MODEL.md (gpt2-medium, tied input/output embeddings counted once)
    info = cuda.check_scenario(scenario(model=GPT2_MEDIUM))
    assert info["n_params"] == 354_823_168
    assert info["optimizer"] == "torch.optim.adamw.AdamW"
    assert info["builder"] == "validation.build"


def test_dry_run_llama2_7b_qlora_trainable_params() -> None:
    info = cuda.check_scenario(
        scenario(
            model=LLAMA2_7B,
            dtype="bf16",
            seq_len=1304,
            qlora={"r": 8, "alpha": 16, "targets": ["q_proj", "v_proj"]},
            optim="paged_adamw_32bit",
        )
    )
    # Llama-2-7B: 6,738,415,616 parameters (HF model card / safetensors index).
    assert info["n_params"] == 6_738_415_616
    # LoRA r=8 on q and v: 32 layers x 2 modules x (4096*8 + 8*4096) = 4,194,304, the
    # trainable count LitGPT prints for Llama 2 7B (reference case litgpt-rt-llama2-7b-*).
    assert info["n_trainable_params"] == 32 * 2 * (4096 * 8 + 8 * 4096) == 4_194_304
    assert info["bnb_config"]["bnb_4bit_quant_type"] == "nf4"
    assert info["bnb_config"]["bnb_4bit_use_double_quant"] is True


def test_dry_run_bert_large_classifier_count() -> None:
    bert = {
        "model_type": "bert",
        "architectures": ["BertForSequenceClassification"],
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        "vocab_size": 30522,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
    }
    info = cuda.check_scenario(scenario(model=bert, batch_size=4))
    h, ff, v = 1024, 4096, 30522
    embeddings = v * h + 512 * h + 2 * h + 2 * h
    layer = 3 * (h * h + h) + (h * h + h) + 2 * h + (h * ff + ff) + (ff * h + h) + 2 * h
    pooler, classifier = h * h + h, h * 2 + 2
    assert info["n_params"] == embeddings + 24 * layer + pooler + classifier == 335_143_938
    assert info["model_class"] == "BertForSequenceClassification"


# ----------------------------------------------------------------------------- CPU smoke of a run


@pytest.mark.filterwarnings("ignore")
def test_cpu_smoke_run_writes_a_valid_line(tmp_path: Path) -> None:
    sc = scenario(batch_size=2, seq_len=16, lora={"r": 4}, grad_ckpt=True)
    (tmp_path / "s.json").write_text(sc.model_dump_json())
    code = cuda.main(
        [
            "--scenario",
            str(tmp_path / "s.json"),
            "--result",
            str(tmp_path / "r.json"),
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    m = Measurement.model_validate_json((tmp_path / "r.json").read_text())
    assert m.error is None
    keys = set(m.measured.per_phase_peak)
    for step in (1, 2):
        for phase in ("forward", "loss", "backward", "optimizer"):
            assert f"{step}/{phase}" in keys
    extra = m.fingerprint.model_extra or {}
    # LoRA r=4 on q_proj and v_proj (peft's llama default) of 2 layers, hidden 64:
    # q: 64*4 + 4*64; v (GQA, 2 kv heads of 16): 64*4 + 4*32.
    assert extra["n_trainable_params"] == 2 * ((64 * 4 + 4 * 64) + (64 * 4 + 4 * 32))
    assert extra["builder"] == "validation.build"


# ----------------------------------------------------------------------------- DeepSpeed config


def _plan(**request: Any) -> cuda.RunPlan:
    return cuda.resolve_plan(scenario(**request))


def test_deepspeed_config_zero2_offload_fp16() -> None:
    cfg = deepspeed_config(
        _plan(zero=2, offload_optimizer="cpu", mixed_precision="fp16", grad_accum=4)
    )
    assert cfg["zero_optimization"] == {
        "stage": 2,
        "offload_optimizer": {"device": "cpu", "pin_memory": True},
    }
    assert cfg["fp16"] == {"enabled": True}
    assert "bf16" not in cfg
    assert cfg["train_micro_batch_size_per_gpu"] == 1
    assert cfg["gradient_accumulation_steps"] == 4
    # a torch client optimizer steps the CPU master copy
    assert cfg["zero_force_ds_cpu_optimizer"] is False


def test_deepspeed_config_zero3_full_offload_bf16() -> None:
    cfg = deepspeed_config(
        _plan(zero=3, offload_optimizer="cpu", offload_param="cpu", dtype="bf16")
    )
    assert cfg["zero_optimization"]["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert cfg["bf16"] == {"enabled": True}


def test_deepspeed_config_fp32_has_no_half_mode() -> None:
    cfg = deepspeed_config(_plan(zero=1))
    assert "fp16" not in cfg and "bf16" not in cfg


def test_deepspeed_param_offload_needs_zero3() -> None:
    with pytest.raises(InvalidConfigError, match="needs --zero 3"):
        deepspeed_config(_plan(zero=2, offload_param="cpu"))


def test_deepspeed_user_config_wins() -> None:
    user = {"zero_optimization": {"stage": 2, "reduce_bucket_size": 2e8}, "fp16": {"enabled": True}}
    cfg = deepspeed_config(_plan(deepspeed=user, batch_size=3))
    assert cfg["zero_optimization"] == user["zero_optimization"]
    assert cfg["train_micro_batch_size_per_gpu"] == 3
    assert user == {"zero_optimization": {"stage": 2, "reduce_bucket_size": 2e8},
                    "fp16": {"enabled": True}}  # fmt: skip


def test_launch_command_goes_through_deepspeed(tmp_path: Path) -> None:
    cmd = launch_command(tmp_path / "s.json", tmp_path / "r.json", gpus=2, master_port=29999)
    assert cmd[1:3] == ["-m", "deepspeed.launcher.runner"]
    assert cmd[cmd.index("--num_gpus") + 1] == "2"
    assert cmd[cmd.index("--master_port") + 1] == "29999"
    assert cmd[cmd.index("--scenario") + 1] == str(tmp_path / "s.json")
    assert Path(cmd[cmd.index("--num_gpus") + 4]).name == "deepspeed_run.py"


# ----------------------------------------------------------------------------- real GPU


def _cuda_available() -> bool:
    import torch  # noqa: TID251

    return bool(torch.cuda.is_available())


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA device")
@pytest.mark.filterwarnings("ignore")
def test_gpu_run_orders_the_three_peaks() -> None:
    m = cuda.run_scenario(scenario(batch_size=2, seq_len=64))
    r = m.measured
    assert m.error is None
    extra = m.fingerprint.model_extra or {}
    assert r.allocated_bytes >= extra["params_bytes"]
    assert r.reserved_bytes is not None and r.reserved_bytes >= r.allocated_bytes
    if r.device_bytes is not None:
        assert r.device_bytes >= r.reserved_bytes
    if r.context_bytes is not None:
        assert r.context_bytes > 0


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_separate_loss_phase_equals_the_models_own_loss(model_type: str) -> None:
    import torch  # noqa: TID251
    import transformers

    small = {
        "gpt2": {"n_layer": 1, "n_embd": 32, "n_head": 2, "vocab_size": 50},
        "llama": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "vocab_size": 50,
        },
    }
    config = transformers.AutoConfig.for_model(model_type, **small[model_type])
    model = transformers.AutoModelForCausalLM.from_config(config).eval()  # type: ignore[no-untyped-call]
    ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        own = model(input_ids=ids, labels=ids).loss
        split = cuda.compute_loss(model, model(input_ids=ids).logits, ids)
    assert torch.equal(own, split)
