"""Optimizer states, derived by hand for GPT-2 small (124,439,808 parameters)."""

from __future__ import annotations

import math

import pytest

import vramcalc
from vramcalc.errors import InvalidConfigError

H, V, P, FF, L = 768, 50257, 1024, 3072, 12  # GPT-2 small config.json


def _r512(nbytes: int) -> int:
    return -(-nbytes // 512) * 512


def _gpt2_tensors() -> list[int]:
    # wte (tied with lm_head, counted once), wpe, 12 x (ln_1 w/b, c_attn w/b, attn c_proj w/b,
    # ln_2 w/b, c_fc w/b, mlp c_proj w/b), ln_f w/b -- GPT2Model.named_parameters()
    layer = [H, H, H * 3 * H, 3 * H, H * H, H, H, H, H * FF, FF, FF * H, H]
    return [V * H, P * H, *(layer * L), H, H]


def test_tensor_list_matches_published_count() -> None:
    assert sum(_gpt2_tensors()) == 124_439_808


def test_adamw_fp32_states_are_8_bytes_per_param() -> None:
    r = vramcalc.estimate(model="gpt2", optim="adamw_torch")
    # exp_avg and exp_avg_sq: one fp32 tensor per parameter each, every block rounded to 512 B
    per_state = sum(_r512(4 * n) for n in _gpt2_tensors())
    assert r.details["optimizer/exp_avg"] == per_state
    assert r.details["optimizer/exp_avg_sq"] == per_state
    assert 2 * per_state == pytest.approx(8 * 124_439_808, rel=1e-3)


def test_adamw_bnb_8bit_blockwise_states() -> None:
    r = vramcalc.estimate(model="gpt2", optim="adamw_bnb_8bit")
    # bitsandbytes Optimizer8bit: tensors with < 4096 elements (min_8bit_size) keep fp32 states;
    # others hold a uint8 state plus one fp32 absmax per 256-value block (blockwise=True)
    per_state = 0
    for n in _gpt2_tensors():
        if n < 4096:
            per_state += _r512(4 * n)
        else:
            per_state += _r512(n) + _r512(4 * math.ceil(n / 256))
    assert r.details["optimizer/exp_avg"] == pytest.approx(per_state, rel=2e-3)
    assert r.details["optimizer/exp_avg_sq"] == pytest.approx(per_state, rel=2e-3)
    # the shared dynamic quantization maps: 256 fp32 values each, two of them, at most
    assert 0 < r.details["optimizer/qmaps"] <= 2 * _r512(256 * 4)


def test_paged_states_count_in_device_not_allocated() -> None:
    plain = vramcalc.estimate(model="gpt2", optim="adamw_bnb_8bit")
    paged = vramcalc.estimate(model="gpt2", optim="paged_adamw_8bit")
    # paged states live in CUDA unified memory: invisible to max_memory_allocated, seen by NVML
    assert paged.peak.allocated_bytes < plain.peak.allocated_bytes
    assert paged.details.get("optimizer/paged_unified_memory", 0) > 0
    assert (
        paged.peak.device_bytes
        >= paged.peak.reserved_bytes + paged.details["optimizer/paged_unified_memory"]
    )


def test_sgd_has_no_state_and_adafactor_is_small() -> None:
    sgd = vramcalc.estimate(model="gpt2", optim="sgd")
    assert sgd.breakdown.optimizer == 0
    ada = vramcalc.estimate(model="gpt2", optim="adafactor")
    # factored second moments: row + column vectors per matrix, far below one fp32 copy
    assert 0 < ada.breakdown.optimizer < 4 * 124_439_808 // 4


def test_foreach_temporaries_are_the_larger_param_group() -> None:
    r = vramcalc.estimate(model="gpt2", optim="adamw_torch")
    # Trainer makes two groups: weights with decay, biases/LayerNorm without. The foreach step
    # holds an fp32 work list the size of one group; the larger one holds every weight matrix
    # and the embeddings.
    decay = [n for i, n in enumerate(_gpt2_tensors()) if n >= H * H or i < 2]
    larger = sum(_r512(4 * n) for n in decay)
    assert r.details["optimizer/step_temporaries"] == pytest.approx(larger, rel=1e-3)


@pytest.mark.parametrize("name", ["galore_adamw", "galore_adamw_layerwise", "apollo_adamw"])
def test_unsupported_optimizers_are_refused_clearly(name: str) -> None:
    with pytest.raises(InvalidConfigError) as exc:
        vramcalc.estimate(model="gpt2", optim=name)
    assert name in str(exc.value) and "not modelled" in str(exc.value)
