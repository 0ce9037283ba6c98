"""Hypothesis fuzzing of the CLI parser and of config-file parsing (issue 13, item 3).

Properties, for any argv and any config.json / DeepSpeed file:
- the CLI exits 0 or 2, never with a traceback; exit 2 prints exactly one ``vramcalc: error:``
  line on stderr and nothing on stdout;
- ``--json`` output always parses as strict JSON (no NaN/Infinity) and every number is finite;
- the Python API raises only ``VramcalcError`` or pydantic ``ValidationError`` on bad input;
- each example stays within a time budget (the profile's per-example ``deadline``).

Profiles: ``ci`` (the default: derandomized, 200 examples per property) and ``local``
(``VRAMCALC_FUZZ_PROFILE=local``: 2000 random examples per property).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import vramcalc
from vramcalc import cli
from vramcalc.errors import VramcalcError

settings.register_profile(
    "ci",
    max_examples=200,
    derandomize=True,
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    print_blob=True,
)
settings.register_profile(
    "local",
    max_examples=2000,
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    print_blob=True,
)
FUZZ = settings.get_profile(os.environ.get("VRAMCALC_FUZZ_PROFILE", "ci"))

# ----------------------------------------------------------------------------- helpers


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.run(argv)
    return code, out.getvalue(), err.getvalue()


def _reject_constant(name: str) -> Any:
    raise AssertionError(f"non-JSON constant {name} in the output")


def _numbers(node: Any) -> Iterator[float]:
    if isinstance(node, dict):
        for v in node.values():
            yield from _numbers(v)
    elif isinstance(node, list):
        for v in node:
            yield from _numbers(v)
    elif isinstance(node, int | float) and not isinstance(node, bool):
        yield node


def check_outcome(argv: list[str], code: int, out: str, err: str) -> None:
    assert code in (0, 2), (argv, code, err[-500:])
    assert "Traceback" not in err and "Traceback" not in out, (argv, err[-2000:])
    if code == 2:
        assert out == "", (argv, out[-300:])
        assert err.startswith("vramcalc: error: ") and err.count("\n") == 1, (argv, err)
        return
    assert err == "", (argv, err)
    if "--json" in argv:
        data = json.loads(out, parse_constant=_reject_constant)
        for x in _numbers(data):
            assert math.isfinite(x), (argv, x)


# ----------------------------------------------------------------------------- CLI argv

HOSTILE = st.sampled_from(
    [
        "",
        " ",
        "0",
        "-1",
        "-5",
        "1.5",
        "1e9",
        "1e400",
        "nan",
        "inf",
        "-inf",
        "true",
        "9" * 60,
        "ä",
        "ллама",
        "🙂",
        "x" * 300,
        "--json",
        "=",
        ",",
        "r=8,r=16",
        "targets=zz_proj",
    ]
)
SMALL_INT = st.integers(-3, 70_000).map(str)
FLOAT = st.floats(allow_nan=True, allow_infinity=True).map(repr)

OPTIONS: dict[str, st.SearchStrategy[str] | None] = {
    "-b": st.one_of(st.sampled_from(["1", "2", "8"]), SMALL_INT, HOSTILE),
    "-s": st.one_of(st.sampled_from(["128", "512", "2048"]), SMALL_INT, HOSTILE),
    "--grad-accum": st.one_of(st.sampled_from(["1", "4"]), SMALL_INT, HOSTILE),
    "--dtype": st.one_of(st.sampled_from(["fp32", "bf16", "fp16", "BF16"]), HOSTILE),
    "--mixed-precision": st.one_of(st.sampled_from(["no", "fp16", "bf16"]), HOSTILE),
    "--optim": st.one_of(
        st.sampled_from(["adamw_torch", "adamw_8bit", "sgd", "adafactor"]), HOSTILE
    ),
    "--attn": st.one_of(st.sampled_from(["eager", "sdpa", "flash_attention_2"]), HOSTILE),
    "--lora": st.one_of(
        st.sampled_from(["", "r=16", "r=8,alpha=16,dropout=0.1", "targets=all-linear"]),
        HOSTILE,
        st.text(max_size=30),
    ),
    "--qlora": st.one_of(st.sampled_from(["", "r=64,targets=all-linear"]), HOSTILE),
    "--quant": st.one_of(st.sampled_from(["nf4", "fp4", "int8"]), HOSTILE),
    "--adapter": st.one_of(st.sampled_from(["", "dim=64"]), HOSTILE),
    "--prefix": st.one_of(st.sampled_from(["", "tokens=20"]), HOSTILE),
    "--zero": st.one_of(st.sampled_from(["0", "1", "2", "3"]), HOSTILE),
    "--offload-optimizer": st.one_of(st.sampled_from(["none", "cpu", "nvme"]), HOSTILE),
    "--offload-param": st.one_of(st.sampled_from(["none", "cpu"]), HOSTILE),
    "--gpus": st.one_of(st.sampled_from(["1", "8"]), SMALL_INT, HOSTILE),
    "--nodes": st.one_of(st.sampled_from(["1", "2"]), SMALL_INT, HOSTILE),
    "--gpu": st.one_of(st.sampled_from(["a10g", "h100", "4090", "a100-80gb"]), HOSTILE),
    "--global-batch": st.one_of(SMALL_INT, HOSTILE),
    "--tokens": st.one_of(st.sampled_from(["1000000", "1000000000"]), SMALL_INT, HOSTILE),
    "--epochs": st.one_of(st.sampled_from(["1", "0.5", "3"]), FLOAT, HOSTILE),
    "--mfu": st.one_of(st.sampled_from(["0.4", "0.001", "1"]), FLOAT, HOSTILE),
    "--price-per-gpu-hour": st.one_of(st.sampled_from(["2.5"]), FLOAT, HOSTILE),
    "--grad-ckpt": None,
    "--ia3": None,
    "--max-batch": None,
    "--json": None,
}
MODELS = st.one_of(
    st.sampled_from(
        [
            "gpt2",
            "opt-125m",
            "tinyllama-1.1b",
            "mixtral-8x7b",
            "bert-base-uncased",
            "llama-2-7b",
            "gpt2-medum",
            "./no/config.json",
        ]
    ),
    HOSTILE,
    st.text(max_size=40),
).filter(lambda m: m not in cli.SUBCOMMANDS and not m.startswith("-"))


@st.composite
def argvs(draw: st.DrawFn) -> list[str]:
    argv = [draw(MODELS)]
    for name in draw(st.lists(st.sampled_from(sorted(OPTIONS)), max_size=6)):
        values = OPTIONS[name]
        argv.append(name)
        if values is not None:
            argv.append(draw(values))
    if draw(st.booleans()):
        argv.append("--json")
    return argv


@FUZZ
@given(argv=argvs())
def test_cli_argv(argv: list[str]) -> None:
    code, out, err = run_cli(argv)
    check_outcome(argv, code, out, err)


# ----------------------------------------------------------------------------- config files

LLAMA: dict[str, Any] = {
    "model_type": "llama", "hidden_size": 256, "intermediate_size": 768,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "vocab_size": 8000, "max_position_embeddings": 4096,
}  # fmt: skip
MIXTRAL = {**LLAMA, "model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2}
CONFIG_KEYS = [
    *LLAMA,
    "num_local_experts",
    "num_experts_per_tok",
    "head_dim",
    "rope_theta",
    "tie_word_embeddings",
    "n_layer",
    "n_embd",
    "rms_norm_eps",
    "sliding_window",
    "hidden_act",
    "rope_scaling",
    "torch_dtype",
    "_name_or_path",
]

# Raw JSON fragments (as text, so Infinity, NaN, 1e400 and 5000-digit integers are possible).
SCALARS = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(
        [
            "0",
            "-1",
            "1",
            "3",
            "1024",
            "1025",
            "1e9",
            "1e400",
            "-1e400",
            "NaN",
            "Infinity",
            "-Infinity",
            "2.7",
            "true",
            "false",
            "null",
            '""',
            '"auto"',
            '"inf"',
            '"12"',
            "9" * 5000,
            "[]",
            "{}",
            '"ä🙂"',
        ]
    ),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.text(max_size=10).map(json.dumps),
)


def _deep(levels: int) -> str:
    return "[" * levels + "1" + "]" * levels


@st.composite
def json_texts(draw: st.DrawFn, base: dict[str, Any], keys: list[str]) -> str:
    kind = draw(st.sampled_from(["mutate", "mutate", "mutate", "deep", "truncated", "junk"]))
    if kind == "deep":
        return '{"x": ' + _deep(draw(st.sampled_from([5, 9, 10, 50, 1000, 100_000]))) + "}"
    if kind == "junk":
        return draw(st.one_of(st.text(max_size=50), st.binary(max_size=50).map(repr), SCALARS))
    parts = {k: json.dumps(v) for k, v in base.items()}
    for key in draw(st.lists(st.sampled_from(keys), max_size=4)):
        parts[key] = draw(SCALARS)
    for key in draw(st.lists(st.text(max_size=12), max_size=3)):
        parts[key] = draw(SCALARS)
    if draw(st.booleans()):
        parts[draw(st.sampled_from(keys))] = draw(st.sampled_from(["[1, [2, [3]]]", _deep(12)]))
    text = "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in parts.items()) + "}"
    if kind == "truncated":
        text = text[: draw(st.integers(0, len(text)))]
    return text


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _python_api(request: dict[str, Any]) -> None:
    with contextlib.suppress(VramcalcError, ValidationError):
        vramcalc.estimate(request)


@FUZZ
@given(
    text=json_texts(LLAMA, CONFIG_KEYS) | json_texts(MIXTRAL, CONFIG_KEYS),
    extra=st.sampled_from([[], ["--json"], ["--lora", "--json"], ["--gpu", "a10g", "--json"]]),
)
def test_config_json_file(folder: Path, text: str, extra: list[str]) -> None:
    path = folder / "config.json"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    argv = [str(path), *extra]
    code, out, err = run_cli(argv)
    check_outcome(argv, code, out, err)
    _python_api({"model": str(path)})


DS_ZERO_KEYS = [
    "stage",
    "reduce_bucket_size",
    "allgather_bucket_size",
    "overlap_comm",
    "stage3_prefetch_bucket_size",
    "stage3_max_live_parameters",
    "stage3_param_persistence_threshold",
    "contiguous_gradients",
    "offload_optimizer",
    "offload_param",
    "cpu_offload",
]
DS_TOP_KEYS = [
    "fp16",
    "bf16",
    "bfloat16",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "train_batch_size",
    "zero_optimization",
]


@st.composite
def ds_texts(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["structured", "structured", "structured", "other"]))
    if kind == "other":
        return draw(json_texts({"zero_optimization": {"stage": 2}}, DS_TOP_KEYS))
    zero = {k: draw(SCALARS) for k in draw(st.lists(st.sampled_from(DS_ZERO_KEYS), max_size=4))}
    zero.setdefault("stage", draw(st.sampled_from(["0", "1", "2", "3", "2.7", '"2"', "true"])))
    for off in ("offload_optimizer", "offload_param"):
        if draw(st.booleans()):
            device = draw(st.sampled_from(['"cpu"', '"nvme"', '"none"', '"gpu"', "null", "1"]))
            zero[off] = '{"device": ' + device + "}"
    top = {k: draw(SCALARS) for k in draw(st.lists(st.sampled_from(DS_TOP_KEYS[3:6]), max_size=2))}
    for prec in draw(st.lists(st.sampled_from(["fp16", "bf16"]), max_size=2, unique=True)):
        enabled = draw(st.sampled_from(["true", "false", '"auto"', '"yes"', "1", "null"]))
        top[prec] = '{"enabled": ' + enabled + "}"
    zero_text = "{" + ", ".join(f'"{k}": {v}' for k, v in zero.items()) + "}"
    body = ", ".join(
        [f'"zero_optimization": {zero_text}', *(f'"{k}": {v}' for k, v in top.items())]
    )
    return "{" + body + "}"


FLAG_SETS = st.lists(
    st.sampled_from(
        [
            ["--zero", "3"],
            ["--zero", "2"],
            ["--offload-param", "cpu"],
            ["--offload-optimizer", "cpu"],
            ["--mixed-precision", "fp16"],
            ["--mixed-precision", "bf16"],
            ["--gpus", "8"],
            ["-b", "4"],
            ["--json"],
        ]
    ),
    max_size=3,
    unique_by=lambda f: f[0],
)


@FUZZ
@given(text=ds_texts(), flags=FLAG_SETS)
def test_deepspeed_file(folder: Path, text: str, flags: list[list[str]]) -> None:
    path = folder / "ds_config.json"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    argv = ["gpt2", "--deepspeed", str(path), *[x for f in flags for x in f], "--json"]
    code, out, err = run_cli(argv)
    check_outcome(argv, code, out, err)
