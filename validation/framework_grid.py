"""The traced framework grid (issue 10): the same small models run by other trainers' code.

Each scenario is a request with a ``framework`` and is traced by that framework's real step
(``validation.framework_trace``: LitGPT's ``GPT``/``lora.GPT``, ``chunked_cross_entropy``,
``torch.optim.AdamW``). Measurements: ``validation/measurements/trace-frameworks.jsonl``, one
JSON line per scenario (``validation.records.Measurement``; the request carries the
``framework``). The torchtune scenarios are added to the same file by their own grid.

Axes: full and LoRA (q/v, all linears, with and without dropout), bf16-true, 32-true and
bf16-mixed, chunked cross-entropy at LitGPT's 128 tokens and at a given chunk count,
``--loss full``, MHA (llama), GQA (mistral) and the tanh-GELU, parallel-residual phi.

CLI::

    python -m validation.framework_grid [--out validation/measurements/trace-frameworks.jsonl]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from validation.grid import FAMILIES
from validation.records import Scenario
from vramcalc.specs import EstimateRequest

__all__ = ["MEASUREMENTS", "scenario", "scenarios"]

MEASUREMENTS = Path(__file__).resolve().parent / "measurements" / "trace-frameworks.jsonl"
QV = ("q_proj", "v_proj")
ALL_LLAMA = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# (id, family, fields)
_ROWS: list[tuple[str, str, dict[str, Any]]] = [
    ("litgpt-llama-full-bf16-b2s256", "llama", {"dtype": "bf16", "batch_size": 2, "seq_len": 256}),
    ("litgpt-llama-lora-qv-bf16-b2s256", "llama",
     {"dtype": "bf16", "batch_size": 2, "seq_len": 256, "lora": {"r": 8, "targets": QV}}),
    ("litgpt-llama-lora-qv-drop-bf16-b2s256", "llama",
     {"dtype": "bf16", "batch_size": 2, "seq_len": 256,
      "lora": {"r": 16, "alpha": 32.0, "dropout": 0.05, "targets": QV}}),
    ("litgpt-llama-full-fp32-b1s256", "llama", {"dtype": "fp32", "batch_size": 1, "seq_len": 256}),
    ("litgpt-llama-lora-all-bf16-b2s256", "llama",
     {"dtype": "bf16", "batch_size": 2, "seq_len": 256, "lora": {"r": 8, "targets": ALL_LLAMA}}),
    ("litgpt-llama-lora-qv-bf16-lossfull-b2s256", "llama",
     {"dtype": "bf16", "batch_size": 2, "seq_len": 256, "loss": "full",
      "lora": {"r": 8, "targets": QV}}),
    ("litgpt-llama-lora-qv-bf16-chunks4-b2s256", "llama",
     {"dtype": "bf16", "batch_size": 2, "seq_len": 256, "loss_chunks": 4,
      "lora": {"r": 8, "targets": QV}}),
    ("litgpt-llama-full-bf16-b4s512", "llama", {"dtype": "bf16", "batch_size": 4, "seq_len": 512}),
    ("litgpt-llama-lora-qv-mixed-b2s128", "llama",
     {"dtype": "fp32", "mixed_precision": "bf16", "batch_size": 2, "seq_len": 128,
      "lora": {"r": 8, "targets": QV}}),
    ("litgpt-phi-full-bf16-b2s256", "phi", {"dtype": "bf16", "batch_size": 2, "seq_len": 256}),
    ("litgpt-phi-lora-qv-bf16-b2s256", "phi",
     {"dtype": "bf16", "batch_size": 2, "seq_len": 256, "lora": {"r": 8, "targets": QV}}),
    ("litgpt-phi-lora-qv-fp32-b2s128", "phi",
     {"dtype": "fp32", "batch_size": 2, "seq_len": 128, "lora": {"r": 8, "targets": QV}}),
    ("litgpt-mistral-full-bf16-b2s128", "mistral",
     {"dtype": "bf16", "batch_size": 2, "seq_len": 128}),
    ("litgpt-mistral-lora-qv-bf16-b2s256", "mistral",
     {"dtype": "bf16", "batch_size": 2, "seq_len": 256, "lora": {"r": 8, "targets": QV}}),
]  # fmt: skip


def scenarios() -> list[Scenario]:
    """Return every scenario of the framework grid."""
    out = []
    for sid, family, fields in _ROWS:
        req = EstimateRequest(model=dict(FAMILIES[family]), framework="litgpt", **fields)
        out.append(Scenario(id=sid, request=req, optim_impl="foreach"))
    return out


def scenario(sid: str) -> Scenario:
    """Return the scenario with id ``sid``.

    Raises:
        KeyError: an unknown id.

    """
    for s in scenarios():
        if s.id == sid:
            return s
    raise KeyError(f"no framework-grid scenario {sid!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """Trace the grid and append the lines to ``--out``."""
    from validation.trace import report

    parser = argparse.ArgumentParser(prog="python -m validation.framework_grid")
    parser.add_argument("--out", type=Path, default=MEASUREMENTS)
    parser.add_argument("--id", action="append", help="trace only these scenario ids")
    args = parser.parse_args(argv)
    chosen = [scenario(i) for i in args.id] if args.id else scenarios()
    return report(chosen, "fake-cuda", args.out)


if __name__ == "__main__":
    raise SystemExit(main())
