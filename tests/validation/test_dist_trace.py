"""The distributed tracer: committed grid measurements, hand-computed shard sizes, live
reproduction of grid entries, and the self-check against a real 2-process gloo run.

The hand computations below follow FSDP2's sharding rule (torch ``_fsdp_param.py``: every
parameter is split on dim 0 into ``world`` chunks, the last padded, each rank storing
``ceil(dim0 / world)`` rows in its own tensor) and the 512-byte block rounding of the CUDA
caching allocator; they are written from the configs, not read from the tracer.
"""

from __future__ import annotations

import itertools
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from validation import dist_grid
from validation.dist_trace import is_distributed, layout_limitations
from validation.records import Measurement, Scenario
from vramcalc.specs import EstimateRequest

COMMITTED = Path(__file__).resolve().parents[2] / "validation/measurements/trace-dist.jsonl"
BLOCK = 512


def _committed() -> dict[str, Measurement]:
    lines = COMMITTED.read_text("utf-8").splitlines()
    out = {}
    for line in lines:
        if line.strip():
            m = Measurement.model_validate_json(line)
            out[m.scenario.id] = m
    return out


def test_committed_file_parses_and_covers_the_grid() -> None:
    records = _committed()
    grid = {s.id: s for s in dist_grid.scenarios()}
    assert len(grid) >= 36
    for sid, scenario in grid.items():
        if sid in records:
            assert records[sid].scenario == scenario, f"{sid}: grid changed since the trace"
            assert records[sid].fingerprint.device == "fake-cuda (CPU trace)"
        else:
            assert layout_limitations(scenario.request) is not None, f"{sid}: no record"
    assert set(records) <= set(grid)
    assert len(records) >= 36


def test_committed_records_are_consistent() -> None:
    for sid, m in _committed().items():
        got = m.measured
        assert sum(got.by_category.values()) == got.allocated_bytes, sid
        assert max(got.per_phase_peak.values()) == got.allocated_bytes, sid
        assert got.allocated_bytes % BLOCK == 0
        assert set(got.by_category) >= {"params", "gathered", "reduce"}


