"""The data files' schemas, and their values against independent oracles.

Oracles: transformers' own ``OptimizerNames`` enum, torch dtype item sizes, bitsandbytes'
state allocation (read from its code and, where it runs on CPU, by allocating states), PyTorch's
DDP default and DeepSpeed/PEFT defaults from the installed packages. Each skips when the package
is not installed.
"""

from __future__ import annotations

import importlib.util
import json
from importlib import resources
from typing import Any

import pytest

from vramcalc import catalog
from vramcalc.errors import UnknownNameError


def _raw(name: str) -> Any:
    text = resources.files("vramcalc").joinpath("data", f"{name}.json").read_text("utf-8")
    return json.loads(text)


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


OPTIMIZERS: dict[str, dict[str, Any]] = _raw("optimizers")["optimizers"]
MODELLED = {k: v for k, v in OPTIMIZERS.items() if "alias_of" not in v and "unsupported" not in v}
TEMPORARIES = {"foreach", "fused", "for_loop", "none", "adafactor"}


# ---------------------------------------------------------------- dtypes


def test_dtype_rows_have_bits_and_source() -> None:
    rows = _raw("dtypes")["dtypes"]
    for name, row in rows.items():
        assert isinstance(row["bits"], int) and row["bits"] > 0, name
        assert row["source"].strip(), name


@pytest.mark.parametrize(
    ("name", "bits"),
    # hand-written widths: IEEE/bfloat16 formats, 8-bit integers, 4-bit NF4/FP4 codes
    [
        ("fp32", 32),
        ("tf32", 32),
        ("bf16", 16),
        ("fp16", 16),
        ("int8", 8),
        ("uint8", 8),
        ("fp8", 8),
        ("nf4", 4),
        ("fp4", 4),
    ],
)
def test_dtype_bits_by_hand(name: str, bits: int) -> None:
    assert catalog.dtype_bits(name) == bits


@pytest.mark.skipif(not _has("torch"), reason="torch not installed")
def test_dtype_bits_match_torch_itemsize() -> None:
    import torch

    torch_names = {
        "fp32": torch.float32,
        "bf16": torch.bfloat16,
        "fp16": torch.float16,
        "int8": torch.int8,
        "uint8": torch.uint8,
        "fp8": torch.float8_e4m3fn,
    }
    for name, dtype in torch_names.items():
        assert catalog.dtype_bits(name) == dtype.itemsize * 8, name


def test_unknown_dtype_suggests() -> None:
    with pytest.raises(UnknownNameError) as err:
        catalog.dtype_bits("bf61")
    assert err.value.suggestion == "bf16"


# ---------------------------------------------------------------- optimizers


def test_optimizers_file_has_source() -> None:
    assert _raw("optimizers")["source"].strip()


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_row_schema(name: str) -> None:
    row = OPTIMIZERS[name]
    assert row["source"].strip()
    kinds = [k for k in ("alias_of", "unsupported", "family") if k in row]
    assert len(kinds) == 1, f"{name}: exactly one of alias_of/unsupported/family, got {kinds}"
    if "alias_of" in row:
        target = OPTIMIZERS[row["alias_of"]]
        assert "alias_of" not in target, "alias chains are not allowed"
        assert catalog.optimizer(name)["name"] == row["alias_of"]
        return
    if "unsupported" in row:
        assert row["unsupported"].strip()
        return
    assert row["temporaries"] in TEMPORARIES
    assert isinstance(row["paged"], bool)
    assert isinstance(row["factored"], bool)
    assert isinstance(row["stores_grads"], bool)
    assert isinstance(row["default_kwargs"], dict)
    for st in row["states"]:
        assert st["name"]
        assert st["bits"] == "param" or st["bits"] in (4, 8, 16, 32)
    eight = row["eight_bit"]
    quantized = any(st["bits"] in (4, 8) for st in row["states"])
    assert (eight is not None) == quantized, name
    if eight is not None:
        for key in ("block_size", "absmax_bits", "qmap_bytes_per_state", "min_numel"):
            assert isinstance(eight[key], int) and eight[key] > 0


@pytest.mark.skipif(not _has("transformers"), reason="transformers not installed")
def test_every_transformers_optimizer_name_is_listed() -> None:
    from transformers.training_args import OptimizerNames

    enum_values = {o.value for o in OptimizerNames}
    assert enum_values == set(catalog.optimizer_names())


