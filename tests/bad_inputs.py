"""The bad-input catalogue (issue 13): inputs every entry point must refuse, with one message.

Each ``Case`` is run by ``tests/test_bad_inputs.py`` through the CLI (``vramcalc.cli.run``:
exit 2, one line on stderr, no traceback), the Python API (``vramcalc.estimate``/``fit``: a
``VramcalcError`` or pydantic ``ValidationError``) and REST (FastAPI ``TestClient``: 4xx).
``needles`` are the message core that must appear in all three answers; a channel where the
same input cannot be expressed (a duplicate CLI option, a path over HTTP) says so with ``None``
and the reason in ``why``.

Files are written to a temporary folder; ``{tmp}`` in argv and requests is that folder.
Expected messages are written from the issue and the docs, not copied from the code's output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CASES", "Case", "deep_json"]

# A tiny llama that the engine estimates in milliseconds; cases change one key of it.
LLAMA: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 8000,
    "max_position_embeddings": 4096,
}
MIXTRAL: dict[str, Any] = {
    "model_type": "mixtral",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 8000,
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
}
DS2: dict[str, Any] = {"zero_optimization": {"stage": 2}}
NEST_REST = 40  # REST bodies stay parseable; the depth limit (8) is what refuses them
_INLINE: Any = object()  # "send the same config inline" (None: not sent over REST)


def deep_json(levels: int, inner: str = "1") -> str:
    """``{"a": [[[...1...]]]}`` with ``levels`` nested lists, as text."""
    return '{"a": ' + "[" * levels + inner + "]" * levels + "}"


def nested(levels: int) -> dict[str, Any]:
    node: Any = 1
    for _ in range(levels):
        node = [node]
    return {"a": node}


def with_(base: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {**base, **kw}


def raw(obj: Any) -> str:
    """JSON text as Python writes it (NaN/Infinity kept, as a hostile client sends them)."""
    return json.dumps(obj)


@dataclass(frozen=True)
class Case:
    """One bad input and how each entry point must refuse it."""

    id: str
    needles: tuple[str, ...]
    argv: tuple[str, ...] | None = None
    request: dict[str, Any] | None = None
    rest: str | dict[str, Any] | None = None
    """REST body: a dict (sent as JSON, NaN/Infinity kept), raw text, or None (not sent)."""
    files: dict[str, str] = field(default_factory=dict)
    fit: bool = False
    global_batch: int | None = None
    rest_needles: tuple[str, ...] | None = None
    """REST's message core where it differs (the service never opens paths)."""
    py_needles: tuple[str, ...] | None = None
    """The Python API's message core where it differs (pydantic's schema message)."""
    cli_needles: tuple[str, ...] | None = None
    """The CLI's message core where it differs (argparse parses numbers itself)."""
    why: str = ""


def _cfg(case_id: str, config: dict[str, Any] | str, needles: tuple[str, ...], **kw: Any) -> Case:
    """A config.json case: the CLI and Python read the file, REST gets the object inline."""
    text = config if isinstance(config, str) else raw(config)
    rest: Any = kw.pop("rest", _INLINE)
    if rest is _INLINE:
        rest = {"model": config} if isinstance(config, dict) else None
    return Case(
        id=case_id,
        needles=needles,
        argv=("{tmp}/" + case_id + ".json",),
        request={"model": "{tmp}/" + case_id + ".json"},
        rest=rest,
        files={case_id + ".json": text},
        **kw,
    )


def _ds(
    case_id: str, config: dict[str, Any] | str, needles: tuple[str, ...], *flags: str, **kw: Any
) -> Case:
    """A DeepSpeed case: the CLI reads the file, Python and REST get the object inline."""
    text = config if isinstance(config, str) else raw(config)
    request: dict[str, Any] = kw.pop("request", None) or {}
    rest: Any = kw.pop("rest", _INLINE)
    # "py" given: the Python request differs (None: not expressible); else the file inline
    py = kw.pop("py") if "py" in kw else {"model": "gpt2", "deepspeed": json.loads(text), **request}
    if rest is _INLINE:
        rest = (
            {"model": "gpt2", "deepspeed": config, **request} if isinstance(config, dict) else None
        )
    return Case(
        id=case_id,
        needles=needles,
        argv=("gpt2", "--deepspeed", "{tmp}/" + case_id + ".json", *flags),
        request=py,
        rest=rest,
        files={case_id + ".json": text},
        **kw,
    )


def _req(
    case_id: str,
    argv: tuple[str, ...] | None,
    request: dict[str, Any] | None,
    needles: tuple[str, ...],
    **kw: Any,
) -> Case:
    """A request-field case: the same input as options, keywords and a JSON body."""
    rest = kw.pop("rest", request)
    return Case(id=case_id, needles=needles, argv=argv, request=request, rest=rest, **kw)


LAYERS = ("is above the limit of 1024 (max_layers)",)
FINITE = ("is not a finite number",)
DEPTH = ("nested deeper than 8 levels",)
DIGITS = ("5000-digit integer",)

