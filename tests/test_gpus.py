"""GPU catalog: names users type, sources, and values against independent published figures."""

from __future__ import annotations

import datetime as dt
import json
from importlib import resources

import pytest

from vramcalc import catalog
from vramcalc.errors import UnknownNameError, VramcalcError
from vramcalc.specs import GpuSpec
from vramcalc.units import MIB

REQUIRED = [
    "t4",
    "v100-16gb",
    "v100-32gb",
    "a10g-24gb",
    "l4",
    "l40s",
    "rtx-3090",
    "rtx-4090",
    "a100-40gb",
    "a100-80gb",
    "h100-pcie",
    "h100-sxm",
    "h200",
    "b200",
    "mi300x",
]


@pytest.mark.parametrize("name", REQUIRED)
def test_required_gpus_resolve(name: str) -> None:
    g = catalog.gpu(name)
    assert isinstance(g, GpuSpec)
    assert g.name == name


@pytest.mark.parametrize(
    ("typed", "row"),
    [
        ("h100-80gb", "h100-sxm"),
        ("h100", "h100-sxm"),
        ("H100_SXM", "h100-sxm"),
        ("a10g", "a10g-24gb"),
        ("A10G_24GB", "a10g-24gb"),
        ("a6000", "rtx-a6000"),
        ("RTX_4090", "rtx-4090"),
        # names torch.cuda.get_device_name() prints, so validation records map to rows
        ("NVIDIA H100 80GB HBM3", "h100-sxm"),
        ("Tesla T4", "t4"),
        ("NVIDIA A10G", "a10g-24gb"),
        ("AMD Instinct MI300X", "mi300x"),
    ],
)
def test_aliases(typed: str, row: str) -> None:
    assert catalog.gpu(typed).name == row


def test_unknown_gpu_names_closest_match() -> None:
    with pytest.raises(UnknownNameError) as err:
        catalog.gpu("h100-sxn")
    assert isinstance(err.value, VramcalcError)
    assert err.value.suggestion is not None
    assert "h100" in err.value.suggestion
    assert "Accepted" in str(err.value)


def test_aliases_are_unique() -> None:
    seen: dict[str, str] = {}
    for g in catalog.gpus():
        for alias in (g.name, *g.aliases):
            key = alias.strip().lower().replace("_", "-")
            assert key not in seen, f"{alias} names both {seen.get(key)} and {g.name}"
            seen[key] = g.name


def test_rows_have_exactly_the_gpuspec_fields_and_sources() -> None:
    raw = json.loads(resources.files("vramcalc").joinpath("data", "gpus.json").read_text("utf-8"))
    dt.date.fromisoformat(raw["as_of"])
    assert raw["source_notes"]
    expected = set(GpuSpec.model_fields) - {"as_of"}
    for row in raw["gpus"]:
        assert set(row) == expected, row["name"]
        assert len(row["source"]) > 40, row["name"]
        assert set(row["tflops"]) <= {"fp32", "tf32", "bf16", "fp16", "fp8", "int8"}
        assert isinstance(row["memory_bytes"], int)


def test_catalog_values_are_sane() -> None:
    families = {"turing", "volta", "ampere", "ada", "hopper", "blackwell", "cdna2", "cdna3"}
    for g in catalog.gpus():
        assert g.family in families
        assert g.memory_bytes % MIB == 0
        # 0 only where no public on-demand price exists, and the source says so
        assert g.price_usd_per_gpu_hour > 0 or "no public on-demand" in g.source
        assert "fp32" in g.tflops
        for k in ("tf32", "bf16", "fp16", "fp8"):
            if k in g.tflops:
                assert g.tflops[k] >= g.tflops["fp32"], (g.name, k)
        if "fp8" in g.tflops:
            assert g.tflops["fp8"] == pytest.approx(2 * g.tflops["bf16"], rel=0.03), g.name


# nvidia-smi "total" MiB published for each GPU (modal-labs/modal-client PR #2797; NVIDIA/nccl
# issue #1264 for the H100). CUDA's total_memory is the same or up to ~1 GiB lower (driver
# reserve), never higher.
NVIDIA_SMI_TOTAL_MIB = {
    "h100-sxm": 81559,
    "a100-80gb": 81920,
    "a100-40gb": 40960,
    "l40s": 46068,
    "l4": 23034,
    "t4": 15360,
}


@pytest.mark.parametrize(("name", "smi_mib"), sorted(NVIDIA_SMI_TOTAL_MIB.items()))
def test_memory_not_above_nvidia_smi_total(name: str, smi_mib: int) -> None:
    mib = catalog.gpu(name).memory_bytes / MIB
    assert smi_mib - 1024 <= mib <= smi_mib


@pytest.mark.parametrize(
    ("name", "nominal_gb"),
    [
        ("t4", 16),
        ("v100-16gb", 16),
        ("v100-32gb", 32),
        ("a10g-24gb", 24),
        ("rtx-3090", 24),
        ("rtx-4090", 24),
        ("rtx-5090", 32),
        ("l40s", 48),
        ("a100-40gb", 40),
        ("a100-80gb", 80),
        ("h100-sxm", 80),
        ("h200", 141),
        ("b200", 180),
        ("mi300x", 192),
        ("mi250x", 64),
    ],
)
def test_memory_close_to_nominal(name: str, nominal_gb: int) -> None:
    """Vendors quote GB (or GiB for AMD); the device reports 0-10 % less than GiB x nominal."""
    got = catalog.gpu(name).memory_bytes
    assert 0.90 * nominal_gb * 2**30 <= got <= nominal_gb * 2**30 * 1.0001


def test_h100_sxm_datasheet_figures() -> None:
    """NVIDIA H100 datasheet (SXM5): BF16 1,979 TFLOPS and FP8 3,958 TFLOPS *with sparsity*,
    3.35 TB/s; the catalog keeps dense peaks (half)."""
    g = catalog.gpu("h100")
    assert g.tflops["bf16"] == pytest.approx(1979 / 2, rel=0.001)
    assert g.tflops["fp8"] == pytest.approx(3958 / 2, rel=0.001)
    assert g.bandwidth_gb_s == pytest.approx(3350)


def test_a100_datasheet_figures() -> None:
    """NVIDIA A100 datasheet: FP32 19.5, TF32 156 (312 sparse), BF16/FP16 312 (624 sparse)."""
    for name in ("a100-40gb", "a100-80gb"):
        g = catalog.gpu(name)
        assert (g.tflops["fp32"], g.tflops["tf32"], g.tflops["bf16"]) == (19.5, 156.0, 312.0)


def test_pre_ampere_gpus_have_no_bf16_peak() -> None:
    for name in ("t4", "v100-16gb", "v100-32gb"):
        assert "bf16" not in catalog.gpu(name).tflops
        assert "tf32" not in catalog.gpu(name).tflops
