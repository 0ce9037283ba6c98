"""The ``vramcalc`` command line: contract of issue 2, errors, subcommands, golden output.

Golden files in tests/golden/ are regression snapshots of the rendered output at 80 columns
(regenerate with ``VRAMCALC_UPDATE_GOLDEN=1``); every golden test also checks facts that do
not come from the snapshot: the printed peak equals the JSON peak, the line width, counts
derived by hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from vramcalc import catalog, cli
from vramcalc.errors import InvalidConfigError
from vramcalc.report import COMPONENTS

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.run(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    code, out, err = run(capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(autouse=True)
def _eighty_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("NO_COLOR", "1")


# ----------------------------------------------------------------------------- SPEC parsing


def test_parse_spec_lora_fields() -> None:
    got = cli.parse_spec(
        "--lora", "r=16,alpha=32,dropout=0.05,targets=q_proj+v_proj", cli._LORA_KEYS
    )
    assert got == {"r": "16", "alpha": "32", "dropout": "0.05", "targets": "q_proj+v_proj"}
    assert cli.parse_spec("--lora", "", cli._LORA_KEYS) == {}
    assert cli.parse_spec("--lora", "targets=all-linear", cli._LORA_KEYS) == {
        "targets": "all-linear"
    }


def test_parse_spec_unknown_key_names_closest(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "gpt2", "--lora", "r=16,alpah=32")
    assert code == 2
    assert err.startswith("vramcalc: error:") and err.count("\n") == 1
    assert "'alpah'" in err and "Did you mean 'alpha'" in err
    assert "Accepted: alpha, dropout, r, targets" in err


def test_parse_spec_item_without_equals(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "gpt2", "--adapter", "64")
    assert code == 2 and "key=value" in err and "dim" in err


def test_request_fields_from_options() -> None:
    ns = cli._estimate_parser().parse_args(
        ["gpt2", "-b", "4", "-s", "1024", "--qlora", "r=64,targets=all-linear", "--grad-ckpt",
         "--zero", "2", "--gpus", "8", "--mixed-precision", "BF16", "--attn", "eager"]
    )  # fmt: skip
    req = cli.build_request(ns)
    assert (req.batch_size, req.seq_len, req.gpus, int(req.zero)) == (4, 1024, 8, 2)
    assert req.qlora is not None and req.qlora.r == 64
    assert req.qlora.targets == ("all-linear",)
    assert req.grad_ckpt and req.mixed_precision == "bf16" and req.attn == "eager"
    bare = cli.build_request(cli._estimate_parser().parse_args(["gpt2", "--lora"]))
    assert bare.lora is not None and bare.lora.r == 8  # PEFT's default r


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["gpt2-medum"], ["unknown model", "gpt2-medium"]),
        (["gpt2", "--optim", "adamw_9bit"], ["unknown optimizer", "adamw_8bit"]),
        (["gpt2", "--gpu", "rtx-4009"], ["unknown GPU", "rtx-4090"]),
        (["gpt2", "--dtype", "fp8"], ["--dtype", "fp32"]),
        (["gpt2", "--zero", "4"], ["--zero", "0, 1, 2, 3"]),
        (["gpt2", "--attn", "flash"], ["--attn", "flash_attention_2"]),
        (["gpt2", "--qlora", "r=8", "--quant", "int8"], ["--qlora", "int8"]),
        (["gpt2", "--offload-param", "cpu", "--zero", "2"], ["--offload-param", "3"]),
        (["gpt2", "-b", "0"], ["--batch-size", "greater than 0"]),
        (["gpt2", "-s", "-5"], ["--seq-len", "greater than 0"]),
        (["gpt2", "--gpus", "0"], ["--gpus", "greater than 0"]),
        (["gpt2", "--lora", "r=0"], ["--lora r", "greater than 0"]),
        (["gpt2", "--lora", "r=abc"], ["--lora r", "integer"]),
        (["gpt2", "--lora", "r=8", "--ia3"], ["one PEFT method"]),
        (["gpt2", "--bogus"], ["unrecognized arguments: --bogus"]),
        (["gpt2", "-b", "x"], ["--batch-size", "invalid int"]),
        ([], ["MODEL"]),
        (["gpt2", "--global-batch", "64"], ["--max-batch"]),
        (["gpt2", "--max-batch"], ["--gpu"]),
        (["./no/such/config.json"], ["no such file", "./no/such/config.json"]),
    ],
)
def test_bad_input_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], args: list[str], needles: list[str]
) -> None:
    code, out, err = run(capsys, *args)
    assert code == 2
    assert out == ""
    assert err.startswith("vramcalc: error: ")
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)


def test_malformed_local_config_names_missing_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cfg = dict(catalog.model_row("llama-2-7b")["config"])
    del cfg["hidden_size"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    code, _, err = run(capsys, str(tmp_path / "config.json"))
    assert code == 2 and "hidden_size" in err and err.count("\n") == 1


def test_deepspeed_file_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "gpt2", "--deepspeed", str(tmp_path / "missing.json"))
    assert code == 2 and "no such file" in err
    bad = tmp_path / "ds.json"
    bad.write_text('{"zero_optimization": {"stage": 3,}}')
    code, _, err = run(capsys, "gpt2", "--deepspeed", str(bad))
    assert code == 2 and "not valid JSON" in err and "line 1" in err
    bad.write_text("[1, 2]")
    code, _, err = run(capsys, "gpt2", "--deepspeed", str(bad))
    assert code == 2 and "JSON object" in err


def test_deepspeed_file_drives_stage_and_offload(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({
        "bf16": {"enabled": "auto"},
        "zero_optimization": {
            "stage": 3,
            "offload_optimizer": {"device": "cpu"},
            "reduce_bucket_size": "auto",
            "stage3_prefetch_bucket_size": "auto",
        },
        "train_micro_batch_size_per_gpu": "auto",
    }))  # fmt: skip
    plain = run_json(capsys, "gpt2-medium", "--gpus", "8", "--mixed-precision", "bf16")
    zero3 = run_json(
        capsys, "gpt2-medium", "--gpus", "8", "--mixed-precision", "bf16", "--deepspeed", str(ds)
    )
    assert zero3["assumptions"]["zero_stage"] == 3
    assert zero3["cpu_bytes"] > 0 and plain["cpu_bytes"] == 0

    # ZeRO-3 with the optimizer offloaded keeps far less model state per GPU
    def state(r: dict[str, Any]) -> int:
        return int(r["breakdown"]["params"] + r["breakdown"]["gradients"]
                   + r["breakdown"]["optimizer"])  # fmt: skip

    assert state(zero3) < state(plain)


# ----------------------------------------------------------------------------- JSON contract


def test_json_contract_gpt2_medium_lora(capsys: pytest.CaptureFixture[str]) -> None:
    r = run_json(capsys, "gpt2-medium", "--optim", "adamw_8bit", "--lora", "r=16")
    assert {"model", "peak", "breakdown", "details", "timeline", "cpu_bytes"} <= set(r)
    # gpt2-medium has 354,823,168 parameters (HF model card / meta build: 24 layers, d=1024,
    # vocab 50257, 1024 positions).
    assert r["model"]["n_params"] == 354_823_168
    # PEFT's default LoRA target for gpt2 is c_attn (1024 -> 3072): per layer
    # r*(in+out) = 16*(1024+3072) = 65,536; 24 layers -> 1,572,864.
    assert r["model"]["n_trainable_params"] == 24 * 16 * (1024 + 3072)
    assert sum(r["breakdown"][c] for c in COMPONENTS) == r["peak"]["device_bytes"]
    assert all(isinstance(r["breakdown"][c], int) for c in COMPONENTS)
    assert all(k.split("/")[0] in COMPONENTS for k in r["details"])
    assert r["peak"]["allocated_bytes"] <= r["peak"]["reserved_bytes"] <= r["peak"]["device_bytes"]
    assert r["fit"] is None and r["cost"] is None


def test_json_equals_python_api(capsys: pytest.CaptureFixture[str]) -> None:
    from vramcalc.engine import estimate

    r = run_json(capsys, "llama-3.2-1b", "--dtype", "bf16", "-b", "2", "--grad-ckpt")
    api = estimate(model="llama-3.2-1b", dtype="bf16", batch_size=2, grad_ckpt=True)
    assert r == api.model_dump(mode="json")


def test_fit_headroom_and_cost_arithmetic(capsys: pytest.CaptureFixture[str]) -> None:
    r = run_json(capsys, "mistral-7b", "--lora", "r=16", "--gpu", "h100-80gb",
                 "--tokens", "50000000", "--epochs", "3")  # fmt: skip
    gpu = catalog.gpu("h100-80gb")
    fit, cost = r["fit"], r["cost"]
    assert fit["gpu_memory_bytes"] == gpu.memory_bytes
    assert fit["headroom_bytes"] == fit["usable_bytes"] - r["peak"]["device_bytes"]
    assert fit["fits"] == (fit["headroom_bytes"] >= 0)
    # time = FLOPs / (GPUs x peak x MFU); money = hours x GPUs x price (issue 2)
    assert cost["tokens"] == 50_000_000 and cost["epochs"] == 3
    assert cost["total_flops"] == pytest.approx(cost["flops_per_token"] * 50_000_000 * 3)
    t = cost["total_flops"] / (cost["n_gpus"] * cost["peak_tflops_per_gpu"] * 1e12 * cost["mfu"])
    assert cost["time_s"] == pytest.approx(t)
    usd = t / 3600 * cost["n_gpus"] * cost["price_usd_per_gpu_hour"]
    assert cost["cost_usd"] == pytest.approx(usd)


def test_price_and_mfu_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    r = run_json(capsys, "gpt2", "--gpu", "a100-80gb", "--tokens", "1000000", "--mfu", "0.5",
                 "--price-per-gpu-hour", "2")  # fmt: skip
    assert r["cost"]["mfu"] == 0.5 and r["cost"]["price_usd_per_gpu_hour"] == 2


def test_max_batch_is_the_boundary(capsys: pytest.CaptureFixture[str]) -> None:
    from vramcalc.engine import estimate

    fit = run_json(capsys, "gpt2-medium", "--gpu", "t4", "-s", "1024", "--max-batch",
                   "--global-batch", "256")  # fmt: skip
    b = fit["max_batch_size"]
    assert b >= 1
    limit = catalog.gpu("t4").memory_bytes
    at = estimate(model="gpt2-medium", gpu="t4", seq_len=1024, batch_size=b)
    over = estimate(model="gpt2-medium", gpu="t4", seq_len=1024, batch_size=b + 1)
    assert at.peak.device_bytes <= limit < over.peak.device_bytes
    assert fit["suggested_grad_accum"] == -(-256 // b)


# ----------------------------------------------------------------------------- rendering


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("VRAMCALC_UPDATE_GOLDEN") or not path.exists():
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"{name} changed; see the diff"


def _assert_fits_80(text: str) -> None:
    widest = max(len(line.rstrip()) for line in text.splitlines())
    assert widest <= 80, widest


GOLDEN_CASES = {
    "gpt2_medium_lora.txt": ["gpt2-medium", "--optim", "adamw_8bit", "--lora", "r=16"],
    "llama31_8b_qlora_4090.txt": [
        "meta-llama/Llama-3.1-8B",
        "--dtype",
        "bf16",
        "--qlora",
        "r=64,targets=all-linear",
        "--grad-ckpt",
        "-s",
        "4096",
        "--gpu",
        "rtx-4090",
    ],
    "mistral_7b_cost.txt": [
        "mistral-7b",
        "--lora",
        "r=16",
        "--gpu",
        "h100-80gb",
        "--tokens",
        "50000000",
        "--epochs",
        "3",
    ],
}


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_golden_rendering(capsys: pytest.CaptureFixture[str], name: str) -> None:
    args = GOLDEN_CASES[name]
    code, text, err = run(capsys, *args)
    assert code == 0, err
    _assert_fits_80(text)
    r = run_json(capsys, *args)
    # facts the snapshot must agree with, computed from the JSON independently of the renderer
    gib = 2**30
    for kind in ("allocated", "reserved", "device"):
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(kind))
        assert f"{r['peak'][f'{kind}_bytes'] / gib:.2f} GiB" in line
    assert f"peak during {r['peak']['phase']}" in text
    total_line = next(ln for ln in text.splitlines() if "total" in ln)
    assert f"{r['peak']['device_bytes'] / gib:.2f}" in total_line
    for comp in COMPONENTS:
        row = next(ln for ln in text.splitlines() if ln.startswith(f"│ {comp} "))
        assert f"{r['breakdown'][comp] / gib:.2f}" in row
    if r["fit"]:
        verdict = "Fits" if r["fit"]["fits"] else "Does not fit"
        assert f"{verdict} {r['fit']['gpu']}" in text
    if r["cost"]:
        assert f"${r['cost']['cost_usd']:,.2f}" in text
    _golden(name, text)


def test_max_batch_rendering(capsys: pytest.CaptureFixture[str]) -> None:
    code, text, _ = run(capsys, "llama-2-7b", "--lora", "r=8", "--gpu", "a10g-24gb",
                        "--max-batch")  # fmt: skip
    assert code == 0
    fit = run_json(capsys, "llama-2-7b", "--lora", "r=8", "--gpu", "a10g-24gb", "--max-batch")
    if fit["max_batch_size"]:
        assert f": {fit['max_batch_size']}" in text
    else:
        assert "does not fit" in text
    _assert_fits_80(text)
    _golden("llama2_7b_max_batch_a10g.txt", text)


def test_cpu_memory_shown_when_offloaded(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "config.json").write_text(json.dumps(catalog.model_row("llama-2-7b")["config"]))
    args = [str(tmp_path / "config.json"), "--zero", "3", "--offload-optimizer", "cpu",
            "--gpus", "8", "--mixed-precision", "bf16"]  # fmt: skip
    r = run_json(capsys, *args)
    assert r["cpu_bytes"] > 0 and r["model"]["n_params"] == 6_738_415_616
    code, text, _ = run(capsys, *args)
    assert code == 0 and f"CPU memory (offloaded): {r['cpu_bytes'] / 2**30:.2f} GiB" in text
    _assert_fits_80(text)
    # a model folder works as well as its config.json
    assert run_json(capsys, str(tmp_path), "--zero", "3", "--offload-optimizer", "cpu",
                    "--gpus", "8", "--mixed-precision", "bf16") == r  # fmt: skip


# ----------------------------------------------------------------------------- subcommands


def test_models_filter(capsys: pytest.CaptureFixture[str]) -> None:
    code, text, _ = run(capsys, "models", "llama-2")
    assert code == 0
    for name in ("llama-2-7b", "llama-2-13b", "llama-2-70b"):
        assert name in text
    assert "gpt2" not in text
    _assert_fits_80(text)
    rows = json.loads(run(capsys, "models", "--json")[1])
    assert len(rows) == len(catalog.model_rows())
    code, _, err = run(capsys, "models", "no-such-model-zzz")
    assert code == 1 and "no model matches" in err


def test_gpus_lists_catalog(capsys: pytest.CaptureFixture[str]) -> None:
    code, text, _ = run(capsys, "gpus")
    assert code == 0
    _assert_fits_80(text)
    for g in catalog.gpus():
        assert g.name in text
    h100 = catalog.gpu("h100-sxm")
    line = next(ln for ln in text.splitlines() if "│ h100-sxm " in ln)
    assert f"{h100.memory_bytes / 2**30:.1f}" in line


def test_optimizers_lists_every_name(capsys: pytest.CaptureFixture[str]) -> None:
    code, text, _ = run(capsys, "optimizers")
    assert code == 0
    summary = json.loads(run(capsys, "optimizers", "--json")[1])
    assert set(summary) == set(catalog.optimizer_names())
    assert summary["adamw_8bit"] == "alias of adamw_bnb_8bit"
    assert "adamw_torch_fused" in text


def test_serve_calls_api(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("fastapi")
    monkeypatch.syspath_prepend(str(ROOT))
    import api.serve

    calls: list[tuple[str, int, int]] = []
    monkeypatch.setattr(api.serve, "serve", lambda h, p, w: calls.append((h, p, w)))
    code, _, _ = run(capsys, "serve", "--host", "0.0.0.0", "--port", "9000", "--workers", "2")
    assert code == 0 and calls == [("0.0.0.0", 9000, 2)]
    code, _, err = run(capsys, "serve", "--port", "70000")
    assert code == 2 and "--port" in err


def test_validate_and_calibrate_dispatch(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    import validation.calibrate
    import validation.compare

    seen: list[Any] = []

    def fake_validate(request: Any, backend: str, as_json: bool) -> int:
        seen.append((request, backend, as_json))
        return 0

    monkeypatch.setattr(validation.compare, "validate_main", fake_validate)

    def fake_calibrate(argv: list[str]) -> int:
        seen.append(argv)
        return 0

    monkeypatch.setattr(validation.calibrate, "calibrate_main", fake_calibrate)
    code, _, _ = run(capsys, "validate", "gpt2", "--lora", "r=4", "--backend", "cuda", "--json")
    assert code == 0
    request, backend, as_json = seen[0]
    assert request.model == "gpt2" and request.lora.r == 4 and backend == "cuda" and as_json
    assert run(capsys, "calibrate", "--write")[0] == 0 and seen[1] == ["--write"]
    code, _, err = run(capsys, "validate", "gpt2", "--backend", "gpu")
    assert code == 2 and "--backend" in err and "cuda" in err


def test_missing_optional_module_is_a_clear_error() -> None:
    with pytest.raises(InvalidConfigError, match=r"pip install -e \.\[api\]"):
        cli._repo_import("api.no_such_module_zz", "api")


# ----------------------------------------------------------------------------- process level


def test_process_exit_codes_and_no_torch() -> None:
    code = (
        "import sys; from vramcalc.cli import run; rc = run(sys.argv[1:]); "
        "heavy = [m for m in ('torch', 'transformers', 'typer') if m in sys.modules]; "
        "print('HEAVY', heavy, file=sys.stderr); sys.exit(rc)"
    )
    ok = subprocess.run([sys.executable, "-c", code, "gpt2-medium", "--json"], cwd=ROOT,
                        capture_output=True, text=True, timeout=60)  # fmt: skip
    assert ok.returncode == 0 and "HEAVY []" in ok.stderr
    json.loads(ok.stdout)
    bad = subprocess.run([sys.executable, "-m", "vramcalc", "gpt2", "--optim", "adamw_9bit"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("vramcalc: error: unknown optimizer")
    assert "Traceback" not in bad.stderr
    helped = subprocess.run([sys.executable, "-m", "vramcalc", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert helped.returncode == 0
    for option in ("--batch-size", "--seq-len", "--qlora", "--deepspeed", "--max-batch",
                   "--price-per-gpu-hour", "--json"):  # fmt: skip
        assert option in helped.stdout


# each command's output: a rich table, rich lines, plain print of a rendered plan, JSON
_PLAN = (
    "plan",
    "gpt2",
    "--seq-len",
    "512",
    "--tokens",
    "1000000",
    "--gpus-from",
    "a10g-24gb,h100-sxm",
)
_PIPED = [("gpt2",), ("gpt2", "--json"), ("models",), _PLAN, (*_PLAN, "--json")]


def _piped_id(args: tuple[str, ...]) -> str:
    return " ".join(args[:2]) + " --json" * ("--json" in args[2:])


@pytest.mark.parametrize("args", _PIPED, ids=_piped_id)
def test_reader_gone_before_output_exits_quietly(args: tuple[str, ...]) -> None:
    """``vramcalc ... | head -0``: the reader closed the pipe before the first write.

    Deterministic form of ``| head -3``: every write then fails with EPIPE. The process must
    exit with 141 (128 + SIGPIPE, cli.EXIT_BROKEN_PIPE) and print nothing on stderr: no
    traceback, no "Exception ignored" from the interpreter's flush at exit.
    """
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "vramcalc", *args], cwd=ROOT,
                              stdout=write_end, stderr=subprocess.PIPE, text=True,
                              timeout=120)  # fmt: skip
    finally:
        os.close(write_end)
    assert proc.stderr == ""
    assert proc.returncode == cli.EXIT_BROKEN_PIPE == 141


def test_reader_that_stops_after_one_line_sees_no_traceback() -> None:
    """``vramcalc plan ... | head -1`` as a shell runs it: the reader takes one line and goes."""
    proc = subprocess.Popen([sys.executable, "-m", "vramcalc", *_PLAN], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    code = proc.wait(timeout=120)
    assert first.startswith(b"plan: gpt2")
    assert err == ""
    # 0 when the whole plan was already in the pipe's buffer when the reader left
    assert code in (0, cli.EXIT_BROKEN_PIPE)


def test_max_batch_rendering_when_it_fits(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["llama-2-7b", "--qlora", "r=8", "--gpu", "a10g-24gb", "--max-batch"]
    code, text, _ = run(capsys, *args, "--global-batch", "64")
    assert code == 0
    fit = run_json(capsys, *args, "--global-batch", "64")
    b = fit["max_batch_size"]
    assert b >= 1 and f"a10g-24gb at seq-len 512: {b}" in text
    # ceil(64 / (b x 1 GPU)) accumulation steps reach the global batch
    assert f"suggested --grad-accum: {-(-64 // b)}" in text
    assert f"headroom at that batch: {fit['headroom_bytes'] / 2**30:.2f} GiB" in text
    _assert_fits_80(text)
    _golden("llama2_7b_qlora_max_batch_a10g.txt", text)


# ----------------------------------------------------------------------------- cold start

_REPRESENTATIVE = [
    ("gpt2",),
    ("gpt2", "--json"),
    ("llama-3.1-8b", "--lora", "r=16"),
    ("llama-3.1-8b", "--lora", "r=16", "--json"),
    (
        "llama-3.1-8b",
        "--gpus",
        "8",
        "--zero",
        "3",
        "--mixed-precision",
        "bf16",
        "--gpu",
        "h100-sxm",
    ),
    ("llama-3.1-8b", "--gpus", "8", "--fsdp", "full_shard", "--json"),
    ("qwen2.5-7b", "--task", "infer", "--prompt-len", "1024", "--new-tokens", "128"),
    ("gpt2", "--optim", "adamw_9bit"),
    ("gpus", "--json"),
]


def test_quick_exit_prints_the_same_bytes_as_run(capsys: pytest.CaptureFixture[str]) -> None:
    """``main``'s one-shot path (gc off, os._exit, no plugin loader) against plain ``run``.

    Each command runs once as a process (``python -m vramcalc``: ``cli.main``) and once in
    this process through ``cli.run`` with the normal interpreter life cycle; stdout, stderr
    and the exit status must agree byte for byte.
    """
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1"}
    env.pop("PYDANTIC_DISABLE_PLUGINS", None)
    for args in _REPRESENTATIVE:
        proc = subprocess.run([sys.executable, "-m", "vramcalc", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        code, out, err = run(capsys, *args)
        assert (proc.returncode, proc.stdout, proc.stderr) == (code, out, err), args
        assert out or err


def test_plugin_loader_stand_in_matches_pydantic() -> None:
    """pydantic takes only ``get_plugins`` from its loader, and a cold estimate skips the loader.

    If a pydantic release imports more from ``pydantic.plugin._loader``, the stand-in of
    ``cli._skip_plugin_loader`` would break model building: this test fails first.
    """
    import re

    import pydantic.plugin._schema_validator as sv

    source = Path(sv.__file__).read_text(encoding="utf-8")
    assert re.findall(r"from \._loader import (.+)", source) == ["get_plugins"]
    assert "_loader" not in source.replace("from ._loader import get_plugins", "")
    code = (
        "import sys; from vramcalc.cli import run; rc = run(sys.argv[1:]); "
        "print(sorted(m for m in ('importlib.metadata', 'pydantic.plugin._loader') "
        "if m in sys.modules), sys.modules['pydantic.plugin._loader'].__doc__, file=sys.stderr)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"}
    proc = subprocess.run([sys.executable, "-c", code, "gpt2", "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "['pydantic.plugin._loader'] vramcalc's stand-in" in proc.stderr
    # plugins on (the service's setting): the real loader
    env["PYDANTIC_DISABLE_PLUGINS"] = "some_plugin"
    proc = subprocess.run([sys.executable, "-c", code, "gpt2", "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert "['importlib.metadata', 'pydantic.plugin._loader']" in proc.stderr


def test_cold_estimate_skips_modules_it_does_not_need() -> None:
    """A plain training estimate imports neither ``importlib.resources`` (and its ``zipfile``)
    to read the data files, nor the inference and trainer modules, nor rich for ``--json``
    (benchmarks/bench_cold.py)."""
    code = (
        "import sys; from vramcalc.cli import run; rc = run(sys.argv[1:]); "
        "mods = ('zipfile', 'importlib.resources', 'importlib.metadata', 'rich', "
        "'vramcalc.inference_walk', 'vramcalc.formulas.inference', 'vramcalc.serving', "
        "'vramcalc.formulas.trainers'); "
        "print(rc, sorted(m for m in mods if m in sys.modules), file=sys.stderr)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"}
    proc = subprocess.run([sys.executable, "-c", code, "llama-3.1-8b", "--lora", "r=16",
                           "--json"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert proc.stderr.strip() == "0 []", proc.stderr
    # an inference estimate does import them (the test above is not vacuous)
    proc = subprocess.run([sys.executable, "-c", code, "gpt2", "--task", "infer", "--json"],
                          cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert proc.stderr.strip() == "0 ['vramcalc.formulas.inference', 'vramcalc.inference_walk']"
    proc = subprocess.run([sys.executable, "-c", code, "gpt2", "--trainer", "dpo", "--json"],
                          cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert proc.stderr.strip() == "0 ['vramcalc.formulas.inference', 'vramcalc.formulas.trainers']"


def test_table_prints_a_model_name_as_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder name is text, not rich markup or an emoji code (``:rocket:``, ``[red]``)."""
    folder = tmp_path / "my:rocket:[red]model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(catalog.model_row("gpt2")["config"]))
    code, out, err = run(capsys, str(folder))
    assert code == 0, err
    assert out.splitlines()[0] == "my:rocket:[red]model · gpt2"
    assert "\N{ROCKET}" not in out
    code, out, err = run(capsys, str(folder), "--json")
    assert json.loads(out)["model"]["name"] == "my:rocket:[red]model"