def test_optimizer_states_by_hand() -> None:
    # Hand-read from the libraries (see each row's source): torch AdamW keeps two param-dtype
    # moments, transformers' SGD has no momentum, Adafactor (beta1=None) only the factored
    # second moment, Lion one moment, AdEMAMix three, LOMO none and no stored gradients.
    def names(opt: str) -> list[str]:
        return [s["name"] for s in catalog.optimizer(opt)["states"]]

    assert names("adamw_torch") == ["exp_avg", "exp_avg_sq"]
    assert catalog.optimizer("adamw_torch")["temporaries"] == "foreach"
    assert catalog.optimizer("adamw_torch_fused")["temporaries"] == "fused"
    assert names("sgd") == []
    assert names("adafactor") == ["exp_avg_sq"]
    assert catalog.optimizer("adafactor")["factored"] is True
    assert len(names("lion_8bit")) == 1
    assert len(names("paged_ademamix_8bit")) == 3
    assert names("lomo") == [] and catalog.optimizer("lomo")["stores_grads"] is False
    assert catalog.optimizer("adamw_8bit")["name"] == "adamw_bnb_8bit"
    assert catalog.optimizer("paged_adamw_8bit")["paged"] is True
    assert catalog.optimizer("adamw_bnb_8bit")["paged"] is False


def test_unknown_optimizer_suggests() -> None:
    with pytest.raises(UnknownNameError) as err:
        catalog.optimizer("adamw_torch_fusd")
    assert err.value.suggestion == "adamw_torch_fused"


@pytest.mark.skipif(not _has("transformers"), reason="transformers not installed")
def test_aliases_share_class_and_kwargs_in_transformers() -> None:
    from transformers import Trainer, TrainingArguments

    for name, row in OPTIMIZERS.items():
        if "alias_of" not in row or not _has("bitsandbytes"):
            continue
        got = []
        for optim in (name, row["alias_of"]):
            args = TrainingArguments(output_dir="/tmp/vramcalc-test", optim=optim, report_to=[])
            cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
            got.append((cls, kwargs))
        assert got[0] == got[1], name


