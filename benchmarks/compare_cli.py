"""Compare the CLI of two checkouts byte for byte (a cold-start change must not move output).

    python benchmarks/compare_cli.py BEFORE [AFTER] [--jobs N]

Runs the same ``python -m vramcalc ARGS`` in both checkouts (``BEFORE``: e.g. an exported
``git archive`` of main; ``AFTER``: this checkout by default) and compares exit status, stdout
and stderr. The commands are every CLI case of the bad-input corpus (``tests/bad_inputs.py``:
one-line errors, exit 2) and ``GOOD``: plain tables and ``--json`` for catalog models, PEFT
methods, ZeRO/FSDP/TP/PP/EP layouts, ``--max-batch``, time and cost, TRL trainers, ``--task
infer`` with both engines, and the catalog subcommands. ``COLUMNS=80`` and ``NO_COLOR=1``, as
the tests run; stdout is a pipe (rich renders without a terminal). Prints each difference and a
summary; exit status 1 when any command differs. Not part of the test run (~200 processes per
checkout).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.bad_inputs import CASES  # noqa: E402

GOOD = """
gpt2
gpt2 --json
gpt2-medium --optim adamw_8bit --lora r=16
gpt2-medium --optim adamw_8bit --lora r=16 --json
llama-3.1-8b --lora r=16
llama-2-7b --dtype bf16 --qlora r=64,targets=all-linear --grad-ckpt -s 4096 --gpu rtx-4090
llama-3.1-70b --dtype bf16 --lora r=16 --fsdp full_shard --gpus 8 --grad-ckpt -s 4096
llama-3.1-8b --mixed-precision bf16 --fsdp full_shard --gpus 8 --nodes 2 --tp 2 --sequence-parallel
llama-3.1-8b --gpus 8 --zero 3 --mixed-precision bf16 --gpu h100-sxm
llama-3.1-8b --gpus 8 --zero 3 --offload-optimizer cpu --mixed-precision bf16 --json
llama-3.1-8b --pp 4 --gpus 8 --pp-schedule interleaved --dtype bf16
mixtral-8x7b --dtype bf16 --lora r=16,targets=all-linear --gpus 8 --ep 8 --json
llama-2-7b --lora r=8 --gpu a10g-24gb --max-batch
llama-2-7b --lora r=8 --gpu a10g-24gb --max-batch --json --global-batch 64
llama-2-7b --dtype bf16 --qlora r=8,targets=q_proj+v_proj --framework litgpt -s 1304
llama-3.1-8b --framework torchtune --grad-ckpt --activation-offload --optimizer-in-backward
llama-3.1-8b --framework unsloth --grad-ckpt --checkpoint-offload --qlora r=16
gpt2 --liger --json
gpt2 --optim adafactor
gpt2 --adapter dim=64
gpt2 --prefix tokens=20 --json
gpt2 --ia3
t5-base --seq-len 512 --target-len 128
mistral-7b --lora r=16 --gpu h100-80gb --tokens 50000000 --epochs 3
mistral-7b --lora r=16 --gpu h100-80gb --tokens 50000000 --epochs 3 --json
llama-3.1-8b --trainer dpo --lora r=16 --dtype bf16 -b 4 -s 1024 --gpu h100-80gb
llama-3.1-8b --trainer grpo --lora r=16 --dtype bf16 --json
qwen2.5-7b --trainer ppo --lora r=16 --dtype bf16
llama-3.1-8b --task infer --dtype bf16 --prompt-len 4096 --new-tokens 512 -b 4
qwen2.5-7b --task infer --dtype bf16 --engine vllm --gpu h100-sxm --concurrency 32 \
    --prompt-len 8192 --new-tokens 1024 --max-model-len 32768
gemma-3-12b --task infer --dtype bf16 --engine vllm --gpu h100-sxm --prompt-len 30000 \
    --new-tokens 1024 --json
models
models llama --json
gpus
gpus --json
optimizers --json
--help
"""


def commands(tmp: Path) -> tuple[list[list[str]], int]:
    """The corpus's CLI cases (files written under ``tmp``) and ``GOOD``; how many are cases."""
    out = []
    for case in CASES:
        for name, text in case.files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        # an argument with a NUL byte cannot be passed to a process (the in-process test has it)
        if case.argv is not None and not any("\x00" in a for a in case.argv):
            out.append([a.replace("{tmp}", str(tmp)) for a in case.argv])
    n_cases = len(out)
    text = GOOD.replace("\\\n", " ")
    out += [shlex.split(line) for line in text.splitlines() if line.strip()]
    return out, n_cases


def _run(root: Path, argv: list[str]) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONDONTWRITEBYTECODE", "PYDANTIC_DISABLE_PLUGINS")}  # fmt: skip
    env.update(PYTHONPATH=str(root), COLUMNS="80", NO_COLOR="1")
    p = subprocess.run([sys.executable, "-m", "vramcalc", *argv], cwd=root, env=env,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    return p.returncode, p.stdout, p.stderr


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("before", type=Path)
    p.add_argument("after", type=Path, nargs="?", default=ROOT)
    p.add_argument("--jobs", type=int, default=2)
    ns = p.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        argvs, n_cases = commands(Path(folder))
        with ThreadPoolExecutor(ns.jobs) as ex:
            before = list(ex.map(lambda a: _run(ns.before.resolve(), a), argvs))
            after = list(ex.map(lambda a: _run(ns.after.resolve(), a), argvs))
    differ = 0
    for argv, b, a in zip(argvs, before, after, strict=True):
        if a != b:
            differ += 1
            print(f"DIFFERS: vramcalc {shlex.join(argv)}\n  before: exit {b[0]}, "
                  f"{len(b[1])} chars out, err {b[2][:300]!r}\n  after:  exit {a[0]}, "
                  f"{len(a[1])} chars out, err {a[2][:300]!r}")  # fmt: skip
    codes = Counter(b[0] for b in before)
    print(f"{len(argvs)} commands ({n_cases} from "
          f"tests/bad_inputs.py), {differ} differ; exit statuses before: "
          f"{dict(sorted(codes.items()))}")  # fmt: skip
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
