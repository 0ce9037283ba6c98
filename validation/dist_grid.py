"""The traced distributed grid: rank 0 of FSDP1/FSDP2/TP layouts over small models.

Three families: ``llama`` (MHA) and ``mistral`` (GQA) from ``validation.grid.FAMILIES``, and
``mixtral`` (MoE: 4 experts, top-2, defined here), all hidden 256 and 2-4 layers, so a trace
takes seconds. Settings vary over FSDP1/FSDP2 x {full_shard, shard_grad_op, hybrid_shard
(2 nodes), no_shard} x reshard after forward on/off x CPU offload x world 2/4/8 x TP 2 with
FSDP2 (with and without sequence parallel) x {full, LoRA, QLoRA} x {fp32, bf16, AMP bf16} x
checkpointing on/off x batch/sequence x gradient accumulation (with and without
``fsdp_sync_each_batch``). Not the full cross product; the llama rows vary one
setting at a time from a base case (FSDP2 full_shard, world 4, fp32) so each effect can be read
off a pair of rows. QLoRA rows follow PEFT's FSDP+QLoRA recipe
(``validation.build.bnb_config``).

``scenarios()`` lists them all, ``scenario(id)`` finds one; ``MOE_FAMILY`` is the MoE config.
"""

from __future__ import annotations

from typing import Any

from validation.grid import FAMILIES
from validation.records import Scenario
from vramcalc.specs import EstimateRequest

__all__ = ["MOE_FAMILY", "scenario", "scenarios"]

MOE_FAMILY: dict[str, Any] = {
    "model_type": "mixtral", "hidden_size": 256, "intermediate_size": 512,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "num_local_experts": 4, "num_experts_per_tok": 2, "vocab_size": 16000,
    "max_position_embeddings": 512, "sliding_window": None, "tie_word_embeddings": False,
}  # fmt: skip


def _family(name: str) -> dict[str, Any]:
    return dict(MOE_FAMILY) if name == "mixtral" else dict(FAMILIES[name])