CASES: list[Case] = [
    # ---- config.json: sizes bounded in the core (issue: 1e9 layers ran for minutes)
    _cfg(
        "layers_1e9",
        with_(LLAMA, num_hidden_layers=10**9),
        ("num_hidden_layers=1000000000", *LAYERS),
    ),
    _cfg(
        "layers_1e6", with_(LLAMA, num_hidden_layers=10**6), ("num_hidden_layers=1000000", *LAYERS)
    ),
    _cfg(
        "layers_float_1e9",
        with_(LLAMA, num_hidden_layers=1e9),
        ("num_hidden_layers=1e+09", *LAYERS),
    ),
    _cfg("layers_2000", with_(LLAMA, num_hidden_layers=2000), LAYERS),
    _cfg(
        "hidden_1e7",
        with_(LLAMA, hidden_size=10**7),
        ("hidden_size=10000000", "is above the limit of 131072 (max_hidden_size)"),
    ),
    _cfg(
        "vocab_1e9",
        with_(LLAMA, vocab_size=10**9),
        ("vocab_size=1000000000", "is above the limit of 4194304 (max_vocab_size)"),
    ),
    _cfg(
        "heads_1e5",
        with_(LLAMA, num_attention_heads=10**5),
        ("num_attention_heads=100000", "(max_heads)"),
    ),
    _cfg(
        "intermediate_1e8",
        with_(LLAMA, intermediate_size=10**8),
        ("intermediate_size=", "(max_intermediate_size)"),
    ),
    _cfg(
        "positions_1e9",
        with_(LLAMA, max_position_embeddings=10**9),
        ("max_position_embeddings=1000000000", "(max_position_embeddings)"),
    ),
    _cfg(
        "experts_4096",
        with_(MIXTRAL, num_local_experts=4096),
        ("num_local_experts=4096", "(max_experts)"),
    ),
    _cfg(
        "experts_per_tok_100_of_8",
        with_(MIXTRAL, num_experts_per_tok=100),
        ("num_experts_per_tok (100) exceeds the number of experts (8)",),
    ),
    _cfg(
        "other_int_2e60",
        with_(LLAMA, rope_theta=2**60),
        ("rope_theta=", "is above the limit of 9007199254740992"),
    ),
    _cfg(
        "vocab_5000_digits",
        raw(LLAMA)[:-1] + ', "vocab_size": ' + "9" * 5000 + "}",
        ("vocab_size is a 5000-digit integer",),
        rest=raw(LLAMA)[:-1] + ', "x": 1}',
        rest_needles=(),
        why="a 5000-digit integer cannot be parsed from a REST body: any 4xx",
    ),
    _cfg(
        "config_deep_100k",
        deep_json(100_000),
        DEPTH,
        rest={"model": nested(NEST_REST)},
        why="REST sends 40 levels (a 100k-deep body is a JSON-parser matter of the service)",
    ),
    _cfg(
        "config_nan",
        raw(with_(LLAMA, rms_norm_eps=float("nan"))),
        ("rms_norm_eps=nan", *FINITE),
        rest=raw({"model": with_(LLAMA, rms_norm_eps=float("nan"))}),
    ),
    _cfg(
        "config_infinity",
        raw(with_(LLAMA, vocab_size=float("inf"))),
        ("vocab_size=inf", *FINITE),
        rest=raw({"model": with_(LLAMA, vocab_size=float("inf"))}),
    ),
    _cfg(
        "config_1e400",
        raw(LLAMA)[:-1] + ', "rope_theta": 1e400}',
        ("rope_theta=inf", *FINITE),
        rest='{"model": ' + raw(LLAMA)[:-1] + ', "rope_theta": 1e400}}',
    ),
    _cfg("config_2000_keys", with_(LLAMA, **{f"k{i}": i for i in range(2000)}), ("too many keys",)),
    _cfg(
        "config_not_object",
        "[1, 2]",
        ("must hold a JSON object",),
        rest={"model": [1, 2]},
        rest_needles=(),
        why="REST: the body schema refuses a list (pydantic message)",
    ),
    _cfg(
        "config_not_json",
        '{"model_type": "llama",',
        ("is not valid JSON", "line 1"),
        rest='{"model": {"model_type": "llama",}',
        rest_needles=(),
        why="REST: malformed JSON is the service's parser (400/422)",
    ),
    _cfg(
        "config_big_file",
        raw(with_(LLAMA, pad="x" * (1 << 20))),
        ("max_config_bytes",),
        rest=None,
        why="REST: bodies are capped by max_body_bytes (413) before the core",
    ),
    _cfg("config_unknown_type", with_(LLAMA, model_type="gpt9"), ("unknown model_type 'gpt9'",)),
    _cfg("config_no_model_type", {"hidden_size": 8}, ("lacks 'model_type'",)),
    _cfg(
        "config_missing_key",
        {k: v for k, v in LLAMA.items() if k != "vocab_size"},
        ("lacks 'vocab_size'",),
    ),
    _cfg("config_heads_divide", with_(LLAMA, num_attention_heads=3), ("does not divide",)),
    _cfg(
        "config_mamba2_heads_width",  # Mamba2Config.validate_architecture: 512 != 4 * 64
        {
            "model_type": "mamba2",
            "hidden_size": 256,
            "num_hidden_layers": 2,
            "vocab_size": 8000,
            "num_heads": 4,
            "head_dim": 64,
        },
        ("hidden_size * expand must equal num_heads * head_dim",),
    ),
    _cfg(
        "config_negative_layers",
        with_(LLAMA, num_hidden_layers=-1),
        ("'num_hidden_layers' is -1", "positive integer"),
    ),
    _cfg(
        "config_string_layers",
        with_(LLAMA, num_hidden_layers="12"),
        ("'num_hidden_layers' is '12'", "positive integer"),
    ),
    _cfg(
        "config_bool_layers",
        with_(LLAMA, num_hidden_layers=True),
        ("'num_hidden_layers' is True", "positive integer"),
    ),
    # ---- model names and paths
    _req(
        "name_300_chars",
        ("a" * 300,),
        {"model": "a" * 300},
        ("unknown model 'aaaa", "(300 characters)"),
    ),
    _req(
        "name_5000_chars", ("b" * 5000,), {"model": "b" * 5000}, ("model is 5000 characters long",)
    ),
    # ---- vision-language options (issue 9 item 5)
    _req(
        "images_on_text_model",
        ("gpt2", "--images", "2"),
        {"model": "gpt2", "images": 2},
        ("--images applies to vision-language models", "gpt2 is a text model (gpt2)"),
    ),
    _req(
        "freeze_vision_on_text_model",
        ("gpt2", "--freeze-vision"),
        {"model": "gpt2", "freeze_vision": True},
        ("--freeze-vision applies to vision-language models",),
    ),
    _req(
        "image_size_not_hxw",
        ("qwen2.5-vl-7b", "--images", "1", "--image-size", "448by448"),
        {"model": "qwen2.5-vl-7b", "images": 1, "image_size": "448by448"},
        ("image size '448by448' is not HEIGHTxWIDTH in pixels",),
    ),
    _req(
        "image_size_zero",
        ("qwen2.5-vl-7b", "--images", "1", "--image-size", "0x448"),
        {"model": "qwen2.5-vl-7b", "images": 1, "image_size": "0x448"},
        ("image size '0x448' is not HEIGHTxWIDTH", "each side 1 to 32768"),
    ),
    _req(
        "image_aspect_ratio",
        ("qwen2.5-vl-7b", "--images", "1", "--image-size", "10x4000"),
        {"model": "qwen2.5-vl-7b", "images": 1, "image_size": "10x4000"},
        ("aspect ratio 400.0", "at most 200"),
    ),
    _req(
        "images_negative",
        ("qwen2.5-vl-7b", "--images", "-1"),
        {"model": "qwen2.5-vl-7b", "images": -1},
        ("images", "greater than or equal to 0"),
    ),
    _req(
        "images_with_litgpt",
        ("qwen2.5-vl-7b", "--images", "1", "--framework", "litgpt"),
        {"model": "qwen2.5-vl-7b", "images": 1, "framework": "litgpt"},
        ("--images with --framework litgpt is not modelled",),
    ),
    _req(
        "images_with_inference",
        ("qwen2.5-vl-7b", "--images", "1", "--task", "infer"),
        {"model": "qwen2.5-vl-7b", "images": 1, "task": "infer"},
        ("--images with --task infer", "is not modelled"),
    ),
    _req("name_empty", ("",), {"model": ""}, ("model is empty",)),
    _req("name_blank", ("   ",), {"model": "   "}, ("model is empty",)),
    _req("name_unicode", ("ллама-7b",), {"model": "ллама-7b"}, ("unknown model 'ллама-7b'",)),
    _req("name_nul_byte", ("gp\x00t2",), {"model": "gp\x00t2"}, ("unknown model",)),
    _req(
        "name_typo",
        ("gpt2-medum",),
        {"model": "gpt2-medum"},
        ("unknown model 'gpt2-medum'", "Did you mean 'gpt2-medium'"),
    ),
    _req(
        "missing_dir_config",
        ("./no-such-dir/config.json",),
        {"model": "./no-such-dir/config.json"},
        ("no such file", "./no-such-dir/config.json"),
        rest_needles=("unknown model",),
        why="REST never opens paths: not a catalog name",
    ),
    _req(
        "missing_abs_json",
        ("{tmp}/absent/config.json",),
        {"model": "{tmp}/absent/config.json"},
        ("no such file",),
        rest=None,
        why="REST never opens paths",
    ),
    # ---- DeepSpeed configs: non-finite, deep, malformed, contradicting flags
    _ds(
        "ds_infinity",
        '{"zero_optimization": {"stage": 2, "reduce_bucket_size": Infinity}}',
        ("reduce_bucket_size=inf", *FINITE),
        rest='{"model": "gpt2", "deepspeed": {"zero_optimization": {"stage": 2, '
        '"reduce_bucket_size": Infinity}}}',
    ),
    _ds(
        "ds_minus_infinity",
        '{"zero_optimization": {"stage": 3, "stage3_max_live_parameters": -Infinity}}',
        ("stage3_max_live_parameters=-inf", *FINITE),
        rest='{"model": "gpt2", "deepspeed": {"zero_optimization": {"stage": 3, '
        '"stage3_max_live_parameters": -Infinity}}}',
    ),
    _ds(
        "ds_nan",
        '{"zero_optimization": {"stage": 2, "allgather_bucket_size": NaN}}',
        ("allgather_bucket_size=nan", *FINITE),
        rest='{"model": "gpt2", "deepspeed": {"zero_optimization": {"stage": 2, '
        '"allgather_bucket_size": NaN}}}',
    ),
    _ds(
        "ds_inf_string",
        {"zero_optimization": {"stage": 2, "reduce_bucket_size": "inf"}},
        ("reduce_bucket_size must be a whole number", "'inf'"),
    ),
    _ds(
        "ds_1e400",
        '{"zero_optimization": {"stage": 2, "reduce_bucket_size": 1e400}}',
        ("reduce_bucket_size=inf", *FINITE),
        rest='{"model": "gpt2", "deepspeed": {"zero_optimization": {"stage": 2, '
        '"reduce_bucket_size": 1e400}}}',
    ),
    _ds(
        "ds_1e400_string",
        {"zero_optimization": {"stage": 3, "stage3_prefetch_bucket_size": "1e400"}},
        ("stage3_prefetch_bucket_size must be a whole number", "'1e400'"),
    ),
    _ds(
        "ds_2e60",
        {"zero_optimization": {"stage": 2, "reduce_bucket_size": 2**60}},
        ("reduce_bucket_size=", "is above the limit of 9007199254740992"),
    ),
    _ds(
        "ds_fraction",
        {"zero_optimization": {"stage": 2, "reduce_bucket_size": 1.5}},
        ("reduce_bucket_size must be a whole number", "1.5"),
    ),
    _ds(
        "ds_deep_100k",
        deep_json(100_000),
        DEPTH,
        py={"model": "gpt2", "deepspeed": nested(NEST_REST)},
        rest={"model": "gpt2", "deepspeed": nested(NEST_REST)},
        why="Python and REST send 40 levels (the file has 100k)",
    ),
    _ds(
        "ds_5000_digits",
        '{"zero_optimization": {"stage": 2, "reduce_bucket_size": ' + "7" * 5000 + "}}",
        ("reduce_bucket_size is a 5000-digit integer",),
        py={
            "model": "gpt2",
            "deepspeed": {"zero_optimization": {"reduce_bucket_size": 7 * 10**4999}},
        },
        rest=None,
        why="REST bodies cannot carry a 5000-digit integer (parser limit)",
    ),
    _ds(
        "ds_stage_2_7",
        {"zero_optimization": {"stage": 2.7}},
        ("stage 2.7 is not supported", "accepted: 0, 1, 2, 3"),
    ),
    _ds("ds_stage_4", {"zero_optimization": {"stage": 4}}, ("stage 4 is not supported",)),
    _ds("ds_stage_true", {"zero_optimization": {"stage": True}}, ("stage True is not supported",)),
    _ds(
        "ds_stage_word", {"zero_optimization": {"stage": "two"}}, ("stage 'two' is not supported",)
    ),
    _ds(
        "ds_offload_gpu",
        {"zero_optimization": {"stage": 3, "offload_param": {"device": "gpu"}}},
        ("offload_param.device 'gpu' is not supported", "none, cpu, nvme"),
    ),
    _ds(
        "ds_enabled_yes",
        {"fp16": {"enabled": "yes"}},
        ('fp16.enabled must be true, false or "auto"',),
    ),
    _ds(
        "ds_stage2_vs_zero3_offload",
        DS2,
        (
            "--zero 3 contradicts zero_optimization.stage=2",
            "--offload-param cpu contradicts zero_optimization.offload_param.device=none",
        ),
        "--zero",
        "3",
        "--offload-param",
        "cpu",
        request={"zero": 3, "offload_param": "cpu"},
    ),
    _ds(
        "ds_stage2_vs_zero0",
        DS2,
        ("--zero 0 contradicts zero_optimization.stage=2",),
        "--zero",
        "0",
        request={"zero": 0},
    ),
    _ds(
        "ds_fp16_off_vs_flag",
        {**DS2, "fp16": {"enabled": False}},
        ("--mixed-precision fp16 contradicts fp16.enabled=false",),
        "--mixed-precision",
        "fp16",
        request={"mixed_precision": "fp16"},
    ),
    _ds(
        "ds_bf16_on_vs_fp16_flag",
        {**DS2, "bf16": {"enabled": True}},
        ("--mixed-precision fp16 contradicts bf16.enabled=true",),
        "--mixed-precision",
        "fp16",
        request={"mixed_precision": "fp16"},
    ),
    _ds(
        "ds_offload_cpu_vs_none",
        {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}},
        ("--offload-optimizer none contradicts zero_optimization.offload_optimizer.device=cpu",),
        "--offload-optimizer",
        "none",
        request={"offload_optimizer": "none"},
    ),
    _ds(
        "ds_micro_batch_mismatch",
        {"train_micro_batch_size_per_gpu": 8},
        ("train_micro_batch_size_per_gpu=8 disagrees with --batch-size=1",),
    ),
    _ds(
        "ds_not_object",
        "[1]",
        ("must hold a JSON object",),
        py={"model": "gpt2", "deepspeed": [1]},
        rest={"model": "gpt2", "deepspeed": [1]},
        rest_needles=(),
        py_needles=("valid dictionary",),
        why="Python/REST: the request schema refuses a list (pydantic message)",
    ),
    _ds(
        "ds_not_json",
        '{"zero_optimization": {"stage": 3,}}',
        ("is not valid JSON",),
        py=None,
        rest=None,
        why="only files can hold malformed JSON",
    ),
    Case(
        id="ds_missing_file",
        needles=("--deepspeed: no such file",),
        argv=("gpt2", "--deepspeed", "{tmp}/absent.json"),
        why="only the CLI reads files",
    ),
    # ---- accelerate configs (Python/REST field; the CLI has no flag for it yet)
    _req(
        "accelerate_nan",
        None,
        {"model": "gpt2", "accelerate_config": {"num_processes": float("nan")}},
        ("accelerate_config.num_processes=nan", *FINITE),
        rest=raw({"model": "gpt2", "accelerate_config": {"num_processes": float("nan")}}),
        why="no --accelerate-config option yet",
    ),
    _req(
        "accelerate_deep",
        None,
        {"model": "gpt2", "accelerate_config": nested(NEST_REST)},
        DEPTH,
        why="no --accelerate-config option yet",
    ),
    # ---- request numbers: zero, negative, huge, non-finite, wrong types
    _req(
        "batch_zero", ("gpt2", "-b", "0"), {"model": "gpt2", "batch_size": 0}, ("greater than 0",)
    ),
    _req(
        "batch_negative",
        ("gpt2", "-b", "-5"),
        {"model": "gpt2", "batch_size": -5},
        ("greater than 0",),
    ),
    _req(
        "batch_huge",
        ("gpt2", "-b", "1000000"),
        {"model": "gpt2", "batch_size": 10**6},
        ("less than or equal to 65536",),
    ),
    _req(
        "batch_bool",
        ("gpt2", "-b", "true"),
        {"model": "gpt2", "batch_size": True},
        ("valid integer",),
        cli_needles=("invalid int value: 'true'",),
    ),
    _req(
        "batch_string",
        None,
        {"model": "gpt2", "batch_size": "8"},
        ("valid integer",),
        why="the CLI's options are text; argparse parses them",
    ),
    _req(
        "batch_float",
        ("gpt2", "-b", "8.0"),
        {"model": "gpt2", "batch_size": 8.0},
        ("valid integer",),
        cli_needles=("invalid int value: '8.0'",),
    ),
    _req(
        "batch_5000_digits",
        ("gpt2", "-b", "9" * 5000),
        None,
        ("invalid int value",),
        why="Python/REST: an int field bound (le) answers 'less than or equal'",
    ),
    _req("seq_zero", ("gpt2", "-s", "0"), {"model": "gpt2", "seq_len": 0}, ("greater than 0",)),
    _req(
        "seq_huge",
        ("gpt2", "-s", str(1 << 30)),
        {"model": "gpt2", "seq_len": 1 << 30},
        ("less than or equal to 4194304",),
    ),
    _req(
        "seq_over_learned_positions",
        ("gpt2", "-s", "2048"),
        {"model": "gpt2", "seq_len": 2048},
        ("exceeds gpt2's learned position table",),
    ),
    _req(
        "target_len_on_a_decoder",
        ("gpt2", "--target-len", "64"),
        {"model": "gpt2", "target_len": 64},
        ("--target-len applies to encoder-decoder models only",),
    ),
    _req(
        "target_len_zero",
        ("t5-small", "--target-len", "0"),
        {"model": "t5-small", "target_len": 0},
        ("greater than 0",),
    ),
    _req(
        "grad_accum_zero",
        ("gpt2", "--grad-accum", "0"),
        {"model": "gpt2", "grad_accum": 0},
        ("greater than 0",),
    ),
    _req("gpus_zero", ("gpt2", "--gpus", "0"), {"model": "gpt2", "gpus": 0}, ("greater than 0",)),
    _req(
        "gpus_huge",
        ("gpt2", "--gpus", str(10**9)),
        {"model": "gpt2", "gpus": 10**9},
        ("less than or equal to 65536",),
    ),
    _req(
        "nodes_negative",
        ("gpt2", "--nodes", "-1"),
        {"model": "gpt2", "nodes": -1},
        ("greater than 0",),
    ),
    _req(
        "tokens_zero",
        ("gpt2", "--tokens", "0"),
        {"model": "gpt2", "tokens": 0},
        ("greater than 0",),
    ),
    _req(
        "tokens_huge",
        ("gpt2", "--tokens", str(10**20)),
        {"model": "gpt2", "tokens": 10**20},
        ("less than or equal to 1000000000000000",),
    ),
    _req(
        "epochs_zero",
        ("gpt2", "--epochs", "0"),
        {"model": "gpt2", "epochs": 0},
        ("greater than 0",),
    ),
    _req(
        "epochs_nan",
        ("gpt2", "--epochs", "nan"),
        {"model": "gpt2", "epochs": float("nan")},
        ("finite number",),
        rest=raw({"model": "gpt2", "epochs": float("nan")}),
    ),
    _req(
        "epochs_inf",
        ("gpt2", "--epochs", "inf"),
        {"model": "gpt2", "epochs": float("inf")},
        ("finite number",),
        rest=raw({"model": "gpt2", "epochs": float("inf")}),
    ),
    _req(
        "epochs_bool",
        None,
        {"model": "gpt2", "epochs": True},
        ("valid number",),
        why="the CLI's --epochs is text",
    ),
    _req(
        "mfu_5e-324",
        ("gpt2", "--gpu", "a10g", "--tokens", "1000000", "--mfu", "5e-324", "--json"),
        {"model": "gpt2", "gpu": "a10g", "tokens": 10**6, "mfu": 5e-324},
        ("below the floor of 0.001",),
    ),
    _req(
        "mfu_1e-300",
        ("gpt2", "--gpu", "a10g", "--tokens", "1000000", "--mfu", "1e-300"),
        {"model": "gpt2", "gpu": "a10g", "tokens": 10**6, "mfu": 1e-300},
        ("below the floor of 0.001",),
    ),
    _req("mfu_zero", ("gpt2", "--mfu", "0"), {"model": "gpt2", "mfu": 0.0}, ("greater than 0",)),
    _req(
        "mfu_over_one",
        ("gpt2", "--mfu", "1.5"),
        {"model": "gpt2", "mfu": 1.5},
        ("less than or equal to 1",),
    ),
    _req(
        "mfu_nan",
        ("gpt2", "--mfu", "nan"),
        {"model": "gpt2", "mfu": float("nan")},
        ("finite number",),
        rest=raw({"model": "gpt2", "mfu": float("nan")}),
    ),
    _req(
        "price_negative",
        ("gpt2", "--price-per-gpu-hour", "-1"),
        {"model": "gpt2", "price_per_gpu_hour": -1.0},
        ("greater than or equal to 0",),
    ),
    _req(
        "price_inf",
        ("gpt2", "--price-per-gpu-hour", "inf"),
        {"model": "gpt2", "price_per_gpu_hour": float("inf")},
        ("finite number",),
        rest=raw({"model": "gpt2", "price_per_gpu_hour": float("inf")}),
    ),
    _req(
        "ia3_string",
        None,
        {"model": "gpt2", "ia3": "yes"},
        ("valid boolean",),
        why="the CLI's --ia3 is a switch",
    ),
    _req(
        "grad_ckpt_int",
        None,
        {"model": "gpt2", "grad_ckpt": 1},
        ("valid boolean",),
        why="the CLI's --grad-ckpt is a switch",
    ),
    # ---- choices: wrong values, empty, unicode
    _req(
        "dtype_fp8",
        ("gpt2", "--dtype", "fp8"),
        {"model": "gpt2", "dtype": "fp8"},
        ("value 'fp8'. Did you mean 'fp32'? Accepted: bf16, fp16, fp32",),
    ),
    _req(
        "mixed_precision_fp8",
        ("gpt2", "--mixed-precision", "fp8"),
        {"model": "gpt2", "mixed_precision": "fp8"},
        ("value 'fp8'", "Accepted: bf16, fp16, no"),
    ),
    _req(
        "attn_flash",
        ("gpt2", "--attn", "flash"),
        {"model": "gpt2", "attn": "flash"},
        ("value 'flash'. Did you mean 'flash_attention_2'?",),
    ),
    _req(
        "quant_int4",
        ("gpt2", "--lora", "--quant", "int4"),
        {"model": "gpt2", "lora": {}, "quant": "int4"},
        ("value 'int4'", "Accepted: fp4, int8, nf4"),
    ),
    _req(
        "offload_gpu",
        ("gpt2", "--zero", "3", "--offload-param", "gpu"),
        {"model": "gpt2", "zero": 3, "offload_param": "gpu"},
        ("value 'gpu'", "Accepted: cpu, none, nvme"),
    ),
    _req(
        "zero_4",
        ("gpt2", "--zero", "4"),
        {"model": "gpt2", "zero": 4},
        ("'4'. Accepted: 0, 1, 2, 3",),
    ),
    _req(
        "zero_bool",
        None,
        {"model": "gpt2", "zero": True},
        ("zero must be an integer",),
        rest_needles=("zero", "valid integer"),
        why="the CLI's --zero is text; REST's strict JSON check answers first",
    ),
    _req(
        "optim_typo",
        ("gpt2", "--optim", "adamw_9bit"),
        {"model": "gpt2", "optim": "adamw_9bit"},
        ("unknown optimizer 'adamw_9bit'", "Did you mean 'adamw_8bit'"),
    ),
    _req(
        "optim_empty", ("gpt2", "--optim", ""), {"model": "gpt2", "optim": ""}, ("optim is empty",)
    ),
    _req("gpu_empty", ("gpt2", "--gpu", ""), {"model": "gpt2", "gpu": ""}, ("gpu is empty",)),
    _req(
        "gpu_typo",
        ("gpt2", "--gpu", "rtx-4009"),
        {"model": "gpt2", "gpu": "rtx-4009"},
        ("unknown GPU 'rtx-4009'", "Did you mean 'rtx-4090'"),
    ),
    _req(
        "gpu_unicode",
        ("gpt2", "--gpu", "Ä100"),
        {"model": "gpt2", "gpu": "Ä100"},
        ("unknown GPU 'Ä100'",),
    ),
    # ---- PEFT
    _req(
        "lora_unknown_target",
        ("gpt2", "--lora", "targets=c_attn+zz_proj"),
        {"model": "gpt2", "lora": {"targets": "c_attn+zz_proj"}},
        (
            "LoRA target 'zz_proj' names no linear or embedding module of gpt2",
            "accepted: c_attn, c_fc, c_proj, lm_head, wpe, wte or all-linear",
        ),
    ),
    _req(
        "lora_llama_unknown_target",
        ("tinyllama-1.1b", "--lora", "targets=q_proj+zz_proj"),
        {"model": "tinyllama-1.1b", "lora": {"targets": ["q_proj", "zz_proj"]}},
        ("LoRA target 'zz_proj' names no linear or embedding module of llama", "q_proj"),
    ),
    _req(
        "lora_duplicate_key",
        ("gpt2", "--lora", "r=8,r=16"),
        None,
        ("--lora: key 'r' given twice",),
        why="a dict cannot hold a key twice",
    ),
    _req(
        "lora_r_zero",
        ("gpt2", "--lora", "r=0"),
        {"model": "gpt2", "lora": {"r": 0}},
        ("greater than 0",),
    ),
    _req(
        "lora_r_word",
        ("gpt2", "--lora", "r=abc"),
        {"model": "gpt2", "lora": {"r": "abc"}},
        ("valid integer",),
        cli_needles=("--lora r: 'abc' is not an integer",),
    ),
    _req(
        "lora_dropout_one",
        ("gpt2", "--lora", "dropout=1.5"),
        {"model": "gpt2", "lora": {"dropout": 1.5}},
        ("less than 1",),
    ),
    _req(
        "lora_alpha_nan",
        ("gpt2", "--lora", "alpha=nan"),
        {"model": "gpt2", "lora": {"alpha": float("nan")}},
        ("finite number",),
        rest=raw({"model": "gpt2", "lora": {"alpha": float("nan")}}),
    ),
    _req(
        "lora_unknown_key",
        ("gpt2", "--lora", "rank=4"),
        {"model": "gpt2", "lora": {"rank": 4}},
        ("rank",),
        cli_needles=("unknown --lora key 'rank'",),
    ),
    _req(
        "adapter_dim_zero",
        ("gpt2", "--adapter", "dim=0"),
        {"model": "gpt2", "adapter": {"dim": 0}},
        ("greater than 0",),
    ),
    _req(
        "prefix_tokens_huge",
        ("gpt2", "--prefix", "tokens=1000000"),
        {"model": "gpt2", "prefix": {"tokens": 10**6}},
        ("less than or equal to 65536",),
    ),
    _req(
        "two_peft_methods",
        ("gpt2", "--lora", "--ia3"),
        {"model": "gpt2", "lora": {}, "ia3": True},
        ("choose one PEFT method",),
    ),
    _req(
        "qlora_int8",
        ("gpt2", "--qlora", "r=8", "--quant", "int8"),
        {"model": "gpt2", "qlora": {"r": 8}, "quant": "int8"},
        ("cannot be combined with --quant int8",),
    ),
    _req(
        "quant_without_peft",
        ("gpt2", "--quant", "nf4"),
        {"model": "gpt2", "quant": "nf4"},
        ("add a PEFT method",),
    ),
    _req(
        "offload_param_zero2",
        ("gpt2", "--zero", "2", "--offload-param", "cpu"),
        {"model": "gpt2", "zero": 2, "offload_param": "cpu"},
        ("needs --zero 3",),
    ),
    _req(
        "offload_optimizer_no_zero",
        ("gpt2", "--offload-optimizer", "cpu"),
        {"model": "gpt2", "offload_optimizer": "cpu"},
        ("needs --zero 1, 2 or 3",),
    ),
    # ---- --max-batch and --global-batch
    _req(
        "global_batch_negative",
        ("gpt2", "--gpu", "a10g", "--max-batch", "--global-batch", "-5"),
        {"model": "gpt2", "gpu": "a10g"},
        ("--global-batch must be a positive integer, got -5",),
        fit=True,
        global_batch=-5,
        rest=None,
        why="REST's /v1/fit has no global batch",
    ),
    _req(
        "global_batch_zero",
        ("gpt2", "--gpu", "a10g", "--max-batch", "--global-batch", "0"),
        {"model": "gpt2", "gpu": "a10g"},
        ("--global-batch must be a positive integer, got 0",),
        fit=True,
        global_batch=0,
        rest=None,
        why="REST's /v1/fit has no global batch",
    ),
    _req(
        "max_batch_without_gpu",
        ("gpt2", "--max-batch"),
        {"model": "gpt2"},
        ("--max-batch needs --gpu",),
        fit=True,
        rest_needles=("needs 'gpu'",),
        why="REST names the body field",
    ),
    _req(
        "max_batch_empty_gpu",
        ("gpt2", "--gpu", "", "--max-batch"),
        {"model": "gpt2", "gpu": ""},
        ("gpu is empty",),
        fit=True,
    ),
    # ---- CLI-only: argv shapes
    _req(
        "option_twice",
        ("gpt2", "-b", "4", "--batch-size", "8"),
        None,
        ("-b/--batch-size given twice",),
        why="a request cannot hold a field twice",
    ),
    _req(
        "unknown_option",
        ("gpt2", "--bogus"),
        None,
        ("unrecognized arguments: --bogus",),
        why="an unknown field is the schema's extra='forbid'",
    ),
    _req(
        "unknown_field",
        None,
        {"model": "gpt2", "batch-size": 2},
        ("xtra inputs are not permitted",),
        why="the CLI's equivalent is unknown_option",
    ),
    _req(
        "global_batch_without_max_batch",
        ("gpt2", "--global-batch", "64"),
        None,
        ("--global-batch only applies with --max-batch",),
        why="a CLI switch",
    ),
    _req("no_model", (), {"batch_size": 2}, ("Field required",), cli_needles=("MODEL",)),
    # ---- preference and RL trainers (issue 11): names, and options a trainer does not read
    _req(
        "trainer_unknown",
        ("gpt2", "--trainer", "dpp"),
        {"model": "gpt2", "trainer": "dpp"},
        ("trainer value 'dpp'", "dpo"),
    ),
    _req(
        "trainer_option_not_used",
        ("gpt2", "--trainer", "reward", "--beta", "0.1"),
        {"model": "gpt2", "trainer": "reward", "beta": 0.1},
        ("--beta: not used by --trainer reward",),
    ),
    _req(
        "precompute_without_reference_trainer",
        ("gpt2", "--trainer", "orpo", "--precompute-ref-log-probs"),
        {"model": "gpt2", "trainer": "orpo", "precompute_ref_log_probs": True},
        ("--precompute-ref-log-probs: not used by --trainer orpo", "dpo, kto"),
    ),
    _req(
        "padded_batch_with_grpo",
        ("gpt2", "--trainer", "grpo", "--no-padded-batch"),
        {"model": "gpt2", "trainer": "grpo", "padded_batch": False},
        ("--padded-batch: not used by --trainer grpo", "dpo, kto"),
    ),
    _req(
        "padded_batch_not_a_bool",
        ("gpt2", "--trainer", "dpo", "--padded-batch=no"),
        {"model": "gpt2", "trainer": "dpo", "padded_batch": "no"},
        ("padded_batch",),
        cli_needles=("--padded-batch",),
    ),
    _req(
        "trainer_option_with_sft",
        ("gpt2", "--ref-model", "copy"),
        {"model": "gpt2", "ref_model": "copy"},
        ("--ref-model: not used by --trainer sft",),
    ),
    _req(
        "ref_model_unknown",
        ("gpt2", "--trainer", "dpo", "--ref-model", "cpy"),
        {"model": "gpt2", "trainer": "dpo", "ref_model": "cpy"},
        ("ref_model value 'cpy'", "copy"),
        cli_needles=("--ref-model value 'cpy'", "copy"),
    ),
    _req(
        "ref_copy_and_precompute",
        ("gpt2", "--trainer", "dpo", "--ref-model", "copy", "--precompute-ref-log-probs"),
        {"model": "gpt2", "trainer": "dpo", "ref_model": "copy", "precompute_ref_log_probs": True},
        ("--ref-model copy and --precompute-ref-log-probs",),
    ),
    _req(
        "trainer_with_inference",
        ("gpt2", "--trainer", "dpo", "--task", "infer"),
        {"model": "gpt2", "trainer": "dpo", "task": "inference"},
        ("--trainer dpo is a training step",),
    ),
    _req(
        "trainer_with_pipeline",
        ("gpt2", "--trainer", "dpo", "--gpus", "2", "--pp", "2"),
        {"model": "gpt2", "trainer": "dpo", "gpus": 2, "pp": 2},
        ("--pp 2 with --trainer dpo",),
    ),
    # framework profiles and memory features (issue 10): refused where the framework's source
    # has no such feature, with the frameworks that do have it
    _req(
        "framework_unknown",
        ("gpt2", "--framework", "litgtp"),
        {"model": "gpt2", "framework": "litgtp"},
        ("unknown", "framework value 'litgtp'", "Did you mean 'litgpt'?"),
    ),
    _req(
        "loss_unknown",
        ("gpt2", "--loss", "chunk"),
        {"model": "gpt2", "loss": "chunk"},
        ("loss value 'chunk'", "Did you mean 'chunked'?"),
    ),
    _req(
        "optimizer_in_backward_outside_torchtune",
        ("gpt2", "--optimizer-in-backward"),
        {"model": "gpt2", "optimizer_in_backward": True},
        ("--optimizer-in-backward is not a hf feature", "supported by: torchtune"),
    ),
    _req(
        "liger_with_litgpt",
        ("gpt2", "--framework", "litgpt", "--liger"),
        {"model": "gpt2", "framework": "litgpt", "liger": True},
        ("--liger is not a litgpt feature", "supported by: hf"),
    ),
    _req(
        "fused_loss_with_litgpt",
        ("gpt2", "--framework", "litgpt", "--loss", "fused_linear"),
        {"model": "gpt2", "framework": "litgpt", "loss": "fused_linear"},
        (
            "--loss fused_linear is not run by litgpt",
            "accepted with --framework litgpt: full, chunked",
        ),
    ),
    _req(
        "loss_chunks_with_full_loss",
        ("gpt2", "--loss-chunks", "4"),
        {"model": "gpt2", "loss_chunks": 4},
        ("--loss-chunks 4 needs a chunked or fused loss",),
    ),
    _req(
        "checkpoint_offload_without_ckpt",
        ("gpt2", "--framework", "unsloth", "--checkpoint-offload"),
        {"model": "gpt2", "framework": "unsloth", "checkpoint_offload": True},
        ("--checkpoint-offload", "needs --grad-ckpt"),
    ),
    _req(
        "feature_with_inference",
        ("gpt2", "--task", "infer", "--packing"),
        {"model": "gpt2", "task": "inference", "packing": True},
        ("--packing: training feature(s), not accepted with --task infer",),
    ),
]


