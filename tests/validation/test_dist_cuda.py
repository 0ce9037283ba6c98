"""The multi-GPU CUDA backend (``validation/dist_cuda.py``): launcher choice, the torchrun
command, device selection, the layouts ``vramcalc validate --backend cuda`` accepts, and one
real ``torchrun --nproc-per-node 2`` run on the CPU over gloo (the code path and the record
schema; a CPU run has no allocator figures, so every byte count is 0)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from validation import compare, dist_cuda
from validation.records import Fingerprint, Measured, Measurement, Scenario
from vramcalc.specs import EstimateRequest

REPO = Path(__file__).resolve().parents[2]
TINY = {
    "model_type": "llama", "hidden_size": 64, "intermediate_size": 160,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
    "vocab_size": 1000, "max_position_embeddings": 128, "tie_word_embeddings": False,
}  # fmt: skip


def _req(**kw: Any) -> EstimateRequest:
    return EstimateRequest(model=TINY, batch_size=2, seq_len=32, **kw)


def test_launcher_follows_the_layout() -> None:
    assert dist_cuda.launcher_for(_req(fsdp="full_shard", gpus=2)) == "torchrun"
    assert dist_cuda.launcher_for(_req(fsdp="full_shard", gpus=4, tp=2)) == "torchrun"
    assert dist_cuda.launcher_for(_req(zero=3, gpus=2)) == "deepspeed"
    assert dist_cuda.launcher_for(_req(gpus=2)) == "deepspeed"  # plain data parallel
    assert dist_cuda.launcher_for(_req()) == "single"


def test_launch_command_is_torchrun_one_process_per_gpu() -> None:
    cmd = dist_cuda.launch_command(Path("s.json"), Path("r.json"), nproc=8)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert cmd[cmd.index("--nproc-per-node") + 1] == "8"
    assert "--standalone" in cmd
    assert cmd[cmd.index("-m", 3) + 1] == "validation.dist_cuda"
    assert cmd[cmd.index("--device") + 1] == "cuda"
    multi = dist_cuda.launch_command(Path("s.json"), Path("r.json"), nproc=8, nnodes=2)
    assert "--standalone" not in multi and multi[multi.index("--nnodes") + 1] == "2"


def test_device_selection() -> None:
    assert dist_cuda.device_for("cuda", 3) == ("cuda:3", "nccl")
    assert dist_cuda.device_for("cpu", 1) == ("cpu", "gloo")
    with pytest.raises(ValueError, match="accepted: cuda, cpu"):
        dist_cuda.device_for("tpu", 0)


def test_cuda_backend_limits() -> None:
    assert compare.cuda_limitations(_req(fsdp="full_shard", gpus=2)) is None
    assert compare.cuda_limitations(_req(zero=3, gpus=2)) is None  # DeepSpeed's launcher
    nodes = compare.cuda_limitations(_req(fsdp="hybrid_shard", gpus=2, nodes=2))
    assert nodes is not None and "every node" in nodes
    fp16 = compare.cuda_limitations(_req(fsdp="full_shard", gpus=2, mixed_precision="fp16"))
    assert fp16 is not None and "fp16" in fp16


def test_validate_cuda_fsdp_launches_torchrun(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # no GPU here: stand in for the probe and the process, and check what would be launched
    launched: list[list[str]] = []

    class FakeProc:
        pid = 0
        returncode = 0

        def __init__(self, cmd: list[str], **_kw: Any) -> None:
            launched.append(cmd)
            scenario = Scenario.model_validate_json(
                Path(cmd[cmd.index("--scenario") + 1]).read_text("utf-8")
            )
            m = Measurement(
                scenario=scenario,
                fingerprint=Fingerprint(
                    backend="cuda", device="stand-in", torch="x", transformers="x", python="x"
                ),
                measured=Measured(
                    allocated_bytes=2**20,
                    phase="backward",
                    step=2,
                    rank_allocated_bytes=[2**20, 2**20],
                    max_rank_allocated_bytes=2**20,
                ),
                created="2026-01-01T00:00:00+00:00",
            )
            Path(cmd[cmd.index("--result") + 1]).write_text(m.model_dump_json(), "utf-8")

        def communicate(self, timeout: float | None = None) -> tuple[str, None]:
            return "", None

    monkeypatch.setattr(compare, "_cuda_available", lambda: None)
    monkeypatch.setattr(compare.subprocess, "Popen", FakeProc)
    req = _req(fsdp="full_shard", fsdp_version=1, gpus=2)
    assert compare.validate_main(req, "cuda", True) == compare.EXIT_OK
    (cmd,) = launched
    assert "torch.distributed.run" in cmd and "validation.dist_cuda" in cmd
    assert cmd[cmd.index("--nproc-per-node") + 1] == "2"
    assert '"backend": "cuda"' in capsys.readouterr().out


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_over_gloo(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("accelerate")
    scenario = Scenario(id="tiny-fsdp2", request=_req(fsdp="full_shard", gpus=2), steps=2)
    sc, res = tmp_path / "scenario.json", tmp_path / "result.json"
    sc.write_text(scenario.model_dump_json(), "utf-8")
    cmd = dist_cuda.launch_command(sc, res, nproc=2, device="cpu")
    proc = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = Measurement.model_validate_json(res.read_text("utf-8"))
    assert m.error is None and m.scenario == scenario
    fp = m.fingerprint.model_dump()
    assert fp["backend"] == "cuda" and fp["device"] == "cpu (gloo, 2 processes)"
    assert fp["launcher"] == "torchrun" and fp["process_group"] == "gloo"
    assert fp["world_size"] == 2 and len(fp["step_s"]) == 2
    got = m.measured
    assert got.rank_allocated_bytes == [0, 0] and got.max_rank_allocated_bytes == 0
    phases = {f"{s}/{p}" for s in (1, 2) for p in ("forward", "loss", "backward", "optimizer")}
    assert set(got.per_phase_peak) == phases | {"0/load"}