# (family, method, fsdp_version, strategy, gpus, nodes, tp, dtype/amp, ckpt, batch, seq, extra)
_Row = tuple[str, str, int, str, int, int, int, str, bool, int, int, dict[str, Any]]
_ROWS: list[_Row] = [
    # llama, FSDP2: base case w4 fp32, then one change at a time
    ("llama", "full", 2, "full_shard", 2, 1, 1, "fp32", False, 2, 256, {}),
    ("llama", "full", 2, "full_shard", 4, 1, 1, "fp32", False, 2, 256, {}),
    ("llama", "full", 2, "full_shard", 8, 1, 1, "fp32", False, 2, 256, {}),
    ("llama", "full", 2, "full_shard", 4, 1, 1, "fp32", False, 2, 256, {"reshard": False}),
    ("llama", "full", 2, "full_shard", 4, 1, 1, "ampbf16", False, 2, 256, {}),
    ("llama", "full", 2, "full_shard", 4, 1, 1, "bf16", False, 2, 256, {}),
    ("llama", "full", 2, "full_shard", 4, 1, 1, "fp32", True, 2, 256, {}),
    ("llama", "full", 2, "full_shard", 8, 1, 1, "ampbf16", True, 4, 256, {}),
    ("llama", "full", 2, "full_shard", 4, 1, 1, "fp32", False, 2, 256, {"offload": True}),
    ("llama", "full", 2, "full_shard", 4, 1, 1, "ampbf16", False, 2, 256, {"offload": True}),
    ("llama", "full", 2, "shard_grad_op", 4, 1, 1, "fp32", False, 2, 256, {}),
    ("llama", "full", 2, "hybrid_shard", 2, 2, 1, "fp32", False, 2, 256, {}),
    ("llama", "full", 2, "no_shard", 2, 1, 1, "fp32", False, 2, 256, {}),
    ("llama", "full", 2, "full_shard", 2, 1, 1, "fp32", False, 1, 64, {}),
    ("llama", "lora", 2, "full_shard", 4, 1, 1, "fp32", False, 2, 256, {}),
    ("llama", "lora", 2, "full_shard", 4, 1, 1, "bf16", True, 2, 256, {}),
    ("llama", "lora", 2, "full_shard", 2, 1, 1, "ampbf16", False, 2, 256, {}),
    # llama, FSDP2 + TP 2 (2-D mesh dp_shard x tp)
    ("llama", "full", 2, "full_shard", 4, 1, 2, "fp32", False, 2, 256, {}),
    ("llama", "full", 2, "full_shard", 4, 1, 2, "fp32", False, 2, 256, {"sp": True}),
    ("llama", "full", 2, "full_shard", 2, 1, 2, "ampbf16", False, 2, 256, {}),
    ("llama", "full", 2, "full_shard", 8, 1, 2, "ampbf16", True, 2, 256, {"sp": True}),
    # llama, FSDP1
    ("llama", "full", 1, "full_shard", 2, 1, 1, "fp32", False, 2, 256, {}),
    ("llama", "full", 1, "full_shard", 4, 1, 1, "fp32", False, 2, 256, {}),
    ("llama", "full", 1, "full_shard", 8, 1, 1, "fp32", False, 2, 256, {}),
    ("llama", "full", 1, "full_shard", 4, 1, 1, "ampbf16", False, 2, 256, {}),
    ("llama", "full", 1, "full_shard", 4, 1, 1, "bf16", False, 2, 256, {}),
    ("llama", "full", 1, "full_shard", 4, 1, 1, "fp32", False, 2, 256, {"orig": False}),
    ("llama", "full", 1, "shard_grad_op", 4, 1, 1, "fp32", False, 2, 256, {}),
    ("llama", "full", 1, "hybrid_shard", 2, 2, 1, "fp32", False, 2, 256, {}),
    ("llama", "full", 1, "no_shard", 2, 1, 1, "fp32", False, 2, 256, {}),
    ("llama", "full", 1, "full_shard", 4, 1, 1, "fp32", False, 2, 256, {"offload": True}),
    ("llama", "full", 1, "full_shard", 4, 1, 1, "fp32", True, 2, 256, {}),
    ("llama", "full", 1, "full_shard", 4, 1, 1, "fp32", False, 2, 256, {"bwd_post": True}),
    ("llama", "lora", 1, "full_shard", 4, 1, 1, "fp32", False, 2, 256, {}),
    ("llama", "lora", 1, "full_shard", 2, 1, 1, "bf16", True, 2, 256, {}),
    # QLoRA (PEFT's FSDP+QLoRA recipe: nf4, double quant, bf16 quant storage): 2048 tokens
    # so bitsandbytes' CUDA dispatch dequantizes every weight (M > 1536)
    ("llama", "qlora", 1, "full_shard", 4, 1, 1, "bf16", True, 2, 1024, {}),
    ("llama", "qlora", 1, "full_shard", 8, 1, 1, "bf16", False, 2, 1024, {}),
    ("llama", "qlora", 2, "full_shard", 2, 1, 1, "bf16", True, 2, 1024, {}),
    ("llama", "qlora", 2, "full_shard", 8, 1, 1, "bf16", False, 1, 2048, {}),
    # mistral (GQA)
    ("mistral", "full", 2, "full_shard", 4, 1, 1, "fp32", False, 2, 256, {}),
    ("mistral", "full", 2, "full_shard", 8, 1, 1, "ampbf16", True, 2, 256, {}),
    ("mistral", "full", 2, "full_shard", 2, 1, 1, "fp32", False, 2, 256, {"reshard": False}),
    ("mistral", "full", 1, "full_shard", 4, 1, 1, "fp32", False, 2, 256, {}),
    ("mistral", "full", 1, "full_shard", 2, 1, 1, "ampbf16", True, 4, 128, {}),
    ("mistral", "lora", 2, "full_shard", 4, 1, 1, "bf16", False, 2, 256, {}),
    ("mistral", "qlora", 2, "full_shard", 8, 1, 1, "bf16", True, 2, 1024, {}),
    ("mistral", "qlora", 1, "full_shard", 2, 1, 1, "bf16", False, 2, 1024, {}),
    ("mistral", "full", 2, "full_shard", 4, 1, 2, "bf16", False, 2, 256, {}),
    ("mistral", "full", 2, "full_shard", 4, 1, 2, "ampbf16", False, 2, 256, {"sp": True}),
    # mixtral (MoE; grouped_mm experts, which take 16-bit weights only, like the CUDA kernel)
    ("mixtral", "full", 2, "full_shard", 4, 1, 1, "bf16", False, 2, 256, {}),
    ("mixtral", "full", 2, "full_shard", 8, 1, 1, "ampbf16", True, 2, 256, {}),
    ("mixtral", "full", 1, "full_shard", 4, 1, 1, "ampbf16", False, 2, 256, {}),
    ("mixtral", "lora", 2, "full_shard", 2, 1, 1, "bf16", False, 2, 256, {}),
    ("mixtral", "full", 2, "full_shard", 4, 1, 1, "ampbf16", False, 2, 256, {"offload": True}),
    # gradient accumulation as the Trainer runs it (Accelerator.accumulate): the micro-batches
    # before the last under no_sync, so FSDP keeps unsharded gradients; and sync_each_batch
    ("llama", "full", 2, "full_shard", 4, 1, 1, "fp32", False, 2, 256, {"ga": 2}),
    ("llama", "full", 2, "full_shard", 4, 1, 1, "ampbf16", True, 2, 256, {"ga": 3}),
    ("llama", "full", 2, "full_shard", 4, 1, 1, "fp32", False, 2, 256, {"ga": 2, "seb": True}),
    ("llama", "full", 1, "full_shard", 4, 1, 1, "fp32", False, 2, 256, {"ga": 2}),
    ("llama", "full", 1, "full_shard", 4, 1, 1, "ampbf16", True, 2, 256, {"ga": 2}),
    ("llama", "full", 1, "full_shard", 4, 1, 1, "fp32", False, 2, 256, {"ga": 2, "seb": True}),
    ("llama", "lora", 2, "full_shard", 4, 1, 1, "fp32", False, 2, 256, {"ga": 2}),
    ("llama", "lora", 1, "full_shard", 4, 1, 1, "fp32", False, 2, 256, {"ga": 2}),
    ("mistral", "full", 2, "full_shard", 8, 1, 1, "bf16", False, 2, 256, {"ga": 4}),
    ("mixtral", "full", 2, "full_shard", 4, 1, 1, "bf16", False, 2, 256, {"ga": 2}),
    # layer schedules: dense-then-MoE (DeepSeek-V3, MLA), MoE every 2nd layer (Llama 4),
    # a dense layer among MoE ones (Qwen2-MoE): tensors only some layers have stay in
    # their layer's unit
    ("deepseek_v3", "full", 2, "full_shard", 4, 1, 1, "fp32", False, 2, 256, {}),
    ("deepseek_v3", "full", 1, "full_shard", 4, 1, 1, "ampbf16", False, 2, 256, {}),
    ("llama4_text", "full", 2, "full_shard", 4, 1, 1, "bf16", False, 2, 256, {}),
    ("qwen2_moe", "full", 2, "full_shard", 8, 1, 1, "bf16", True, 2, 256, {}),
    # FSDP1 LoRA with the adapters inside their block's flat parameter (transformer policy
    # alone, as Lightning Fabric's FSDPStrategy(auto_wrap_policy={Block}) wraps)
    ("llama", "lora", 1, "full_shard", 4, 1, 1, "fp32", False, 2, 256, {"inblk": True}),
    ("llama", "lora", 1, "full_shard", 2, 1, 1, "ampbf16", True, 2, 256, {"inblk": True}),
    ("llama", "lora", 1, "full_shard", 4, 1, 1, "ampbf16", True, 2, 256, {"inblk": True, "ga": 2}),
    ("mistral", "lora", 1, "full_shard", 8, 1, 1, "fp32", False, 2, 256, {"inblk": True, "ga": 3}),
]