def _blocks(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


def _llama_shapes(cfg: dict[str, Any]) -> list[tuple[int, ...]]:
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = h // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    layer = [(h, h), (kv, h), (kv, h), (h, h), (i, h), (i, h), (h, i), (h,), (h,)]
    return [(v, h)] + layer * cfg["num_hidden_layers"] + [(h,), (v, h)]


def _fsdp2_shard_bytes(shapes: list[tuple[int, ...]], world: int, itemsize: int) -> int:
    return sum(_blocks(math.ceil(s[0] / world) * math.prod(s[1:]) * itemsize) for s in shapes)


@pytest.mark.parametrize(
    ("sid", "world", "itemsize"),
    [
        ("llama-full-fsdp2-fs-w2-fp32-nockpt-b2s256", 2, 4),
        ("llama-full-fsdp2-fs-w4-fp32-nockpt-b2s256", 4, 4),
        ("llama-full-fsdp2-fs-w8-fp32-nockpt-b2s256", 8, 4),
        ("llama-full-fsdp2-fs-w4-bf16-nockpt-b2s256", 4, 2),
        ("mistral-full-fsdp2-fs-w4-fp32-nockpt-b2s256", 4, 4),
    ],
)
def test_fsdp2_rank0_holds_one_padded_shard_of_each_parameter(
    sid: str, world: int, itemsize: int
) -> None:
    m = _committed()[sid]
    cfg = dict(m.scenario.request.model)  # type: ignore[arg-type]
    shard = _fsdp2_shard_bytes(_llama_shapes(cfg), world, itemsize)
    cats = m.measured.by_category
    # + the rotary embedding's two unsharded fp32 buffers (inv_freq, original_inv_freq:
    # head_dim / 2 floats each, one 512-byte block each); FSDP shards parameters only
    assert cats["params"] == shard + 2 * BLOCK
    # AdamW: exp_avg and exp_avg_sq of every shard (foreach: step counters on the host)
    if m.measured.phase == "optimizer" or cats["optimizer"]:
        assert cats["optimizer"] == 2 * shard


def _quant_state_bytes(n: int) -> int:
    """bitsandbytes 0.50 ``quantize_4bit(compress_statistics=True)``: uint8 absmax per 64
    values, fp32 nested absmax per 256 of those, the nested 256-entry fp32 code (a copy per
    weight), the fp32 offset and the 16-entry nf4 code; none of it is a parameter."""
    absmax = math.ceil(n / 64)
    return (
        _blocks(absmax) + _blocks(math.ceil(absmax / 256) * 4) + _blocks(256 * 4)
        + _blocks(4) + _blocks(16 * 4)
    )  # fmt: skip


@pytest.mark.parametrize(
    ("sid", "world"),
    [
        ("llama-qlora-fsdp2-fs-w2-bf16-ckpt-b2s1024", 2),
        ("llama-qlora-fsdp2-fs-w8-bf16-nockpt-b1s2048", 8),
        ("mistral-qlora-fsdp2-fs-w8-bf16-ckpt-b2s1024", 8),
    ],
)
def test_fsdp2_qlora_rank0_shards_packed_weights_and_keeps_quant_state(
    sid: str, world: int
) -> None:
    # PEFT's FSDP+QLoRA recipe: nf4 weights packed 4 per bf16 element ((numel/4, 1) tensors
    # that FSDP2 shards on dim 0 like any parameter), the other parameters bf16, the LoRA
    # adapters (default q_proj/v_proj, r=8) fp32; QuantState tensors stay whole on each rank
    m = _committed()[sid]
    cfg = dict(m.scenario.request.model)  # type: ignore[arg-type]
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = h // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    r, n_layers = 8, cfg["num_hidden_layers"]
    quantized = [h * h, kv * h, kv * h, h * h, i * h, i * h, h * i]
    packed = [(n // 4, 1) for n in quantized]
    plain = _fsdp2_shard_bytes([(v, h), (h,), (v, h)], world, 2)
    plain += n_layers * _fsdp2_shard_bytes([(h,), (h,), *packed], world, 2)
    lora = [(r, h), (h, r), (r, h), (kv, r)]
    plain += n_layers * _fsdp2_shard_bytes(lora, world, 4)
    state = n_layers * sum(_quant_state_bytes(n) for n in quantized)
    assert m.measured.by_category["params"] == plain + state + 2 * BLOCK


def test_more_ranks_never_raise_rank0_state() -> None:
    recs = _committed()
    peaks = [
        recs[f"llama-full-fsdp2-fs-w{w}-fp32-nockpt-b2s256"].measured.by_category for w in (2, 4, 8)
    ]
    for a, b in itertools.pairwise(peaks):
        assert b["params"] < a["params"]


def _maybe_request(**fields: Any) -> EstimateRequest | None:
    """The request, or ``None`` where the request model itself refuses the combination."""
    from pydantic import ValidationError

    try:
        return EstimateRequest(**fields)
    except ValidationError:
        return None


def test_layout_detection_and_limits() -> None:
    base = {"model": dict(dist_grid.MOE_FAMILY)}
    assert not is_distributed(EstimateRequest(**base))
    assert is_distributed(EstimateRequest(**base, fsdp="full_shard", gpus=2))
    assert is_distributed(EstimateRequest(**base, tp=2, gpus=2))
    zero = _maybe_request(**base, fsdp="full_shard", gpus=2, zero=3)
    assert zero is None or "DeepSpeed" in (layout_limitations(zero) or "")
    qlora = EstimateRequest(**base, fsdp="full_shard", gpus=2, qlora={"r": 4}, quant="nf4")
    assert layout_limitations(qlora) is None
    qlora_tp = EstimateRequest(**base, fsdp="full_shard", gpus=2, tp=2, qlora={"r": 4})
    assert "QLoRA" in (layout_limitations(qlora_tp) or "")
    pp = EstimateRequest(**base, fsdp="full_shard", gpus=4, pp=2)
    assert "pipeline" in (layout_limitations(pp) or "")
    assert layout_limitations(EstimateRequest(**base, fsdp="full_shard", gpus=4)) is None


# ----------------------------------------------------------------------------- live traces


def _need_tracer() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("no C++ compiler: the fake-CUDA extension cannot be built")


LIVE = [
    "llama-full-fsdp2-fs-w4-fp32-nockpt-b2s256",
    "llama-full-fsdp1-fs-w4-ampbf16-nockpt-b2s256",
    "llama-full-fsdp2-fs-w4-tp2sp-fp32-nockpt-b2s256",
]


@pytest.mark.slow
def test_committed_grid_entries_reproduce() -> None:
    _need_tracer()
    from validation.trace import TraceUnavailable, trace_scenarios

    scenarios = [dist_grid.scenario(sid) for sid in LIVE]
    try:
        results = trace_scenarios(scenarios)
    except TraceUnavailable as exc:
        pytest.skip(f"tracing unavailable here: {exc}")
    committed = _committed()
    for sid, res in zip(LIVE, results, strict=True):
        assert isinstance(res, Measurement), res
        assert res.measured == committed[sid].measured, sid


TINY = {
    "model_type": "llama", "hidden_size": 64, "intermediate_size": 160,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
    "vocab_size": 1000, "max_position_embeddings": 128, "tie_word_embeddings": False,
}  # fmt: skip


@pytest.mark.slow
def test_fake_trace_equals_a_real_gloo_run() -> None:
    """Rank 0 of a 2-layer llama, FSDP2 full_shard, world 2: fake process group + fake
    tensors vs two real CPU processes over gloo, same tracker. Byte for byte equal on the
    CPU (once gloo's in-collective working copy is left out, see ``_gloo_internal``); on fake
    CUDA the only difference is AdamW's per-parameter ``step`` counters, which a CUDA run
    keeps on the host (foreach, not capturable): 512 B x 21 parameter tensors."""
    _need_tracer()
    from validation.dist_trace import real_gloo_trace
    from validation.trace import TraceUnavailable, trace_scenarios

    req = EstimateRequest(
        model=TINY, batch_size=2, seq_len=32, fsdp="full_shard", gpus=2, attn="eager"
    )
    scenario = Scenario(id="gloo-self-check", request=req, optim_impl="foreach")
    try:
        (fake_cpu,) = trace_scenarios([scenario], "fake-cpu", route_sdpa=False)
        (fake_cuda,) = trace_scenarios([scenario], "fake-cuda", route_sdpa=False)
    except TraceUnavailable as exc:
        pytest.skip(f"tracing unavailable here: {exc}")
    real = real_gloo_trace(scenario)
    assert isinstance(fake_cpu, Measurement) and isinstance(fake_cuda, Measurement)
    assert fake_cpu.measured == real
    n_tensors = 1 + 2 * 9 + 2
    steps = n_tensors * BLOCK
    cpu, cuda = fake_cpu.measured, fake_cuda.measured
    assert cuda.by_category["optimizer"] == cpu.by_category["optimizer"] - steps
    for key, value in cpu.per_phase_peak.items():  # counters appear in the first step
        less = value - cuda.per_phase_peak[key]
        assert 0 <= less <= steps and less % BLOCK == 0, key
    assert cuda.allocated_bytes == cpu.allocated_bytes - steps


def test_validate_accepts_layouts_for_the_trace_backend() -> None:
    from validation.compare import trace_limitations

    fsdp = EstimateRequest(model=TINY, fsdp="full_shard", gpus=8)
    assert trace_limitations(fsdp) is None
    assert trace_limitations(EstimateRequest(model=TINY, tp=2, gpus=2)) is None
    ddp = trace_limitations(EstimateRequest(model=TINY, gpus=2))
    assert ddp is not None and "multi-GPU" in ddp
    both = _maybe_request(model=TINY, fsdp="full_shard", gpus=2, zero=2)
    assert both is None or "DeepSpeed" in (trace_limitations(both) or "")