@pytest.mark.skipif(not _has("bitsandbytes"), reason="bitsandbytes not installed")
def test_bnb_8bit_layout_matches_bitsandbytes() -> None:
    """Allocate bitsandbytes' own state on CPU and compare with the 8-bit row."""
    import torch

    try:
        import bitsandbytes as bnb
    except Exception as exc:  # bnb import can fail without its native library
        pytest.skip(f"bitsandbytes does not import: {exc}")

    row = catalog.optimizer("adamw_bnb_8bit")
    eight = row["eight_bit"]
    big = torch.nn.Parameter(torch.zeros(64, 300))  # 19200 values: 75 blocks of 256
    small = torch.nn.Parameter(torch.zeros(eight["min_numel"] - 1))
    opt = bnb.optim.AdamW(
        [big, small], optim_bits=8, min_8bit_size=row["default_kwargs"]["min_8bit_size"]
    )
    group = opt.param_groups[0]
    opt.init_state(group, big, 0, 0)
    opt.init_state(group, small, 0, 1)
    s_big, s_small = opt.state[big], opt.state[small]
    assert s_big["state1"].dtype == torch.uint8 and s_big["state2"].dtype == torch.uint8
    n_blocks = -(-big.numel() // eight["block_size"])
    assert s_big["absmax1"].numel() == n_blocks == 75
    assert s_big["absmax1"].element_size() * 8 == eight["absmax_bits"]
    assert s_big["qmap1"].numel() * s_big["qmap1"].element_size() == eight["qmap_bytes_per_state"]
    assert opt.name2qmap["dynamic"] is s_big["qmap1"]  # one map shared by all params
    assert s_small["state1"].dtype == torch.float32  # below min_8bit_size: 32-bit states


@pytest.mark.skipif(not _has("bitsandbytes"), reason="bitsandbytes not installed")
def test_bnb_4bit_constants_match_bitsandbytes() -> None:
    import inspect

    try:
        import bitsandbytes.functional as F
    except Exception as exc:
        pytest.skip(f"bitsandbytes does not import: {exc}")
    src = inspect.getsource(F.quantize_4bit)
    assert f"blocksize = {int(catalog.constant('bnb_blocksize_4bit'))}" in src
    assert f"blocksize={int(catalog.constant('bnb_nested_blocksize'))}" in src


# ---------------------------------------------------------------- constants


def test_constants_have_value_and_source() -> None:
    rows = _raw("constants")["constants"]
    assert "mfu_train_default" in rows
    for key, row in rows.items():
        assert set(row) == {"value", "source"}, key
        assert isinstance(row["value"], int | float) and not isinstance(row["value"], bool)
        assert row["value"] >= 0, key
        assert row["source"].strip(), key


def test_byte_constants_are_integers() -> None:
    rows = _raw("constants")["constants"]
    for key, row in rows.items():
        if key.endswith("_bytes") or key.endswith("_size") or key.endswith("_bits"):
            assert isinstance(row["value"], int), key


def test_allocator_and_cublas_by_hand() -> None:
    # PyTorch CUDACachingAllocator: 512 B blocks, 1 MiB small limit, 2 / 20 MiB segments.
    assert catalog.constant("alloc_block_bytes") == 512
    assert catalog.constant("alloc_small_size_bytes") == 1 << 20
    assert catalog.constant("alloc_small_segment_bytes") == 2 << 20
    assert catalog.constant("alloc_large_segment_bytes") == 20 << 20
    # CUBLAS_WORKSPACE_CONFIG ':4096:2:16:8' = 2 chunks of 4096 KiB + 8 chunks of 16 KiB
    assert catalog.constant("cublas_workspace_bytes") == 2 * 4096 * 1024 + 8 * 16 * 1024
    assert catalog.constant("cublas_workspace_bytes_sm90") == 32 * 1024 * 1024


@pytest.mark.skipif(not _has("torch"), reason="torch not installed")
def test_ddp_bucket_matches_torch() -> None:
    from torch.nn.parallel import distributed

    mib = distributed._DEFAULT_BUCKET_CAP_MB
    assert catalog.constant("ddp_bucket_bytes") == mib * 1024 * 1024


@pytest.mark.skipif(not _has("peft"), reason="peft not installed")
def test_lora_defaults_match_peft() -> None:
    from peft import LoraConfig

    cfg = LoraConfig()
    assert catalog.constant("lora_default_r") == cfg.r
    assert catalog.constant("lora_default_alpha") == cfg.lora_alpha


@pytest.mark.skipif(not _has("deepspeed"), reason="deepspeed not installed")
def test_deepspeed_defaults_match_deepspeed() -> None:
    try:
        from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    except Exception as exc:  # deepspeed import may need a compiler/accelerator probe
        pytest.skip(f"deepspeed does not import: {exc}")
    cfg = DeepSpeedZeroConfig()
    assert catalog.constant("deepspeed_reduce_bucket_size") == cfg.reduce_bucket_size
    assert catalog.constant("deepspeed_allgather_bucket_size") == cfg.allgather_bucket_size
    assert catalog.constant("deepspeed_stage3_prefetch_bucket_size") == cfg.prefetch_bucket_size
    assert catalog.constant("deepspeed_stage3_max_live_parameters") == cfg.max_live_parameters
    assert (
        catalog.constant("deepspeed_stage3_param_persistence_threshold")
        == cfg.param_persistence_threshold
    )


def test_unknown_constant_is_keyerror() -> None:
    with pytest.raises(KeyError):
        catalog.constant("no_such_constant")


# ---------------------------------------------------------------- calibration


def test_calibration_schema() -> None:
    data = catalog.calibration()
    assert data["source"].strip() and data["schema"].strip()
    for family, row in data["families"].items():
        # each fitted constant is optional (the prior applies where it is missing), but a
        # row names its evidence and carries at least one constant
        assert row.get("source", "").strip(), family
        assert row.get("n_measurements", 0) >= 1, family
        constants = {"cuda_context_bytes", "allocator_reserve_factor"} & set(row)
        assert constants, family
        if "cuda_context_bytes" in row:
            assert isinstance(row["cuda_context_bytes"], int) and row["cuda_context_bytes"] > 0
        if "allocator_reserve_factor" in row:
            assert 1.0 <= row["allocator_reserve_factor"] < 2.0


# ---------------------------------------------------------------- architecture templates

ROLES = {"column", "row", "vocab", "replicated", "expert_column", "expert_row"}


@pytest.mark.parametrize("model_type", catalog.architecture_types())
def test_every_module_has_a_valid_role(model_type: str) -> None:
    """Each parameter group says how TP/EP shard it (``_meta.roles``), in line with its kind."""
    for m in catalog.architecture(model_type)["modules"]:
        where = f"{model_type} {m['key']}"
        assert m.get("role") in ROLES, where
        if m["kind"] in ("embedding", "lm_head"):
            assert m["role"] in ("vocab", "replicated"), where
        if m["kind"] == "norm":
            assert m["role"] == "replicated", where
        # expert weights (3-D parameters) and only they are sharded over experts
        assert bool(m.get("expert")) == m["role"].startswith("expert_"), where
        if m.get("expert"):
            assert m.get("experts"), f"{where}: an expert group names its experts per tensor"


def test_roles_documented() -> None:
    text = _raw("architectures")["_meta"]["roles"]
    for role in ROLES:
        assert role in text