_STRATEGY = {"full_shard": "fs", "shard_grad_op": "sgo", "hybrid_shard": "hsdp", "no_shard": "ns"}


def _make(row: _Row) -> Scenario:
    family, method, version, strategy, gpus, nodes, tp, prec, ckpt, batch, seq, extra = row
    dtype, mp = ("fp32", "bf16") if prec == "ampbf16" else (prec, "no")
    parts = [family, method, f"fsdp{version}", _STRATEGY[strategy], f"w{gpus * nodes}"]
    if nodes > 1:
        parts.append(f"n{nodes}")
    if tp > 1:
        parts.append(f"tp{tp}" + ("sp" if extra.get("sp") else ""))
    parts += [prec, "ckpt" if ckpt else "nockpt", f"b{batch}s{seq}"]
    kw: dict[str, Any] = {}
    if "reshard" in extra:
        kw["fsdp_reshard_after_forward"] = extra["reshard"]
        parts.append("reshard" if extra["reshard"] else "noreshard")
    if extra.get("offload"):
        kw["fsdp_offload"] = True
        parts.append("offload")
    if "orig" in extra:
        kw["fsdp_use_orig_params"] = extra["orig"]
        parts.append("flatparams")
    if extra.get("bwd_post"):  # BACKWARD_POST prefetch, no rate limiter
        kw["fsdp_backward_prefetch"] = "backward_post"
        kw["fsdp_limit_all_gathers"] = False
        parts.append("bwdpost-nolimit")
    if extra.get("ga"):
        kw["grad_accum"] = extra["ga"]
        parts.append(f"ga{extra['ga']}")
    if extra.get("inblk"):
        kw["fsdp_lora_in_blocks"] = True
        parts.append("lora-in-blocks")
    if extra.get("seb"):
        kw["fsdp_sync_each_batch"] = True
        parts.append("synceach")
    if method == "lora":
        kw["lora"] = {"r": 8, "alpha": 16, "dropout": 0.05}
        if family == "mixtral":  # PEFT has no default LoRA targets for mixtral
            kw["lora"]["targets"] = ["q_proj", "v_proj"]
    elif method == "qlora":
        kw["qlora"] = {"r": 8, "alpha": 16, "dropout": 0.05}
        kw["quant"] = "nf4"
    request = EstimateRequest(
        model=_family(family), batch_size=batch, seq_len=seq, dtype=dtype,
        mixed_precision=mp, grad_ckpt=ckpt, attn="sdpa", fsdp=strategy, fsdp_version=version,
        gpus=gpus, nodes=nodes, tp=tp, sequence_parallel=bool(extra.get("sp")), **kw,
    )  # fmt: skip
    return Scenario(id="-".join(parts), request=request, steps=2, optim_impl="default")


def scenarios() -> list[Scenario]:
    """Every scenario of the traced distributed grid, in a fixed order."""
    return [_make(row) for row in _ROWS]


def scenario(scenario_id: str) -> Scenario:
    """Find the grid scenario with this id (``KeyError`` lists the ids when it is not found)."""
    for s in scenarios():
        if s.id == scenario_id:
            return s
    ids = ", ".join(s.id for s in scenarios())
    raise KeyError(f"no dist_grid scenario {scenario_id!r}; ids: {ids}")
