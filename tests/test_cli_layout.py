"""CLI parallel-layout options and ``--accelerate-config`` (issue 8's interface)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import pytest

from vramcalc import cli, engine
from vramcalc.accelerate_config import apply_accelerate
from vramcalc.errors import InvalidConfigError
from vramcalc.report import Layout
from vramcalc.specs import EstimateRequest

DATA = Path(__file__).parent / "data" / "accelerate"


def build(*args: str) -> EstimateRequest:
    return cli.build_request(cli._estimate_parser().parse_args(["gpt2", *args]))


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.run(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _eighty_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("NO_COLOR", "1")


# ----------------------------------------------------------------------------- flag -> field


@pytest.mark.parametrize(
    ("args", "field", "value"),
    [
        (["--fsdp", "full_shard"], "fsdp", "full_shard"),
        (["--fsdp", "SHARD_GRAD_OP"], "fsdp", "shard_grad_op"),
        (["--fsdp", "hybrid_shard", "--gpus", "8", "--nodes", "2"], "fsdp", "hybrid_shard"),
        (["--fsdp", "no_shard"], "fsdp", "no_shard"),
        (["--fsdp", "full_shard", "--fsdp-version", "1"], "fsdp_version", 1),
        (["--fsdp", "full_shard", "--fsdp-version", "2"], "fsdp_version", 2),
        (["--fsdp", "full_shard", "--fsdp-offload"], "fsdp_offload", True),
        (["--fsdp", "full_shard", "--fsdp-reshard-after-forward", "false"],
         "fsdp_reshard_after_forward", False),
        (["--fsdp", "full_shard", "--fsdp-reshard-after-forward", "TRUE"],
         "fsdp_reshard_after_forward", True),
        (["--fsdp", "full_shard", "--fsdp-version", "1", "--fsdp-use-orig-params", "false"],
         "fsdp_use_orig_params", False),
        (["--fsdp", "full_shard", "--fsdp-version", "1", "--fsdp-limit-all-gathers", "false"],
         "fsdp_limit_all_gathers", False),
        (["--fsdp", "full_shard", "--grad-accum", "4", "--fsdp-sync-each-batch"],
         "fsdp_sync_each_batch", True),
        (["--fsdp", "full_shard", "--fsdp-version", "1", "--lora", "r=8",
          "--fsdp-lora-in-blocks"], "fsdp_lora_in_blocks", True),
        (["--fsdp", "full_shard", "--fsdp-version", "1", "--fsdp-backward-prefetch",
          "backward_post"], "fsdp_backward_prefetch", "backward_post"),
        (["--fsdp", "full_shard", "--fsdp-version", "1", "--fsdp-backward-prefetch", "none"],
         "fsdp_backward_prefetch", "none"),
        (["--tp", "4"], "tp", 4),
        (["--tp", "2", "--sequence-parallel"], "sequence_parallel", True),
        (["--cp", "2"], "cp", 2),
        (["--pp", "4"], "pp", 4),
        (["--pp", "4", "--pp-schedule", "interleaved"], "pp_schedule", "interleaved"),
        (["--pp", "4", "--pp-schedule", "1F1B"], "pp_schedule", "1f1b"),
        (["--pp", "4", "--pp-schedule", "interleaved", "--pp-virtual-stages", "3"],
         "pp_virtual_stages", 3),
        (["--ep", "8"], "ep", 8),
        (["--gpus", "8"], "gpus", 8),
        (["--nodes", "2"], "nodes", 2),
    ],
)  # fmt: skip
def test_each_flag_sets_its_field(args: list[str], field: str, value: Any) -> None:
    got = getattr(build(*args), field)
    assert getattr(got, "value", got) == value


def test_defaults_without_layout_flags() -> None:
    req = build()
    assert req.fsdp is None and req.fsdp_version == 2 and not req.fsdp_offload
    assert (req.tp, req.cp, req.pp, req.ep, req.gpus, req.nodes) == (1, 1, 1, 1, 1, 1)
    assert req.accelerate_config is None
    # options an accelerate config can also set are left unset, not defaulted explicitly
    assert not {"gpus", "nodes", "zero", "mixed_precision", "grad_accum", "grad_ckpt", "fsdp"} & (
        req.model_fields_set
    )


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--fsdp", "ful_shard"], ["--fsdp value 'ful_shard'", "Did you mean 'full_shard'"]),
        (["--fsdp-version", "3"], ["--fsdp-version value '3'", "1, 2"]),
        (["--fsdp", "full_shard", "--fsdp-reshard-after-forward", "ture"],
         ["--fsdp-reshard-after-forward", "'true'"]),
        (["--fsdp", "full_shard", "--fsdp-use-orig-params", "yes"], ["false, true"]),
        (["--fsdp", "full_shard", "--fsdp-limit-all-gathers", "0"], ["false, true"]),
        (["--fsdp", "full_shard", "--fsdp-backward-prefetch", "backward_prev"],
         ["Did you mean 'backward_pre'"]),
        (["--pp", "2", "--pp-schedule", "interleave"], ["Did you mean 'interleaved'"]),
        (["--tp", "0"], ["--tp", "greater than 0"]),
        (["--cp", "-1"], ["--cp", "greater than 0"]),
        (["--pp", "x"], ["--pp", "invalid int"]),
        (["--ep", "0"], ["--ep", "greater than 0"]),
        (["--pp", "2", "--pp-schedule", "interleaved", "--pp-virtual-stages", "0"],
         ["--pp-virtual-stages", "greater than 0"]),
        # exclusivity and needs-a-switch rules (EstimateRequest's validator)
        (["--fsdp", "full_shard", "--zero", "2"], ["fsdp full_shard", "zero 2"]),
        (["--fsdp", "full_shard", "--offload-optimizer", "cpu"], ["offload_optimizer cpu"]),
        (["--fsdp-offload"], ["fsdp_offload true", "fsdp is not set"]),
        (["--fsdp-version", "1"], ["fsdp_version 1", "fsdp is not set"]),
        (["--fsdp", "full_shard", "--fsdp-backward-prefetch", "none"],
         ["fsdp_version is 2", "fsdp_version 1"]),
        (["--sequence-parallel"], ["sequence_parallel true", "tp is 1"]),
        (["--pp", "2", "--pp-virtual-stages", "4"], ["pp_virtual_stages 4", "pp_schedule is 1f1b"]),
        (["--pp-schedule", "interleaved"], ["pp_schedule interleaved", "pp is 1"]),
    ],
)  # fmt: skip
def test_bad_layout_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], args: list[str], needles: list[str]
) -> None:
    code, out, err = run(capsys, "gpt2", *args)
    assert code == 2 and out == ""
    assert err.startswith("vramcalc: error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, (needle, err)


def test_fsdp_with_deepspeed_file_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    code, _, err = run(capsys, "gpt2", "--fsdp", "full_shard", "--deepspeed", str(ds))
    assert code == 2 and "fsdp full_shard" in err and "deepspeed" in err


# ----------------------------------------------------------------------------- --accelerate-config


def test_accelerate_config_is_loaded_into_the_request() -> None:
    req = build("--accelerate-config", str(DATA / "fsdp2.yaml"))
    assert req.accelerate_config is not None
    assert req.accelerate_config["fsdp_config"]["fsdp_version"] == 2
    out, notes = apply_accelerate(req)
    assert out.fsdp is not None and out.fsdp.value == "full_shard" and out.gpus == 8
    assert notes


def test_accelerate_deepspeed_file_is_read_relative_to_the_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # not the YAML's folder
    req = build("--accelerate-config", str(DATA / "deepspeed_config_file.yaml"))
    expected = json.loads((DATA / "ds" / "zero_stage1_config.json").read_text())
    assert req.deepspeed == expected
    out, _ = apply_accelerate(req)
    assert out.deepspeed == expected and out.gpus == 2


def test_accelerate_deepspeed_file_and_deepspeed_flag(tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    with pytest.raises(InvalidConfigError, match="name two DeepSpeed configs"):
        build("--accelerate-config", str(DATA / "deepspeed_config_file.yaml"),
              "--deepspeed", str(other))  # fmt: skip
    same = DATA / "ds" / "zero_stage1_config.json"
    req = build("--accelerate-config", str(DATA / "deepspeed_config_file.yaml"),
                "--deepspeed", str(same))  # fmt: skip
    assert req.deepspeed is not None and req.deepspeed["zero_optimization"]["stage"] == 1


def test_accelerate_deepspeed_file_missing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cfg = tmp_path / "acc.yaml"
    cfg.write_text(
        "distributed_type: DEEPSPEED\ndeepspeed_config:\n  deepspeed_config_file: x.json\n"
    )
    code, _, err = run(capsys, "gpt2", "--accelerate-config", str(cfg))
    assert code == 2 and "deepspeed_config_file" in err and "x.json" in err


def test_accelerate_yaml_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(capsys, "gpt2", "--accelerate-config", str(tmp_path / "missing.yaml"))
    assert code == 2 and "no file" in err and "missing.yaml" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("distributed_type: FSDP\nfsdp_config:\n  fsdp_version: 2\n   bad: [1, 2\n")
    code, _, err = run(capsys, "gpt2", "--accelerate-config", str(bad))
    assert code == 2 and err.count("\n") == 1, err
    assert "bad.yaml" in err and "not valid YAML" in err and "line 4" in err
    bad.write_text("- just\n- a list\n")
    code, _, err = run(capsys, "gpt2", "--accelerate-config", str(bad))
    assert code == 2 and "mapping" in err and "list" in err
    bad.write_text("distributed_type: TPU_POD\n")
    code, _, err = run(capsys, "gpt2", "--accelerate-config", str(bad))
    assert code == 2 and "TPU_POD" in err and "MULTI_GPU" in err


def test_accelerate_yaml_unsafe_tags_are_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "evil.yaml"
    bad.write_text("distributed_type: !!python/object/apply:os.system ['echo hi']\n")
    code, _, err = run(capsys, "gpt2", "--accelerate-config", str(bad))
    assert code == 2 and "not valid YAML" in err


@pytest.mark.parametrize(
    ("file", "flags", "needles"),
    [
        ("fsdp2.yaml", ["--zero", "2"], ["FSDP", "zero 2"]),
        ("fsdp2.yaml", ["--gpus", "4"], ["num_processes 8", "gpus 4"]),
        ("multi_node.yaml", ["--nodes", "1"], ["num_machines 2", "nodes 1"]),
        ("deepspeed_zero3_offload.yaml", ["--fsdp", "full_shard"], ["DEEPSPEED", "full_shard"]),
        ("fsdp1_full_shard.yaml", ["--mixed-precision", "fp16"], ["bf16", "fp16"]),
    ],
)
def test_accelerate_contradictions_with_flags(
    file: str, flags: list[str], needles: list[str]
) -> None:
    req = build("--accelerate-config", str(DATA / file), *flags)
    with pytest.raises(InvalidConfigError) as info:
        apply_accelerate(req)
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


def test_flags_not_given_take_the_yaml_values() -> None:
    req = build("--accelerate-config", str(DATA / "deepspeed_zero3_offload.yaml"), "-b", "4")
    out, _ = apply_accelerate(req)
    assert (int(out.zero), out.offload_optimizer.value, out.offload_param.value) == (
        3,
        "cpu",
        "cpu",
    )
    assert (out.gpus, out.grad_accum, out.batch_size) == (2, 4, 4)


_RESOLVE_APPLIES = "apply_accelerate" in inspect.getsource(engine)


@pytest.mark.skipif(
    not _RESOLVE_APPLIES, reason="engine.resolve does not call apply_accelerate yet"
)
def test_end_to_end_contradiction_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "gpt2", "--accelerate-config", str(DATA / "fsdp2.yaml"),
                       "--gpus", "4")  # fmt: skip
    assert code == 2 and "num_processes 8" in err and "gpus 4" in err


@pytest.mark.skipif(
    not _RESOLVE_APPLIES, reason="engine.resolve does not call apply_accelerate yet"
)
def test_end_to_end_accelerate_equals_flags(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "gpt2", "--accelerate-config", str(DATA / "fsdp2.yaml"), "--json")
    assert code == 0, err
    via_yaml = json.loads(out)
    code, out, err = run(capsys, "gpt2", "--fsdp", "full_shard", "--gpus", "8",
                         "--mixed-precision", "bf16", "--json")  # fmt: skip
    assert code == 0, err
    via_flags = json.loads(out)
    assert via_yaml["peak"] == via_flags["peak"]


# ----------------------------------------------------------------------------- rendering


def _layout(**kw: Any) -> Layout:
    base: dict[str, Any] = {
        "world_size": 8, "dp_replicate": 1, "dp_shard": 8, "engine": "fsdp2",
        "summary": "8 GPUs: FSDP2 full_shard over 8 (reshard after forward), peak on rank 0",
    }  # fmt: skip
    return Layout(**{**base, **kw})


def test_table_shows_the_layout_in_one_line() -> None:
    from rich.console import Console

    report = engine.estimate(EstimateRequest(model="gpt2"))
    shown = report.model_copy(update={"layout": _layout()})
    console = Console(width=80, record=True, highlight=False, soft_wrap=False)
    cli.render_report(shown, console)
    lines = console.export_text().splitlines()
    hits = [line for line in lines if line.startswith("layout: ")]
    assert hits == ["layout: " + _layout().summary]


@pytest.mark.parametrize(
    "layout", [None, _layout(world_size=1, dp_shard=1, engine="none", summary="1 GPU")]
)
def test_no_layout_line_when_absent_or_trivial(layout: Layout | None) -> None:
    from rich.console import Console

    report = engine.estimate(EstimateRequest(model="gpt2")).model_copy(update={"layout": layout})
    console = Console(width=80, record=True, highlight=False, soft_wrap=False)
    cli.render_report(report, console)
    assert "layout:" not in console.export_text()


def test_summary_with_brackets_is_printed_verbatim() -> None:
    from rich.console import Console

    summary = "16 GPUs [2 nodes x 8]: HSDP 2 x 8, TP 2 [bold]"
    report = engine.estimate(EstimateRequest(model="gpt2")).model_copy(
        update={"layout": _layout(world_size=16, summary=summary)}
    )
    console = Console(width=120, record=True, highlight=False, soft_wrap=False)
    cli.render_report(report, console)
    assert "layout: " + summary in console.export_text()


def test_help_lists_the_parallelism_group(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli._estimate_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    for flag in ("--fsdp ", "--fsdp-version", "--fsdp-offload", "--fsdp-reshard-after-forward",
                 "--fsdp-use-orig-params", "--fsdp-limit-all-gathers", "--fsdp-backward-prefetch",
                 "--tp ", "--sequence-parallel", "--cp ", "--pp ", "--pp-schedule",
                 "--pp-virtual-stages", "--ep ", "--accelerate-config"):  # fmt: skip
        assert flag in out, flag
    assert "\nparallelism:" in out


def test_yaml_is_not_imported_without_the_option() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from vramcalc import cli; "
        "cli.build_request(cli._estimate_parser().parse_args(['gpt2', '--fsdp', 'full_shard'])); "
        "print('yaml' in sys.modules)"
    )
    root = Path(__file__).resolve().parent.parent
    env = {"PYTHONPATH": str(root), "PATH": ""}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=root, env=env, check=True
    )
    assert out.stdout.strip() == "False"
