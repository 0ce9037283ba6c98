"""Parallel layouts: mesh checks, per-rank slices, and invariants of the per-rank states."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import vramcalc
from vramcalc.errors import InvalidConfigError
from vramcalc.formulas.counts import param_inventory
from vramcalc.formulas.layout import Stage, in_flight_microbatches, rank_inventory, stages
from vramcalc.hf import resolve_model
from vramcalc.specs import ParallelSpec


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"tp": 3, "gpus": 3}, "does not divide llama-2-7b's num_attention_heads=32"),
        ({"tp": 16, "gpus": 16, "model": "mistral-7b"}, "num_key_value_heads=8"),
        ({"tp": 2, "gpus": 3}, "does not divide the world size 3"),
        ({"pp": 64, "gpus": 64}, "exceeds llama-2-7b's 32 layers"),
        ({"ep": 2, "gpus": 2}, "needs a mixture-of-experts model"),
        ({"ep": 3, "gpus": 3, "model": "mixtral-8x7b"}, "does not divide mixtral-8x7b's 8 experts"),
        ({"fsdp": "full_shard", "zero": 2, "gpus": 2}, "both shard the model states"),
        ({"sequence_parallel": True}, "needs tensor parallelism"),
        ({"fsdp_offload": True}, "needs fsdp, but fsdp is not set"),
        ({"fsdp_version": 1}, "needs fsdp, but fsdp is not set"),
        ({"fsdp": "hybrid_shard", "gpus": 8}, "with --nodes 1 it is full_shard"),
        ({"pp_schedule": "interleaved"}, "needs pipeline parallelism"),
        ({"pp": 4, "gpus": 4, "pp_schedule": "interleaved", "pp_virtual_stages": 3}, "divide"),
        ({"cp": 4, "gpus": 4, "seq_len": 100}, "not a multiple of 8"),
        (
            {"fsdp": "shard_grad_op", "fsdp_reshard_after_forward": True, "gpus": 2},
            "contradicts --fsdp-reshard-after-forward true",
        ),
    ],
)
def test_impossible_layouts_are_refused(fields: dict[str, Any], needle: str) -> None:
    req = {"model": "llama-2-7b", "dtype": "bf16", **fields}
    # request-level rules answer as a pydantic ValidationError (EstimateRequest's validator),
    # mesh-against-model rules as InvalidConfigError (resolve): both are bad input
    with pytest.raises((InvalidConfigError, ValidationError)) as exc:
        vramcalc.estimate(**req)
    assert needle in str(exc.value)


def _model_states_at_rest(r: vramcalc.MemoryReport) -> int:
    rest = next(e for e in r.timeline if e.event == "zero_grad" and e.step == 2)
    step = next(e for e in r.timeline if e.event.startswith("optimizer step") and e.step == 2)
    return rest.components["params"] + step.components["gradients"] + rest.components["optimizer"]


MODELS = ["gpt2-medium", "llama-2-7b", "mistral-7b", "qwen2.5-7b"]


@settings(max_examples=25, deadline=None)
@given(
    model=st.sampled_from(MODELS),
    engine=st.sampled_from(
        [{"fsdp": "full_shard"}, {"fsdp": "full_shard", "fsdp_version": 1}, {"zero": 3}]
    ),
    mp=st.sampled_from(["no", "bf16"]),
    lora=st.booleans(),
)
def test_more_shards_never_raise_model_states(
    model: str, engine: dict[str, Any], mp: str, lora: bool
) -> None:
    extra: dict[str, Any] = {"lora": {"r": 8}} if lora else {}
    prev = None
    for gpus in (2, 4, 8, 16):
        r = vramcalc.estimate(model=model, gpus=gpus, mixed_precision=mp, **engine, **extra)
        states = _model_states_at_rest(r)
        if prev is not None:
            assert states <= prev
        prev = states


@settings(max_examples=20, deadline=None)
@given(model=st.sampled_from(MODELS), tp=st.sampled_from([2, 4]), lora=st.booleans())
def test_tp_never_raises_per_rank_parameters(model: str, tp: int, lora: bool) -> None:
    extra: dict[str, Any] = {"lora": {"r": 8}} if lora else {}
    one = vramcalc.estimate(model=model, gpus=tp, dtype="bf16", **extra)
    split = vramcalc.estimate(model=model, gpus=tp, tp=tp, dtype="bf16", **extra)
    at = "zero_grad"
    p1 = next(e for e in one.timeline if e.event == at).components["params"]
    pt = next(e for e in split.timeline if e.event == at).components["params"]
    assert pt < p1


@pytest.mark.parametrize("model", ["llama-2-7b", "gpt2-medium", "qwen2.5-7b", "mixtral-8x7b"])
@pytest.mark.parametrize(
    ("tp", "pp", "ep"), [(2, 1, 1), (4, 1, 1), (1, 4, 1), (2, 2, 1), (1, 1, 2)]
)
def test_rank_slices_cover_the_model_exactly(model: str, tp: int, pp: int, ep: int) -> None:
    spec = resolve_model(model)
    if ep > 1 and not spec.num_local_experts:
        pytest.skip("expert parallelism needs experts")
    _check_slices_cover(model, tp, pp, ep)


SLICE_MODELS = ["llama-2-7b", "gpt2-medium", "qwen2.5-7b", "mixtral-8x7b", "qwen3-30b-a3b",
                "gemma-2-2b", "llama-3.1-8b"]  # fmt: skip


@settings(max_examples=40, deadline=None, derandomize=True)
@given(data=st.data(), model=st.sampled_from(SLICE_MODELS))
def test_rank_slices_cover_the_model_over_generated_layouts(
    data: st.DataObject, model: str
) -> None:
    # the same invariant over drawn (tp, pp, ep): tp dividing the heads and KV heads, pp up
    # to the layer count (uneven splits too), ep dividing the experts
    spec = resolve_model(model)
    tps = [t for t in (1, 2, 4, 8) if spec.num_key_value_heads % t == 0]
    tp = data.draw(st.sampled_from(tps), label="tp")
    pp = data.draw(st.integers(1, min(spec.num_hidden_layers, 12)), label="pp")
    eps = (
        [e for e in (1, 2, 4, 8) if spec.num_local_experts % e == 0]
        if spec.num_local_experts
        else [1]
    )
    ep = data.draw(st.sampled_from(eps), label="ep")
    _check_slices_cover(model, tp, pp, ep)


def _check_slices_cover(model: str, tp: int, pp: int, ep: int) -> None:
    """Every group's slices over all tp x pp x ep ranks add up to the whole model."""
    spec = resolve_model(model)
    inv = param_inventory(spec)
    world = tp * pp * max(ep, 1)
    par = ParallelSpec(gpus_per_node=world, tp=tp, pp=pp, ep=ep)
    L = spec.num_hidden_layers
    from vramcalc.formulas.layout import stage_layers

    covered: dict[str, int] = {}
    for s in range(pp):
        stage = Stage(s, stage_layers(L, pp, s), s == 0, s == pp - 1)
        for g in rank_inventory(inv, spec, par, stage):
            # every tp rank and every ep rank holds a different slice of the same size
            covered[g.key] = covered.get(g.key, 0) + g.numel * tp * ep
    for g in inv:
        want = g.numel
        if g.role == "replicated":
            want *= tp * ep  # the same tensor on every tp/ep rank
        elif g.role in ("column", "row", "vocab") and ep > 1:
            want *= ep  # dense parameters are replicated over the expert ranks
        if g.key == "embed/tokens" and spec.tie_word_embeddings and pp > 1:
            want *= 2  # the last stage keeps its own copy for the tied LM head
        if g.role == "row" and g.bias_numel and tp > 1:
            want += g.bias_numel * g.count * (tp - 1)  # a row-parallel bias is replicated
        got = covered.get(g.key, 0)
        if g.role == "vocab" and g.in_features % tp and g.kind == "embedding":
            # an uneven vocabulary is padded to whole rows per rank (at most tp - 1 rows)
            assert want <= got < want + tp * g.out_features * (2 if want > g.numel else 1), g.key
        elif g.role == "vocab" and g.out_features % tp:
            assert want <= got < want + tp * g.in_features, g.key
        else:
            assert got == want, g.key