# ---- trainer configs (issue 10: vramcalc --config FILE, the request's ``config`` field)
def _trainer(case_id: str, text: str, needles: tuple[str, ...], model: str | None = None) -> Case:
    """A trainer-config case: the CLI reads the file; Python and REST get its text."""
    head: tuple[str, ...] = (model,) if model else ()
    extra: dict[str, Any] = {"model": model} if model else {}
    return Case(
        id=case_id,
        needles=needles,
        argv=(*head, "--config", "{tmp}/" + case_id + ".yaml"),
        request={**extra, "config": text},
        rest={**extra, "config": text},
        files={case_id + ".yaml": text},
    )


CASES += [
    _trainer(
        "config_axolotl_qlora_without_4bit",
        "base_model: meta-llama/Llama-3.2-1B\nadapter: qlora\nload_in_4bit: false\n",
        ("adapter qlora needs load_in_4bit",),
    ),
    _trainer(
        "config_torchtune_offload_without_ckpt",
        "model:\n  _component_: torchtune.models.llama3_2.llama3_2_1b\n"
        "enable_activation_checkpointing: false\nenable_activation_offloading: true\n",
        ("enable_activation_offloading true needs enable_activation_checkpointing",),
    ),
    _trainer(
        "config_torchtune_inbwd_with_accum",
        "model:\n  _component_: torchtune.models.llama3_2.llama3_2_1b\n"
        "optimizer_in_bwd: true\ngradient_accumulation_steps: 8\n",
        ("optimizer_in_bwd true with gradient_accumulation_steps 8",),
    ),
    _trainer(
        "config_llamafactory_bf16_and_fp16",
        "model_name_or_path: Qwen/Qwen2.5-0.5B\nstage: sft\nfinetuning_type: full\n"
        "bf16: true\nfp16: true\n",
        ("bf16 and fp16 are both true",),
    ),
    _trainer(
        "config_litgpt_global_below_micro",
        "checkpoint_dir: checkpoints/meta-llama/Llama-3.2-1B\nprecision: bf16-true\n"
        "train:\n  global_batch_size: 2\n  micro_batch_size: 4\n",
        ("train.global_batch_size 2 is smaller than train.micro_batch_size 4",),
    ),
    _trainer(
        "config_unknown_format",
        "foo: 1\nbar: 2\n",
        ("cannot tell which trainer this file is for",),
        model="gpt2",
    ),
    _trainer(
        "config_torchtune_unknown_builder",
        "model:\n  _component_: torchtune.models.llama3_2.llama3_2_2b\n",
        ("model._component_ 'torchtune.models.llama3_2.llama3_2_2b' has no catalog model",),
    ),
    # ---- RL trainers (issue 11): TRL 1.16's own refusals (grpo_config.py __post_init__)
    _req(
        "grpo_batch_not_multiple_of_generations",
        ("gpt2", "--trainer", "grpo", "-b", "3", "--num-generations", "4"),
        {"model": "gpt2", "trainer": "grpo", "batch_size": 3, "num_generations": 4},
        ("generation batch 3", "divisible by --num-generations 4", "a multiple of 4"),
    ),
    _req(
        "grpo_one_generation",
        ("gpt2", "--trainer", "grpo", "--num-generations", "1"),
        {"model": "gpt2", "trainer": "grpo", "num_generations": 1},
        ("greater than or equal to 2",),
    ),
    _req(
        "grpo_seq_len",
        ("gpt2", "--trainer", "grpo", "-s", "256"),
        {"model": "gpt2", "trainer": "grpo", "seq_len": 256},
        ("--max-prompt-length + --max-completion-length",),
    ),
    _req(
        "vllm_utilization_without_vllm",
        ("gpt2", "--trainer", "grpo", "--vllm-gpu-memory-utilization", "0.5"),
        {"model": "gpt2", "trainer": "grpo", "vllm_gpu_memory_utilization": 0.5},
        ("--vllm-gpu-memory-utilization needs --vllm colocate",),
    ),
    _req(
        "vllm_unknown_mode",
        ("gpt2", "--trainer", "grpo", "--vllm", "colocated"),
        {"model": "gpt2", "trainer": "grpo", "vllm": "colocated"},
        ("colocate",),
    ),
    _req(
        "vllm_colocate_without_gpu",
        ("gpt2", "--trainer", "grpo", "--vllm", "colocate"),
        {"model": "gpt2", "trainer": "grpo", "vllm": "colocate"},
        ("--vllm colocate", "add --gpu"),
    ),
    _req(
        "num_generations_with_dpo",
        ("gpt2", "--trainer", "dpo", "--num-generations", "4"),
        {"model": "gpt2", "trainer": "dpo", "num_generations": 4},
        ("not used by --trainer dpo", "grpo"),
    ),
]
