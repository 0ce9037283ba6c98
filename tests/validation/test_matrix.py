"""GPU-free tests of the prepared GPU matrix (validation/matrix.py).

The dry run goes through the same plumbing as a GPU run (a forked process per case with a
result file, DeepSpeed cases through a subprocess) but builds on the meta device.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from validation import matrix
from validation.records import Measurement, Scenario

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "validation" / "reference" / "published_measurements.json"


def test_case_ids_unique_and_scenarios_valid() -> None:
    cases = matrix.cases()
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids))
    for c in cases:
        sc = Scenario.model_validate(c.scenario)
        assert sc.id == c.id
        assert c.kind in ("cuda", "deepspeed")
        assert c.est_s > 0
        is_ds = sc.request.zero > 0 or sc.request.deepspeed is not None
        assert (c.kind == "deepspeed") == is_ds


def test_priority_order_covers_the_four_groups() -> None:
    groups = [c.group for c in matrix.cases()]
    assert groups == sorted(groups)
    assert set(groups) == {1, 2, 3, 4}
    first_gpt2m = next(c for c in matrix.cases() if c.group == 2)
    # the MEMORY_MODEL figure comes first in its group
    req = Scenario.model_validate(first_gpt2m.scenario).request
    assert (req.batch_size, req.seq_len, req.dtype.value, req.optim) == (
        1,
        512,
        "fp32",
        "adamw_torch",
    )


def test_matrix_has_the_cases_the_issue_lists() -> None:
    reqs = [Scenario.model_validate(c.scenario).request for c in matrix.cases()]
    optims = {r.optim for r in reqs}
    assert {"adamw_torch", "adamw_torch_fused", "adafactor", "adamw_bnb_8bit",
            "paged_adamw_8bit"} <= optims  # fmt: skip
    assert {r.attn.value for r in reqs if r.attn is not None} == {
        "eager",
        "sdpa",
        "flash_attention_2",
    }
    assert {r.mixed_precision.value for r in reqs} >= {"no", "fp16", "bf16"}
    assert any(r.grad_ckpt for r in reqs) and any(not r.grad_ckpt for r in reqs)
    assert {int(r.zero) for r in reqs} == {0, 1, 2, 3}
    assert any(r.offload_optimizer.value == "cpu" for r in reqs)
    assert any(r.offload_param.value == "cpu" for r in reqs)
    assert any(r.qlora is not None for r in reqs) and any(r.lora is not None for r in reqs)
    impls = {c.scenario["optim_impl"] for c in matrix.cases()}
    assert {"default", "for-loop"} <= impls


def test_reference_cases_match_their_published_settings() -> None:
    refs = {r["id"]: r for r in json.loads(REFERENCE.read_text())}
    linked = [c for c in matrix.cases() if c.reference]
    assert len(linked) >= 10
    for c in linked:
        ref = refs[c.reference]  # every link names a real reference case
        req = Scenario.model_validate(c.scenario).request
        assert req.batch_size == ref["batch_size"], c.id
        assert req.seq_len == ref["seq_len"], c.id
        assert req.grad_ckpt == bool(ref["grad_checkpointing"]), c.id
        # LitGPT's LoRA runs accumulate 128 micro-batches; the matrix runs 1 (the peak
        # differs only by LoRA gradients kept alive, 4M params here, < 0.1 % of it).
        if ref.get("grad_accum") and not ref.get("peft"):
            assert req.grad_accum == ref["grad_accum"], c.id
        if ref.get("peft"):
            lora = req.qlora or req.lora
            assert lora is not None and lora.r == ref["peft"]["r"], c.id
            assert (req.qlora is not None) == (ref["peft"]["method"] == "qlora"), c.id
        if ref.get("zero"):
            assert int(req.zero) == ref["zero"]["stage"], c.id


def test_select_globs() -> None:
    cases = matrix.cases()
    assert matrix.select(cases, None) == cases
    picked = matrix.select(cases, "ds-*, llama2-7b-qlora*")
    assert {c.kind for c in picked} == {"deepspeed", "cuda"}
    assert all(c.id.startswith(("ds-", "llama2-7b-qlora")) for c in picked)
    assert matrix.select(cases, "nothing-matches") == []


def test_plan_table_lists_every_case_with_cumulative_time() -> None:
    cases = matrix.cases()[:3]
    text = matrix.plan_table(cases, budget_s=5.0)
    for c in cases:
        assert c.id in text
    total = sum(c.est_s for c in cases)
    assert f"estimated {total:.0f} s" in text
    assert "over budget" in text  # 3 cases of >= 3 s each exceed 5 s


def test_default_out_name() -> None:
    day = dt.date(2026, 11, 28)
    assert matrix.default_out_name("NVIDIA H200", day) == "cuda-h200-2026-11-28.jsonl"
    assert (
        matrix.default_out_name("NVIDIA A100-SXM4-80GB", day)
        == "cuda-a100-sxm4-80gb-2026-11-28.jsonl"
    )


def test_budget_cut_off_skips_without_writing(tmp_path: Path) -> None:
    out = tmp_path / "m.jsonl"
    done, skipped, path = matrix.run_matrix(matrix.cases()[:2], out, budget_s=0.0, spawn=True)
    assert done == [] and len(skipped) == 2 and path == out
    assert not out.exists() or out.read_text() == ""


def test_slim_wheel_drops_members_and_their_record_rows(tmp_path: Path) -> None:
    whl = tmp_path / "pkg-1.0-py3-none-any.whl"
    record = "pkg/a_cuda118.so,sha256=x,1\npkg/a_cuda130.so,sha256=y,1\npkg/__init__.py,,\n"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("pkg/__init__.py", "")
        z.writestr("pkg/a_cuda118.so", "old")
        z.writestr("pkg/a_cuda130.so", "new")
        z.writestr("pkg-1.0.dist-info/RECORD", record)
    import re

    matrix._slim_wheel(whl, keep=re.compile(r"cuda13\d"), drop=re.compile(r"a_cuda.*\.so$"))
    with zipfile.ZipFile(whl) as z:
        names = set(z.namelist())
        rows = z.read("pkg-1.0.dist-info/RECORD").decode().splitlines()
    assert names == {"pkg/__init__.py", "pkg/a_cuda130.so", "pkg-1.0.dist-info/RECORD"}
    assert rows == ["pkg/a_cuda130.so,sha256=y,1", "pkg/__init__.py,,"]


def _dry_run(
    tmp_path: Path, only: str, *extra: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path / "dry.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "validation.matrix", "--dry-run", "--out", str(out),
         "--only", only, *extra],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    return proc, out


def test_dry_run_plumbing_and_schema(tmp_path: Path) -> None:
    only = "cmp-gpt2-fp32-adamw-sdpa*,llama2-7b-qlora*,ds-gpt2m-zero1*"
    proc, out = _dry_run(tmp_path, only)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [Measurement.model_validate_json(x) for x in out.read_text().splitlines()]
    assert [m.scenario.id for m in lines] == [
        "cmp-gpt2-fp32-adamw-sdpa-b2s256",
        "llama2-7b-qlora-nf4dq-r8-pagedadamw32-b1s1304",
        "ds-gpt2m-zero1-fp16-ckpt-ga4-b1s512",
    ]
    for m in lines:
        assert m.error == "dry-run"
        assert m.fingerprint.device == "dry-run (no CUDA)"
    extra: dict[str, Any] = lines[1].fingerprint.model_extra or {}
    assert extra["dry_run_info"]["n_trainable_params"] == 4_194_304
    assert extra["reference_id"] == "litgpt-rt-llama2-7b-qlora-nf4dq-mb1"
    ds: dict[str, Any] = lines[2].fingerprint.model_extra or {}
    assert ds["deepspeed_config"]["zero_optimization"]["stage"] == 1
    # the seed's own config (published_measurements.json, extra_settings.ds_common)
    assert ds["deepspeed_config"]["fp16"]["enabled"] is True
    assert ds["deepspeed_config"]["fp16"]["auto_cast"] is True
    assert ds["deepspeed_config"]["zero_optimization"]["reduce_bucket_size"] == 2e8
    assert ds["deepspeed_config"]["gradient_accumulation_steps"] == 4
    assert ds["matrix_kind"] == "deepspeed"
    assert "3 cases" in proc.stdout


def test_dry_run_refuses_the_measurements_folder(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "validation.matrix", "--dry-run", "--only", "cmp-gpt2*",
         "--out", "validation/measurements/x.jsonl"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "refusing" in proc.stderr
    assert not (REPO / "validation" / "measurements" / "x.jsonl").exists()


@pytest.mark.slow
def test_full_dry_run_passes(tmp_path: Path) -> None:
    proc, out = _dry_run(tmp_path, "*")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = out.read_text().splitlines()
    assert len(lines) == len(matrix.cases())
    assert all(Measurement.model_validate_json(x).error == "dry-run" for x in lines)


def test_compare_rows_pairs_real_and_traced() -> None:
    from validation.cuda import failure_measurement, fingerprint, measured_from_phases

    sc = Scenario.model_validate(matrix.cases()[0].scenario)
    real = failure_measurement(sc, "x").model_copy(
        update={
            "error": None,
            "measured": measured_from_phases(
                {"1/optimizer": 1000, "2/backward": 800}, {}, {}, context_bytes=None
            ),
        }
    )
    traced = real.model_copy(
        update={
            "fingerprint": fingerprint(None, dry_run=True),
            "measured": measured_from_phases({"1/optimizer": 970}, {}, {}, context_bytes=None),
        }
    )
    (row,) = matrix.compare_rows([real], {sc.id: traced})
    assert row["real_allocated_bytes"] == 1000 and row["traced_allocated_bytes"] == 970
    assert row["error_pct"] == -3.0  # (970 - 1000) / 1000
    assert (row["real_peak"], row["traced_peak"]) == ("1/optimizer", "1/optimizer")
    (skipped,) = matrix.compare_rows([real], {sc.id: "QLoRA is not traced"})
    assert skipped["traced_allocated_bytes"] is None and skipped["note"] == "QLoRA is not traced"
