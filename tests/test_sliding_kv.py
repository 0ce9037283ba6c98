"""Sliding-window and chunked KV caches: transformers' DynamicCache and vLLM's KV groups.

Hand figures come from the library code paths cited in ``vramcalc/formulas/inference.py``
(transformers 5.24 ``cache_utils.DynamicSlidingWindowLayer``) and ``vramcalc/serving.py``
(vLLM ``v1/core/kv_cache_utils.py`` grouping, ``v1/kv_cache_interface.py``
``SlidingWindowSpec.max_memory_usage_bytes``), and from the published configs (Gemma 3 12B:
48 layers, every 6th global, window 1024; Mistral 7B v0.1: 32 layers, window 4096;
gpt-oss-20b: 24 layers alternating, window 128; Llama 4 Scout: chunked local attention).
The traced ground truth (fake-CUDA ``generate`` of a small Gemma 3 and Mistral) is in
``tests/validation/test_generate_trace.py``.
"""

from __future__ import annotations

import pytest

from vramcalc import estimate
from vramcalc.formulas.inference import cache_tokens, cache_windows
from vramcalc.hf import resolve_model
from vramcalc.serving import kv_layout
from vramcalc.specs import ModelSpec


def _spec(name: str) -> ModelSpec:
    return resolve_model(name, hub=False)


def test_dynamic_sliding_layer_storage_by_hand() -> None:
    # DynamicSlidingWindowLayer.update keeps full[:, :, -w + 1:], a view of the cat:
    # after a 448-token prefill with w = 64 the storage is still 448 tokens;
    assert cache_tokens(64, 448, 448, 0) == 448
    # decode step 1 cats the 63 kept tokens and the new one into a 64-token tensor, layer by
    # layer, so the step still sees 448-token storages until each layer is updated;
    assert cache_tokens(64, 448, 449, 1) == 448
    # from then on each layer holds min(seen, w) tokens
    assert cache_tokens(64, 448, 460, 12) == 64
    assert cache_tokens(64, 16, 40, 24) == 40  # below the window: everything
    assert cache_tokens(0, 448, 460, 12) == 460  # a full-attention layer


def test_cache_windows_follow_layer_types() -> None:
    gemma3 = cache_windows(_spec("gemma-3-12b"))
    assert len(gemma3) == 48 and gemma3.count(1024) == 40 and gemma3.count(0) == 8
    assert cache_windows(_spec("mistral-7b-v0.1")) == [4096] * 32
    oss = cache_windows(_spec("gpt-oss-20b"))
    assert oss.count(128) == 12 and oss.count(0) == 12
    scout = cache_windows(_spec("llama-4-scout-17b-16e"))
    assert scout.count(8192) == 36 and scout.count(0) == 12  # 3 chunked : 1 NoPE global
    assert cache_windows(_spec("llama-3.1-8b")) == [0] * 32


def test_hf_decode_cache_keeps_only_the_window() -> None:
    # Mistral 7B v0.1, bf16, batch 1, 16-token prompt, 6000 new tokens: the last decode step
    # has 6015 tokens seen; every layer keeps 4096 of them. K or V of one layer:
    # 8 kv heads x 4096 x 128 x 2 B = 8,388,608 B; 64 such tensors.
    r = estimate(model="mistral-7b-v0.1", task="infer", dtype="bf16", prompt_len=16,
                 new_tokens=6000)  # fmt: skip
    assert r.peak.phase.value == "decode"
    assert r.details["activations/kv_cache"] == 64 * 8 * 4096 * 128 * 2


def test_hf_prefill_holds_the_whole_prompt_in_windowed_layers() -> None:
    # a 8192-token prompt through Mistral 7B v0.1 (window 4096): the prefill's cache views keep
    # the whole prompt's storage, 64 x 8 x 8192 x 128 x 2 B
    r = estimate(model="mistral-7b-v0.1", task="infer", dtype="bf16", prompt_len=8192)
    assert r.peak.phase.value == "prefill"
    assert r.details["activations/kv_cache"] == 64 * 8 * 8192 * 128 * 2


