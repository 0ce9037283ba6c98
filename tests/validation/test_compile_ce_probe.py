"""torchtune's compiled chunked cross-entropy: the profile's loss terms vs what Inductor saves.

``validation.compile_ce_probe`` compiles torchtune 0.6.1's own
``CEWithChunkedOutputLoss.compute_cross_entropy`` on the CPU (``training.compile_loss``) and
lists the tensors AOTAutograd saves for backward and the buffers Inductor's kernels allocate:
the oracle for what ``compile=True`` keeps at the loss. The profile's loss event with and
without ``--compile`` must differ by exactly what the probe says compile stops keeping (the
fp32 log-softmax and the upcast chunk) less what it keeps instead (per-row statistics).
"""

from __future__ import annotations

import math
import shutil
from typing import Any

import pytest

from validation import torchtune_grid
from validation.compare import predict
from vramcalc.formulas.params import block
from vramcalc.specs import EstimateRequest

pytestmark = pytest.mark.slow

ROWS, VOCAB = 64, 4096
_BYTES = {"float32": 4, "bfloat16": 2, "int64": 8}


@pytest.fixture(scope="module")
def probed() -> dict[str, Any]:
    pytest.importorskip("torchtune")
    if shutil.which("g++") is None and shutil.which("c++") is None:  # pragma: no cover
        pytest.skip("Inductor's CPU backend needs a C++ compiler")
    from validation.compile_ce_probe import probe

    return probe(ROWS, VOCAB)


def _per_elt(saved: list[dict[str, Any]], shape: list[int]) -> list[int]:
    """Bytes per element of the saved tensors of ``shape``."""
    return [_BYTES[s["dtype"]] for s in saved if s["shape"] == shape]


def test_compiled_loss_saves_the_16bit_chunk_and_row_statistics(probed: dict[str, Any]) -> None:
    full, rows = [ROWS, VOCAB], [ROWS, 1]
    # eager: cross_entropy's log_softmax output, fp32 (saved by log_softmax and nll_loss)
    assert set(_per_elt(probed["eager_saved"], full)) == {4}
    # compiled: the bf16 chunk once and two fp32 per-row statistics, no fp32 chunk
    assert _per_elt(probed["compiled_saved"], full) == [2]
    assert _per_elt(probed["compiled_saved"], rows) == [4, 4]
    # no fp32 chunk anywhere in the generated kernels' buffers; one bf16 one (the gradient)
    big = [b for b in probed["compiled_buffers"] if math.prod(b["shape"]) == ROWS * VOCAB]
    assert [b["dtype"] for b in big] == ["bfloat16"]


def _loss_event(compile_on: bool, vocab: int) -> int:
    req = EstimateRequest.model_validate(
        {
            # the torchtune grid's llama (tied embeddings, GQA) at this vocabulary
            "model": {**torchtune_grid.LLAMA, "vocab_size": vocab},
            "framework": "torchtune",
            "dtype": "bf16",
            "optim": "adamw_torch_fused",
            "batch_size": 2,
            "seq_len": 512,
            "lora": {"r": 8, "alpha": 16, "targets": ["q_proj", "v_proj"]},
            "grad_ckpt": True,
            "activation_offload": True,
            "compile": compile_on,
        }
    )
    report = predict(req, "fused", target="trace")
    (ev,) = [e for e in report.timeline if e.step == 2 and e.phase == "loss"]
    return int(ev.allocated_bytes)


def test_profile_loss_terms_follow_the_probe(probed: dict[str, Any]) -> None:
    vocab, n = 32768, 8
    chunk = 2 * 512 // n  # tokens per chunk (batch 2 x 512, 8 chunks)
    eager, compiled = _loss_event(False, vocab), _loss_event(True, vocab)
    # what eager keeps and compile does not, per chunk, scaled from the probe's chunk
    per_row_fp32 = sum(_per_elt(probed["compiled_saved"], [ROWS, 1]))  # bytes per row
    lsm = max(_per_elt(probed["eager_saved"], [ROWS, VOCAB]))  # 4: fp32 log-softmax
    upcast = block(chunk * vocab * 4)  # the one chunk's logits.float() of eager mode
    rows = n * (per_row_fp32 // 4) * block(chunk * 4)
    assert eager - compiled == n * block(chunk * vocab * lsm) + upcast - rows
