"""What torchtune's compiled chunked cross-entropy keeps for backward (torch.compile on CPU).

The torchtune profile (``vramcalc/frameworks/torchtune.py``) models ``compile=True`` with
``CEWithChunkedOutputLoss`` as Inductor runs it: torchtune 0.6.1 ``training/_compile.py``
``compile_loss`` compiles only ``CEWithChunkedOutputLoss.compute_cross_entropy``
(``F.cross_entropy(logits.float(), labels, reduction="sum")``), once per chunk. The fake-CUDA
tracer cannot run Inductor, but the tensors AOTAutograd's partitioner
(``min_cut_rematerialization_partition``, Inductor's default) saves for backward do not
depend on the device, so this probe compiles torchtune's own loss on the CPU, runs one chunk
under ``torch.autograd.graph.saved_tensors_hooks`` and lists what was saved, against eager
mode. It also reads Inductor's generated code (``torch._inductor`` ``output_code``) for the
buffers the forward and backward kernels allocate.

Observed (torch 2.13, torchtune 0.6.1, a 64 x 4096 bf16 chunk):

- eager: the fp32 ``log_softmax`` output (rows x vocab x 4 bytes) saved;
- compiled: the bf16 chunk itself, the labels and two fp32 per-row statistics (rows x 1: the
  max and the log-sum-exp); the forward allocates only per-row buffers (no fp32 chunk), the
  backward one bf16 rows x vocab buffer (the chunk's gradient).

``python -m validation.compile_ce_probe`` prints both lists and the allocations as JSON
(about 20 s on two cores: one Inductor compilation).
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from typing import Any

__all__ = ["probe"]

_EMPTY = re.compile(r"empty_strided_cpu\(\(([0-9, ]*)\),.*?torch\.(\w+)\)")


def _saved(fn: Any, rows: int, vocab: int) -> list[dict[str, Any]]:
    import torch

    torch.manual_seed(0)
    x = torch.randn(rows, vocab, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, vocab, (rows,))
    out: list[dict[str, Any]] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        out.append({"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")})
        return t

    with warnings.catch_warnings():
        # dynamo's tracing touches .grad of non-leaf tensors (a UserWarning, not ours)
        warnings.simplefilter("ignore", UserWarning)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            h = x * 1.0  # a non-leaf, as the output projection's chunk is
            loss = fn(h, labels)
        loss.backward()
    return out


def probe(rows: int = 64, vocab: int = 4096) -> dict[str, Any]:
    """Compile torchtune's ``compute_cross_entropy`` and report what it saves and allocates."""
    import torch
    from torchtune.modules.loss import CEWithChunkedOutputLoss

    from validation.torchtune_trace import _torchao_compat

    _torchao_compat()
    from torchtune.training import compile_loss

    eager = CEWithChunkedOutputLoss(num_output_chunks=8)
    eager_saved = _saved(eager.compute_cross_entropy, rows, vocab)

    records: list[str] = []

    class _Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    torch._logging.set_logs(output_code=True)
    handler = _Grab()
    logger = logging.getLogger("torch._inductor.codecache")
    logger.addHandler(handler)
    try:
        compiled = compile_loss(CEWithChunkedOutputLoss(num_output_chunks=8), verbose=False)
        compiled_saved = _saved(compiled.compute_cross_entropy, rows, vocab)
    finally:
        logger.removeHandler(handler)
        torch._logging.set_logs()
    buffers = []
    for text in records:
        for shape, dtype in _EMPTY.findall(text):
            dims = [int(d) for d in shape.replace(" ", "").split(",") if d]
            buffers.append({"shape": dims, "dtype": dtype})
    return {
        "torch": torch.__version__,
        "rows": rows,
        "vocab": vocab,
        "eager_saved": eager_saved,
        "compiled_saved": compiled_saved,
        "compiled_buffers": buffers,
    }


def main() -> int:
    print(json.dumps(probe(), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