def test_vllm_groups_like_kv_cache_utils() -> None:
    # Gemma 3 12B: 40 sliding + 8 full -> group size min(40, 8) = 8, cdiv(40, 8) = 5 sliding
    # groups and 1 full group (_get_kv_cache_groups_uniform_page_size)
    g = kv_layout(_spec("gemma-3-12b"), 48)
    assert g.group_size == 8 and sorted(g.groups) == [0, 1024, 1024, 1024, 1024, 1024]
    # gpt-oss-20b: 12 sliding + 12 full -> two groups of 12
    o = kv_layout(_spec("gpt-oss-20b"), 24)
    assert o.group_size == 12 and sorted(o.groups) == [0, 128]
    # Mistral 7B v0.1: every layer slides over 4096 tokens -> one group of 32
    m = kv_layout(_spec("mistral-7b-v0.1"), 32)
    assert (m.group_size, m.groups) == (32, (4096,))
    # Llama 4 Scout: chunked local attention turns the hybrid manager off by default, the
    # chunked layers are allocated as full attention (unify_hybrid_kv_cache_specs)
    s = kv_layout(_spec("llama-4-scout-17b-16e"), 48)
    assert (s.group_size, s.groups) == (48, (0,))


def test_vllm_blocks_per_sequence_by_hand() -> None:
    m = kv_layout(_spec("mistral-7b-v0.1"), 32)
    # SlidingWindowSpec: cdiv(min(4096 - 1 + 8192, 31024), 16) + 1 = cdiv(12287, 16) + 1
    assert m.blocks_for(31024, 16, 8192) == 768 + 1
    # a decoding sequence (one new token per step): cdiv(4096, 16) + 1
    assert m.blocks_for(31024, 16, 1) == 256 + 1
    g = kv_layout(_spec("gemma-3-12b"), 48)
    # 1 full group cdiv(31024, 16) = 1939, 5 sliding groups cdiv(1023 + 8192, 16) + 1 = 577
    assert g.blocks_for(31024, 16, 8192) == 1939 + 5 * 577


@pytest.mark.parametrize("name", ["gemma-3-12b", "mistral-7b-v0.1"])
def test_vllm_serving_report_uses_the_groups(name: str) -> None:
    r = estimate(model=name, task="infer", dtype="bf16", engine="vllm", gpu="h100-sxm",
                 prompt_len=30000, new_tokens=1024)  # fmt: skip
    s = r.serving
    assert s is not None and s.kv_layout
    spec = _spec(name)
    layout = kv_layout(spec, spec.num_hidden_layers)
    # one block id: 16 tokens of K and V of every layer of one group (8 kv heads x 256 or 128)
    per_layer = 2 * 16 * 8 * spec.head_dim * 2
    assert s.kv_block_bytes == layout.group_size * per_layer
    assert s.kv_cache_bytes == s.kv_blocks * s.kv_block_bytes
    assert s.kv_blocks_per_sequence == layout.blocks_for(31024, 16, s.max_num_batched_tokens)
    assert s.max_concurrency == s.kv_blocks // s.kv_blocks_per_sequence
    full_attention_blocks = spec.num_hidden_layers * -(-31024 // 16) // layout.group_size
    assert s.kv_blocks_per_sequence < full_attention_blocks


def test_vllm_full_attention_model_unchanged() -> None:
    s = estimate(model="llama-3.1-8b", task="infer", dtype="bf16", engine="vllm",
                 gpu="h100-sxm", prompt_len=8192, new_tokens=1024).serving  # fmt: skip
    assert s is not None and s.kv_layout is None
    assert s.kv_block_bytes == 16 * 131_072
    assert s.kv_blocks_per_sequence == -(-9216 // 16)