def test_pipeline_in_flight_microbatches() -> None:
    # 1F1B: stage s holds pp - s micro-batches, never more than the step runs (Narayanan 2021)
    par = ParallelSpec(gpus_per_node=8, pp=4)
    assert [in_flight_microbatches(par, s, 16) for s in range(4)] == [4, 3, 2, 1]
    assert in_flight_microbatches(par, 0, 2) == 2
    # interleaved, v = 2: Megatron's penalty 1 + (pp - 1) / (pp v) = 1.375 -> ceil(5.5) = 6
    inter = ParallelSpec(gpus_per_node=8, pp=4, pp_schedule="interleaved", pp_virtual_stages=2)
    assert in_flight_microbatches(inter, 0, 16) == 6
    spec = resolve_model("llama-2-7b")
    picked = stages(spec, par, 16)
    assert [s.index for s in picked] == [0, 1, 3]
    assert sum(s.layers for s in picked) == 8 + 8 + 8


def test_report_layout_names_the_mesh_and_engine() -> None:
    r = vramcalc.estimate(
        model="llama-2-7b", dtype="bf16", gpus=8, nodes=2, tp=2, sequence_parallel=True,
        fsdp="full_shard",
    )  # fmt: skip
    lay = r.layout
    assert lay is not None
    assert (lay.world_size, lay.tp, lay.dp_shard, lay.dp_replicate, lay.engine) == (
        16, 2, 8, 1, "fsdp2",
    )  # fmt: skip
    assert "FSDP2 full_shard over 8" in lay.summary and "TP 2 + SP" in lay.summary


def test_pipeline_reports_the_worst_stage() -> None:
    r = vramcalc.estimate(model="llama-2-7b", dtype="bf16", gpus=8, pp=4, grad_accum=8)
    assert r.layout is not None and r.layout.pp == 4
    assert r.layout.peak_stage == 0  # the first stage holds pp micro-batches of activations


_MOE_4 = {
    "model_type": "mixtral",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_local_experts": 4,
    "num_experts_per_tok": 2,
    "vocab_size": 16000,
    "tie_word_embeddings": False,
}


@pytest.mark.parametrize("gpus", [2, 4, 8, 16])
def test_fsdp2_rank0_shard_is_torch_chunk_of_each_parameter(gpus: int) -> None:
    """FSDP2's rank-0 shard of every parameter is ``torch.chunk(param, n, dim=0)[0]``.

    The oracle is torch itself on transformers' meta build: a fused ``[experts, out, in]``
    expert tensor is split by whole experts, so with 4 experts on 8 or 16 ranks rank 0 holds
    one expert, not 1/8 or 1/16 of the tensor.
    """
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = dict(_MOE_4)
    hf = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf)
    block = 512  # CUDA caching allocator block (c10 kMinBlockSize)
    expected = 0
    for p in model.parameters():
        first = torch.chunk(p, gpus, dim=0)[0]
        expected += -(-first.numel() * 4 // block) * block  # fp32 storage
    r = vramcalc.estimate(model=_MOE_4, gpus=gpus, fsdp="full_shard", fsdp_version=2)
    got = r.details["params/sharded"]
    assert got == expected
