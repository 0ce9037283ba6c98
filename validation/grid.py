"""The traced validation grid: small models of seven families, a covering design of settings.

Each family has a small inline config (hidden 256, 2-4 layers, vocab 8k-32k) so a trace takes
about a second. Settings vary over {full, LoRA, QLoRA} x {fp32, bf16, fp16, AMP bf16, AMP fp16} x
{checkpointing on/off} x {eager, sdpa, flash_attention_2} x {adamw_torch foreach/fused/
for-loop, sgd, adafactor} x batch/sequence: not the full cross product, but every value of
each axis appears with several families, and the pairs that interact (LoRA x checkpointing,
AMP x attention, bf16 x optimizer implementation) are each covered. QLoRA scenarios are in the
grid but are skipped by the tracer (see ``validation.trace``).

``scenarios()`` lists them all, ``scenario(id)`` finds one; ``FAMILIES`` holds the configs.
"""

from __future__ import annotations

from typing import Any

from validation.records import Scenario
from vramcalc.specs import EstimateRequest

__all__ = ["FAMILIES", "scenario", "scenarios"]

FAMILIES: dict[str, dict[str, Any]] = {
    "gpt2": {
        "model_type": "gpt2", "n_embd": 256, "n_layer": 2, "n_head": 4,
        "vocab_size": 8000, "n_positions": 512,
    },
    "llama": {
        "model_type": "llama", "hidden_size": 256, "intermediate_size": 688,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
        "vocab_size": 16000, "max_position_embeddings": 512, "tie_word_embeddings": False,
    },
    "mistral": {  # GQA: 8 query heads share 2 key/value heads
        "model_type": "mistral", "hidden_size": 256, "intermediate_size": 896,
        "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2,
        "head_dim": 32, "vocab_size": 16000, "max_position_embeddings": 512,
        "sliding_window": None,
    },
    "qwen2": {
        "model_type": "qwen2", "hidden_size": 256, "intermediate_size": 704,
        "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 32000, "max_position_embeddings": 512, "tie_word_embeddings": True,
    },
    "phi": {
        "model_type": "phi", "hidden_size": 256, "intermediate_size": 1024,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
        "partial_rotary_factor": 0.5, "vocab_size": 12000, "max_position_embeddings": 512,
    },
    "gemma": {
        "model_type": "gemma", "hidden_size": 256, "intermediate_size": 1024,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 1,
        "head_dim": 64, "vocab_size": 24000, "max_position_embeddings": 512,
    },
    "opt": {
        "model_type": "opt", "hidden_size": 256, "ffn_dim": 1024, "num_hidden_layers": 4,
        "num_attention_heads": 4, "word_embed_proj_dim": 256, "vocab_size": 8000,
        "max_position_embeddings": 512,
    },
    "mixtral": {  # MoE: 4 experts, top-2 (transformers' grouped_mm experts path)
        "model_type": "mixtral", "hidden_size": 256, "intermediate_size": 512,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "num_local_experts": 4, "num_experts_per_tok": 2, "vocab_size": 16000,
        "max_position_embeddings": 512, "sliding_window": None, "tie_word_embeddings": False,
    },
    "qwen3": {  # sliding window on the upper half of the layers (use_sliding_window)
        "model_type": "qwen3", "hidden_size": 256, "intermediate_size": 704,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 64, "vocab_size": 16000, "max_position_embeddings": 512,
        "use_sliding_window": True, "sliding_window": 64, "max_window_layers": 2,
        "tie_word_embeddings": False,
    },
    "qwen3_moe": {  # MoE every 2nd layer (decoder_sparse_step), dense SwiGLU otherwise
        "model_type": "qwen3_moe", "hidden_size": 256, "intermediate_size": 512,
        "moe_intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 64, "num_experts": 8, "num_experts_per_tok": 2,
        "decoder_sparse_step": 2, "mlp_only_layers": [], "vocab_size": 16000,
        "max_position_embeddings": 512,
    },
    "deepseek_v3": {  # MLA (q_lora_rank, kv_lora_rank, rope/nope split) + dense-then-MoE
        "model_type": "deepseek_v3", "hidden_size": 256, "intermediate_size": 512,
        "moe_intermediate_size": 128, "num_hidden_layers": 3, "first_k_dense_replace": 1,
        "num_attention_heads": 4, "num_key_value_heads": 4, "q_lora_rank": 96,
        "kv_lora_rank": 64, "qk_rope_head_dim": 16, "qk_nope_head_dim": 32, "v_head_dim": 32,
        "n_routed_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": 1, "n_group": 1,
        "topk_group": 1, "vocab_size": 16000, "max_position_embeddings": 512,
    },
    "gemma2": {  # eager by default, soft-capping, alternating sliding/full layers
        "model_type": "gemma2", "hidden_size": 256, "intermediate_size": 512,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 64, "sliding_window": 64, "query_pre_attn_scalar": 64, "vocab_size": 16000,
        "max_position_embeddings": 512,
    },
    "gemma3_text": {  # local/global pattern from layer_types, q/k norms
        "model_type": "gemma3_text", "hidden_size": 256, "intermediate_size": 512,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 64, "sliding_window": 64, "query_pre_attn_scalar": 64,
        "layer_types": ["sliding_attention", "sliding_attention", "sliding_attention",
                        "full_attention"],
        "vocab_size": 16000, "max_position_embeddings": 512,
    },
    "falcon": {  # multi-query; transformers always builds an explicit mask
        "model_type": "falcon", "hidden_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 4, "multi_query": True, "vocab_size": 16000,
        "max_position_embeddings": 512,
    },
    "llama4_text": {  # chunked local attention on RoPE layers, a NoPE global layer, MoE every 2nd
        "model_type": "llama4_text", "hidden_size": 256, "intermediate_size": 256,
        "intermediate_size_mlp": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 64, "num_local_experts": 4,
        "num_experts_per_tok": 1, "interleave_moe_layer_step": 2, "attention_chunk_size": 64,
        "no_rope_layer_interval": 4, "vocab_size": 16000, "max_position_embeddings": 512,
    },
    "gpt_oss": {  # alternating sliding/full, attention sinks, every layer MoE
        "model_type": "gpt_oss", "hidden_size": 256, "intermediate_size": 256,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 64, "num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": 64,
        "vocab_size": 16000, "max_position_embeddings": 512,
    },
    "qwen2_moe": {  # shared expert + its sigmoid gate; layer 1 dense via mlp_only_layers
        "model_type": "qwen2_moe", "hidden_size": 256, "intermediate_size": 512,
        "moe_intermediate_size": 128, "shared_expert_intermediate_size": 256,
        "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
        "num_experts": 8, "num_experts_per_tok": 2, "mlp_only_layers": [1],
        "vocab_size": 16000, "max_position_embeddings": 512,
    },
    "phimoe": {  # LayerNorms, a router that is an nn.Linear, sliding window on every layer
        "model_type": "phimoe", "hidden_size": 256, "intermediate_size": 256,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": 64,
        "vocab_size": 16000, "max_position_embeddings": 512,
    },
    "olmoe": {  # every layer MoE, q/k norms over the whole projections
        "model_type": "olmoe", "hidden_size": 256, "intermediate_size": 256,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
        "num_experts": 8, "num_experts_per_tok": 2, "vocab_size": 16000,
        "max_position_embeddings": 512,
    },
    "deepseek_v2": {  # MLA without q compression (q_proj), dense-then-MoE, greedy top-k
        "model_type": "deepseek_v2", "hidden_size": 256, "intermediate_size": 512,
        "moe_intermediate_size": 128, "num_hidden_layers": 3, "first_k_dense_replace": 1,
        "num_attention_heads": 4, "num_key_value_heads": 4, "q_lora_rank": None,
        "kv_lora_rank": 64, "qk_rope_head_dim": 16, "qk_nope_head_dim": 32, "v_head_dim": 32,
        "n_routed_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": 1,
        "vocab_size": 16000, "max_position_embeddings": 512,
    },
    "olmo2": {  # post-norms on the branch outputs, q/k norms over the whole projections
        "model_type": "olmo2", "hidden_size": 256, "intermediate_size": 688,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
        "vocab_size": 16000, "max_position_embeddings": 512,
    },
    "granite": {  # scalar multipliers on embeddings, residual branches, attention and logits
        "model_type": "granite", "hidden_size": 256, "intermediate_size": 688,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "embedding_multiplier": 12.0, "residual_multiplier": 0.22,
        "attention_multiplier": 0.0078125, "logits_scaling": 8.0, "vocab_size": 16000,
        "max_position_embeddings": 512, "tie_word_embeddings": True,
    },
    "cohere": {  # parallel attention + MLP block, mean-centred LayerNorm, scaled tied logits
        "model_type": "cohere", "hidden_size": 256, "intermediate_size": 704,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 16000, "max_position_embeddings": 512, "logit_scale": 0.0625,
    },
    "glm4": {  # four RMSNorms per layer, fused gate_up_proj, partial rotary, q/k/v bias
        "model_type": "glm4", "hidden_size": 256, "intermediate_size": 512,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 64, "vocab_size": 16000, "max_position_embeddings": 512,
        "pad_token_id": 0, "eos_token_id": 1,
    },
    "starcoder2": {  # biased linears, plain gelu_pytorch_tanh MLP, LayerNorm, tied head
        "model_type": "starcoder2", "hidden_size": 256, "intermediate_size": 1024,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 16000, "max_position_embeddings": 512, "sliding_window": None,
    },
    "smollm3": {  # every 4th layer NoPE (no_rope_layer_interval), tied head
        "model_type": "smollm3", "hidden_size": 256, "intermediate_size": 688,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 16000, "max_position_embeddings": 512, "pad_token_id": 0,
    },
    "mamba": {  # selective SSM, transformers' pure-torch scan (no mamba-ssm kernels)
        "model_type": "mamba", "hidden_size": 256, "num_hidden_layers": 2, "state_size": 16,
        "vocab_size": 8000,
    },
    "mamba2": {  # SSD mixer, transformers' pure-torch chunked scan (no mamba-ssm kernels)
        "model_type": "mamba2", "hidden_size": 256, "num_hidden_layers": 2, "num_heads": 8,
        "head_dim": 64, "n_groups": 2, "state_size": 16, "chunk_size": 64, "vocab_size": 8000,
        "tie_word_embeddings": False, "pad_token_id": 0,
    },
    "jamba": {  # hybrid: layers 0,1,3 Mamba, layer 2 attention; layers 1,3 MoE (4 experts)
        "model_type": "jamba", "hidden_size": 256, "intermediate_size": 512,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "num_experts": 4, "num_experts_per_tok": 2, "attn_layer_period": 4,
        "attn_layer_offset": 2, "expert_layer_period": 2, "expert_layer_offset": 1,
        "mamba_d_state": 16, "vocab_size": 8000, "tie_word_embeddings": False,
    },
    "modernbert": {  # encoder + MLM head (architectures[0]); global layer 0, local layers 1-2
        "model_type": "modernbert", "architectures": ["ModernBertForMaskedLM"],
        "hidden_size": 256, "intermediate_size": 384, "num_hidden_layers": 3,
        "num_attention_heads": 4, "global_attn_every_n_layers": 3, "local_attention": 128,
        "vocab_size": 16000, "max_position_embeddings": 1024, "pad_token_id": 0,
        "bos_token_id": 1, "eos_token_id": 2, "cls_token_id": 1, "sep_token_id": 2,
    },
    "bert": {  # BertForMaskedLM (architectures[0]): no pooler, cls.predictions head
        "model_type": "bert", "architectures": ["BertForMaskedLM"], "hidden_size": 256,
        "intermediate_size": 1024, "num_hidden_layers": 2, "num_attention_heads": 4,
        "vocab_size": 16000, "max_position_embeddings": 512,
    },
    "roberta": {  # RobertaForMaskedLM: no pooler, lm_head (dense, layer_norm, tied decoder)
        "model_type": "roberta", "architectures": ["RobertaForMaskedLM"], "hidden_size": 256,
        "intermediate_size": 1024, "num_hidden_layers": 2, "num_attention_heads": 4,
        "vocab_size": 16000, "max_position_embeddings": 514, "type_vocab_size": 1,
        "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
    },
    "t5": {  # the original T5: relu MLP, tied head, dropout 0.1, relative position bias
        "model_type": "t5", "d_model": 256, "d_ff": 1024, "num_layers": 2,
        "num_decoder_layers": 2, "num_heads": 4, "d_kv": 64, "vocab_size": 8000,
        "feed_forward_proj": "relu", "dropout_rate": 0.1, "decoder_start_token_id": 0,
        "pad_token_id": 0,
    },
    "mt5": {  # the T5 v1.1 / mT5 layout: gated-gelu MLP, untied head
        "model_type": "mt5", "d_model": 256, "d_ff": 640, "num_layers": 2,
        "num_decoder_layers": 3, "num_heads": 4, "d_kv": 32, "vocab_size": 16000,
        "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False, "dropout_rate": 0.1,
    },
    # vision-language (issue 9 item 5): tiny towers and small images; traced on real CPU
    # tensors (validation.trace --mode cpu): the processors' grid metadata drives
    # data-dependent ops (image_grid_thw.tolist(), masked_scatter counts) fake tensors refuse
    "qwen2_5_vl": {  # windowed ViT (2x2 merge), RMSNorm + SwiGLU tower, Qwen2 LM, M-RoPE
        "model_type": "qwen2_5_vl", "hidden_size": 256, "intermediate_size": 704,
        "bos_token_id": 1, "eos_token_id": 2,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 16000, "max_position_embeddings": 2048, "tie_word_embeddings": False,
        "rope_scaling": {"type": "mrope", "mrope_section": [8, 12, 12]},
        "image_token_id": 15999, "vision_start_token_id": 15998, "vision_end_token_id": 15997,
        "video_token_id": 15996,
        "vision_config": {"depth": 2, "hidden_size": 128, "intermediate_size": 256,
                          "num_heads": 4, "patch_size": 14, "spatial_merge_size": 2,
                          "temporal_patch_size": 2, "out_hidden_size": 256, "window_size": 112,
                          "fullatt_block_indexes": [1]},
    },
    "qwen3_vl": {  # LayerNorm + GELU tower, learned positions, DeepStack merger, Qwen3 LM
        "model_type": "qwen3_vl", "tie_word_embeddings": False,
        "image_token_id": 15999, "vision_start_token_id": 15998, "vision_end_token_id": 15997,
        "video_token_id": 15996,
        "text_config": {"hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
                        "vocab_size": 16000, "max_position_embeddings": 2048,
                        "rope_scaling": {"rope_type": "default", "mrope_section": [8, 12, 12],
                                         "mrope_interleaved": True}},
        "vision_config": {"depth": 2, "hidden_size": 128, "intermediate_size": 256,
                          "num_heads": 4, "patch_size": 16, "spatial_merge_size": 2,
                          "temporal_patch_size": 2, "out_hidden_size": 256,
                          "num_position_embeddings": 256, "deepstack_visual_indexes": [0]},
    },
    "llava": {  # CLIP tower (features of the second-to-last layer) + 2-layer GELU projector
        "model_type": "llava", "image_token_id": 15999, "vision_feature_layer": -2,
        "text_config": {"model_type": "llama", "hidden_size": 256, "intermediate_size": 688,
                        "num_hidden_layers": 2, "num_attention_heads": 4,
                        "num_key_value_heads": 4, "vocab_size": 16000,
                        "max_position_embeddings": 1024},
        "vision_config": {"model_type": "clip_vision_model", "hidden_size": 128,
                          "intermediate_size": 256, "num_hidden_layers": 3,
                          "num_attention_heads": 4, "image_size": 112, "patch_size": 14,
                          "projection_dim": 64},
    },
    "gemma3": {  # SigLIP tower, 4x4 average pool to 16 tokens, bidirectional image blocks
        "model_type": "gemma3", "mm_tokens_per_image": 16, "image_token_id": 15999,
        "boi_token_id": 15998, "eoi_token_id": 15997,
        "text_config": {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
                        "sliding_window": 64, "query_pre_attn_scalar": 64,
                        "layer_types": ["sliding_attention", "full_attention"],
                        "vocab_size": 16000, "max_position_embeddings": 1024},
        "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 128,
                          "intermediate_size": 256, "num_hidden_layers": 2,
                          "num_attention_heads": 4, "image_size": 112, "patch_size": 14,
                          "vision_use_head": False},
    },
    "mllama": {  # Llama-3.2-Vision: tiled tower (local + gated global), cross-attention layers
        "model_type": "mllama", "architectures": ["MllamaForConditionalGeneration"],
        "image_token_index": 2048,
        "text_config": {"hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 4,
                        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 2048,
                        "max_position_embeddings": 2048, "cross_attention_layers": [1, 3],
                        "pad_token_id": 2047, "bos_token_id": 1, "eos_token_id": 2},
        "vision_config": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4,
                          "num_global_layers": 2, "attention_heads": 4, "image_size": 112,
                          "patch_size": 14, "vision_output_dim": 384,
                          "intermediate_layers_indices": [1, 3]},
    },
}  # fmt: skip
# the same blocks under a 512-token vocabulary: the logits no longer hold the peak, so the
# blocks' own ledgers (Cohere's Python LayerNorm, GLM-4's and OLMo-2's extra norms) show
for _fam in ("cohere", "glm4", "olmo2"):
    FAMILIES[f"{_fam}_v512"] = {**FAMILIES[_fam], "vocab_size": 512}
# ... and at long sequences, where eager / math attention's B x heads x S^2 tensors hold the peak
for _fam in ("llama", "qwen2", "gemma2", "modernbert"):
    FAMILIES[f"{_fam}_v512"] = {**FAMILIES[_fam], "vocab_size": 512}

# (family, method, dtype, mixed_precision, grad_ckpt, attn, optim, optim_impl, batch, seq)
_ROWS: list[tuple[str, str, str, str, bool, str, str, str, int, int]] = [
    ("gpt2", "full", "fp32", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("gpt2", "full", "fp32", "no", False, "eager", "adamw_torch", "for-loop", 2, 256),
    ("gpt2", "full", "fp32", "bf16", True, "sdpa", "adamw_torch_fused", "fused", 2, 256),
    ("gpt2", "lora", "fp32", "no", False, "eager", "adamw_torch", "foreach", 4, 128),
    ("gpt2", "lora", "fp32", "bf16", True, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("gpt2", "full", "bf16", "no", False, "flash_attention_2", "sgd", "foreach", 2, 256),
    ("gpt2", "full", "fp32", "fp16", False, "sdpa", "adamw_torch", "foreach", 2, 128),
    ("gpt2", "full", "fp32", "no", True, "eager", "adafactor", "default", 2, 256),
    ("gpt2", "qlora", "bf16", "no", True, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("llama", "full", "fp32", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("llama", "full", "bf16", "no", False, "sdpa", "adamw_torch", "fused", 2, 256),
    ("llama", "full", "fp32", "bf16", False, "eager", "adamw_torch", "foreach", 2, 128),
    ("llama", "full", "fp32", "bf16", True, "flash_attention_2", "adamw_torch", "fused", 2, 256),
    ("llama", "lora", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("llama", "lora", "fp32", "no", True, "eager", "adamw_torch", "foreach", 1, 256),
    ("llama", "lora", "bf16", "no", True, "flash_attention_2", "adamw_torch", "foreach", 4, 128),
    ("llama", "full", "bf16", "no", True, "sdpa", "sgd", "foreach", 2, 256),
    ("llama", "full", "fp32", "no", False, "sdpa", "adafactor", "default", 1, 256),
    ("llama", "qlora", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("mistral", "full", "fp32", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("mistral", "full", "bf16", "no", False, "flash_attention_2", "adamw_torch", "fused", 2, 256),
    ("mistral", "full", "fp32", "bf16", True, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("mistral", "lora", "bf16", "no", False, "eager", "adamw_torch", "foreach", 2, 128),
    ("mistral", "lora", "fp32", "bf16", True, "sdpa", "adamw_torch", "fused", 2, 256),
    ("mistral", "full", "fp32", "no", True, "eager", "sgd", "foreach", 2, 256),
    ("qwen2", "full", "fp32", "no", False, "eager", "adamw_torch", "foreach", 2, 128),
    ("qwen2", "full", "bf16", "no", True, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("qwen2", "full", "fp32", "bf16", False, "sdpa", "adamw_torch", "for-loop", 2, 256),
    ("qwen2", "lora", "bf16", "no", True, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("qwen2", "lora", "fp32", "no", False, "flash_attention_2", "adamw_torch", "foreach", 2, 256),
    ("qwen2", "full", "bf16", "no", False, "eager", "adafactor", "default", 2, 128),
    ("phi", "full", "fp32", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("phi", "full", "fp32", "bf16", True, "sdpa", "adamw_torch", "fused", 2, 256),
    ("phi", "lora", "fp32", "no", False, "eager", "adamw_torch", "foreach", 2, 256),
    ("phi", "full", "bf16", "no", True, "eager", "sgd", "foreach", 2, 128),
    ("phi", "lora", "bf16", "no", False, "flash_attention_2", "adamw_torch", "foreach", 2, 256),
    ("gemma", "full", "fp32", "no", False, "eager", "adamw_torch", "foreach", 2, 128),
    ("gemma", "full", "bf16", "no", False, "sdpa", "adamw_torch", "fused", 2, 256),
    ("gemma", "full", "fp32", "bf16", True, "sdpa", "adamw_torch", "foreach", 1, 256),
    ("gemma", "lora", "bf16", "no", True, "eager", "adamw_torch", "foreach", 2, 256),
    ("gemma", "lora", "fp32", "fp16", False, "sdpa", "adamw_torch", "foreach", 2, 128),
    ("opt", "full", "fp32", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("opt", "full", "fp32", "no", True, "eager", "adamw_torch", "for-loop", 2, 256),
    ("opt", "full", "fp32", "bf16", False, "sdpa", "adafactor", "default", 2, 256),
    ("opt", "lora", "fp32", "no", True, "sdpa", "adamw_torch", "foreach", 4, 128),
    ("opt", "full", "bf16", "no", False, "flash_attention_2", "sgd", "foreach", 2, 256),
    # few tokens: the optimizer step holds the peak; long sequences: attention dominates
    ("llama", "full", "fp32", "no", False, "sdpa", "adamw_torch", "foreach", 1, 64),
    ("mistral", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 1, 64),
    ("qwen2", "full", "fp32", "no", True, "sdpa", "adamw_torch", "fused", 1, 64),
    ("gemma", "full", "fp16", "no", False, "eager", "adamw_torch", "foreach", 1, 128),
    ("gpt2", "full", "fp32", "no", False, "eager", "adamw_torch", "foreach", 1, 512),
    ("opt", "lora", "bf16", "no", False, "eager", "adamw_torch", "foreach", 2, 512),
    # MoE (router, grouped expert GEMMs, weighted combine)
    ("mixtral", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("mixtral", "full", "bf16", "no", True, "sdpa", "adamw_torch", "foreach", 4, 128),
    ("mixtral", "full", "fp32", "bf16", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("mixtral", "full", "fp32", "bf16", True, "sdpa", "adamw_torch", "fused", 1, 512),
    ("mixtral", "lora", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("mixtral", "lora", "bf16", "no", True, "sdpa", "adamw_torch", "foreach", 4, 128),
    ("mixtral", "full", "fp32", "no", False, "sdpa", "adamw_torch", "foreach", 1, 256),
    # per-layer attention kinds and layer schedules (issue 9): sliding-window, local/global
    # and chunked layers (an explicit mask: SDPA's memory-efficient kernel), MLA, NoPE, sinks,
    # soft-capping (eager), Falcon's always-built mask, dense-then-MoE schedules
    ("qwen3", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("qwen3", "lora", "bf16", "no", True, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("qwen3", "full", "fp32", "bf16", False, "eager", "adamw_torch", "foreach", 2, 128),
    ("qwen3_moe", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("qwen3_moe", "lora", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("qwen3_moe", "full", "bf16", "no", True, "sdpa", "adamw_torch", "foreach", 4, 128),
    ("deepseek_v3", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("deepseek_v3", "lora", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("deepseek_v3", "full", "bf16", "no", False, "eager", "adamw_torch", "foreach", 2, 128),
    ("gemma2", "full", "bf16", "no", False, "eager", "adamw_torch", "foreach", 2, 256),
    ("gemma2", "lora", "bf16", "no", True, "eager", "adamw_torch", "foreach", 2, 256),
    ("gemma2", "full", "fp32", "bf16", False, "eager", "adamw_torch", "foreach", 1, 256),
    ("gemma3_text", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("gemma3_text", "lora", "bf16", "no", False, "eager", "adamw_torch", "foreach", 2, 128),
    ("gemma3_text", "full", "fp32", "bf16", True, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("falcon", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("falcon", "full", "fp32", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("falcon", "lora", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 4, 128),
    ("falcon", "full", "bf16", "no", False, "eager", "adamw_torch", "foreach", 2, 128),
    ("llama4_text", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("llama4_text", "lora", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("gpt_oss", "full", "bf16", "no", False, "eager", "adamw_torch", "foreach", 2, 256),
    ("gpt_oss", "lora", "bf16", "no", False, "eager", "adamw_torch", "foreach", 2, 256),
    ("olmoe", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("olmoe", "lora", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("qwen2_moe", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("qwen2_moe", "lora", "bf16", "no", True, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("phimoe", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("phimoe", "lora", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    # long sequences: attention holds the peak (Falcon's masked math kernel, Gemma-3's local
    # layers on the memory-efficient kernel with a mask)
    ("falcon", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 1, 1024),
    ("gemma3_text", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 1, 1024),
    ("gemma2", "lora", "bf16", "no", False, "eager", "adamw_torch", "foreach", 1, 1024),
    ("modernbert", "lora", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 1024),
    ("modernbert", "lora", "bf16", "no", True, "sdpa", "adamw_torch", "foreach", 2, 1024),
    # SSM and hybrid (the sequential selective scan keeps T x I x N fp32 tensors per layer)
    ("mamba", "full", "fp32", "no", False, "sdpa", "adamw_torch", "foreach", 2, 128),
    ("mamba", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 128),
    ("mamba", "lora", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 64),
    ("mamba", "full", "fp32", "bf16", True, "sdpa", "adamw_torch", "foreach", 2, 64),
    ("mamba2", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 128),
    ("mamba2", "full", "fp32", "no", False, "sdpa", "adamw_torch", "foreach", 2, 128),
    ("mamba2", "lora", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("mamba2", "lora", "fp32", "no", True, "sdpa", "adamw_torch", "foreach", 2, 96),
    ("jamba", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 128),
    ("jamba", "lora", "bf16", "no", True, "sdpa", "adamw_torch", "foreach", 2, 64),
    ("jamba", "full", "fp32", "bf16", False, "sdpa", "adamw_torch", "fused", 1, 64),
    # encoder-decoder: source seq_len, target _TARGET_LEN[family] tokens
    ("t5", "full", "fp32", "no", False, "sdpa", "adamw_torch", "foreach", 4, 256),
    ("t5", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("t5", "lora", "fp32", "no", False, "sdpa", "adamw_torch", "foreach", 2, 128),
    ("mt5", "full", "fp32", "no", False, "sdpa", "adamw_torch", "foreach", 4, 256),
    ("mt5", "lora", "fp32", "bf16", True, "sdpa", "adamw_torch", "foreach", 4, 256),
    ("mt5", "full", "bf16", "no", False, "eager", "adamw_torch", "foreach", 4, 256),
    # encoder with its masked-LM head (ModernBertForMaskedLM): global/local (window 128)
    # attention (the sliding mask from s64 on), GeGLU MLP, no biases, tied decoder
    ("modernbert", "full", "fp32", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("modernbert", "full", "fp32", "bf16", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("modernbert", "lora", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("modernbert", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 1, 512),
    ("modernbert", "full", "fp32", "bf16", True, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("modernbert", "full", "bf16", "no", False, "eager", "adamw_torch", "foreach", 2, 256),
    # below the half window (local_attention // 2 = 64) transformers skips the sliding mask
    ("modernbert", "full", "fp32", "no", False, "sdpa", "adamw_torch", "foreach", 4, 48),
    # BERT/RoBERTa with their masked-LM heads (post-LN encoders, absolute positions, dropout)
    ("bert", "full", "fp32", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("bert", "lora", "fp32", "bf16", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("roberta", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("roberta", "full", "fp32", "bf16", True, "sdpa", "adamw_torch", "foreach", 2, 256),
    # issue 9's remaining decoder families: MLA without q compression (deepseek_v2), post-norm
    # q/k-normed (olmo2), scalar multipliers (granite), parallel block (cohere), four norms
    # (glm4), biased GELU MLP (starcoder2), NoPE layers (smollm3)
    ("deepseek_v2", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("deepseek_v2", "lora", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("deepseek_v2", "full", "fp32", "bf16", True, "sdpa", "adamw_torch", "foreach", 2, 128),
    ("olmo2", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("olmo2", "lora", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("olmo2", "full", "fp32", "bf16", True, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("granite", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("granite", "lora", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("granite", "full", "fp32", "bf16", True, "eager", "adamw_torch", "foreach", 2, 128),
    ("cohere", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("cohere", "lora", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("cohere", "full", "fp32", "bf16", True, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("glm4", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("glm4", "lora", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("glm4", "full", "fp32", "bf16", True, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("starcoder2", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("starcoder2", "lora", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("starcoder2", "full", "fp32", "bf16", True, "eager", "adamw_torch", "foreach", 2, 128),
    ("smollm3", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("smollm3", "lora", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("smollm3", "full", "fp32", "bf16", True, "sdpa", "adamw_torch", "foreach", 2, 256),
    # small vocabulary: the blocks' own norms hold a visible share of the peak
    ("cohere_v512", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("glm4_v512", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("glm4_v512", "lora", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    ("olmo2_v512", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256),
    # small vocabulary, long sequence: eager attention (and SDPA's math kernel for fp32 GQA)
    # holds the peak -- the softmax's fp32 output, copy and gradients, the eager float masks
    ("llama_v512", "full", "bf16", "no", False, "eager", "adamw_torch", "foreach", 2, 1024),
    ("llama_v512", "full", "bf16", "no", True, "eager", "adamw_torch", "foreach", 2, 1024),
    ("llama_v512", "full", "fp32", "no", False, "eager", "adamw_torch", "foreach", 2, 1024),
    ("llama_v512", "full", "fp32", "bf16", False, "eager", "adamw_torch", "foreach", 2, 1024),
    ("llama_v512", "lora", "bf16", "no", False, "eager", "adamw_torch", "foreach", 2, 1024),
    ("modernbert_v512", "full", "bf16", "no", False, "eager", "adamw_torch", "foreach", 2, 1024),
    ("modernbert_v512", "full", "bf16", "no", True, "eager", "adamw_torch", "foreach", 2, 1024),
    ("gemma2_v512", "full", "bf16", "no", False, "eager", "adamw_torch", "foreach", 1, 1024),
    ("gemma2_v512", "lora", "bf16", "no", True, "eager", "adamw_torch", "foreach", 1, 1024),
    ("qwen2_v512", "full", "fp32", "no", False, "sdpa", "adamw_torch", "foreach", 2, 1024),
    ("qwen2_v512", "full", "fp32", "no", True, "sdpa", "adamw_torch", "foreach", 2, 1024),
    ("glm4_v512", "full", "fp32", "no", False, "sdpa", "adamw_torch", "foreach", 2, 1024),
    # small vocabulary, long sequence, SDPA with checkpointing: the checkpointed block's
    # forward working set and the recomputed MLP's backward moment hold the peak
    ("llama_v512", "full", "bf16", "no", True, "sdpa", "adamw_torch", "foreach", 2, 1024),
    ("llama_v512", "lora", "bf16", "no", True, "sdpa", "adamw_torch", "foreach", 2, 1024),
    ("modernbert_v512", "full", "bf16", "no", True, "sdpa", "adamw_torch", "foreach", 2, 1024),
    ("llama_v512", "full", "fp32", "no", True, "sdpa", "adamw_torch", "foreach", 2, 1024),
]

# vision-language rows: (row, images per row, --image-size, --freeze-vision); seq is the text
_VLM_ROWS: list[tuple[tuple[str, str, str, str, bool, str, str, str, int, int], int, str | None,
                      bool]] = [
    (("qwen2_5_vl", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 128),
     2, "224x224", False),
    (("qwen2_5_vl", "lora", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 128),
     2, "224x224", False),
    (("qwen2_5_vl", "full", "fp32", "no", True, "sdpa", "adamw_torch", "foreach", 1, 128),
     1, "280x336", False),
    (("qwen2_5_vl", "lora", "bf16", "no", True, "sdpa", "adamw_torch", "foreach", 2, 128),
     2, "448x448", False),
    (("qwen3_vl", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 128),
     1, "256x256", False),
    (("qwen3_vl", "lora", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 128),
     1, "256x256", False),
    (("llava", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 128),
     1, None, False),
    (("llava", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 128),
     1, None, True),
    (("llava", "lora", "fp32", "no", True, "sdpa", "adamw_torch", "foreach", 2, 128),
     2, None, False),
    (("gemma3", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 128),
     1, None, False),
    (("gemma3", "lora", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 128),
     2, None, False),
    (("gemma3", "full", "bf16", "no", True, "sdpa", "adamw_torch", "foreach", 2, 64),
     4, None, True),
    # short text, several images: the tower holds most of the activations
    (("llava", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 32),
     4, None, False),
    (("gemma3", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 1, 32),
     4, None, False),
    (("qwen3_vl", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 1, 32),
     2, "512x512", False),
    # Llama-3.2-Vision: 4 tiles of 112 px per image (padded), cross-attention layers 1 and 3,
    # a 2048-token vocabulary: the tower and the cross-attention K/V hold most activations,
    # and the loss still peaks above the first block's backward (at 512 the two tie within
    # 0.3 MiB and the step walk's block backward is ~0.6 MiB high: see docs/model.md)
    (("mllama", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 128),
     1, "112x224", False),
    (("mllama", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 64),
     2, "224x224", False),
    (("mllama", "lora", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 64),
     1, None, False),
    (("mllama", "full", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 64),
     1, None, True),
    (("mllama", "full", "fp32", "no", True, "sdpa", "adamw_torch", "foreach", 1, 64),
     2, None, False),
    (("mllama", "lora", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 64),
     2, "1080x1920", True),
    (("mllama", "lora", "bf16", "no", True, "sdpa", "adamw_torch", "foreach", 2, 64),
     1, None, True),
]  # fmt: skip

_NO_PEFT_DEFAULT = {
    "mixtral": ("q_proj", "v_proj"), "qwen3_moe": ("q_proj", "v_proj"),
    "deepseek_v3": ("q_b_proj", "kv_b_proj"), "llama4_text": ("q_proj", "v_proj"),
    "gpt_oss": ("q_proj", "v_proj"), "olmoe": ("q_proj", "v_proj"),
    "qwen2_moe": ("q_proj", "v_proj"), "phimoe": ("q_proj", "v_proj"),
    "deepseek_v2": ("q_proj", "kv_b_proj"), "olmo2": ("q_proj", "v_proj"),
    "granite": ("q_proj", "v_proj"), "cohere": ("q_proj", "v_proj"),
    "glm4": ("q_proj", "v_proj"), "starcoder2": ("q_proj", "v_proj"),
    "smollm3": ("q_proj", "v_proj"), "modernbert": ("Wqkv", "Wo"),
    "glm4_v512": ("q_proj", "v_proj"),
    "qwen2_5_vl": ("q_proj", "v_proj"),
    "qwen3_vl": ("q_proj", "v_proj"), "llava": ("q_proj", "v_proj"),
    "gemma3": ("q_proj", "v_proj"), "mllama": ("q_proj", "v_proj"),
}  # fmt: skip

# LoRA without dropout: CPU-traced families whose adapters read many tokens. A CPU dropout
# (aten ``_dropout``: ``input * noise``) keeps a full-size noise tensor in the input's dtype
# (fp32: PEFT casts to the adapter's dtype first) where CUDA's fused ``native_dropout`` keeps a
# 1-byte mask; Llama-3.2-Vision's tower adapts q/v in every layer over 4 padded tiles and its
# cross-attention v_proj over every image position, so the CPU artifact would be ~10 % of the
# row rather than the ~1 % of the other VLM LoRA rows
_LORA_NO_DROPOUT = {"mllama"}

# PEFT refuses LoRA on Mamba's out_proj and conv1d (tuners_utils._check_lora_target_modules_mamba)
_LORA_TARGETS = {
    "mamba": ("in_proj", "x_proj"), "mamba2": ("in_proj",),
    "jamba": ("q_proj", "v_proj", "in_proj"),
}  # fmt: skip

# decoder (target) length of the encoder-decoder families' scenarios
_TARGET_LEN = {"t5": 64, "mt5": 48}

_ABBR = {
    "sdpa": "sdpa", "eager": "eager", "flash_attention_2": "fa2",
    "adamw_torch": "adamw", "adamw_torch_fused": "adamwfused", "sgd": "sgd",
    "adafactor": "adafactor",
}  # fmt: skip


def _make(
    row: tuple[str, str, str, str, bool, str, str, str, int, int],
    images: int = 0,
    image_size: str | None = None,
    freeze: bool = False,
) -> Scenario:
    family, method, dtype, mp, ckpt, attn, optim, impl, batch, seq = row
    parts = [family, method, dtype if mp == "no" else f"amp{mp}", "ckpt" if ckpt else "nockpt",
             _ABBR[attn], _ABBR[optim] + ("" if impl in ("default", "fused") else f"-{impl}"),
             f"b{batch}s{seq}"]  # fmt: skip
    extra: dict[str, Any] = {}
    if family in _TARGET_LEN:
        extra["target_len"] = _TARGET_LEN[family]
        parts[-1] += f"t{_TARGET_LEN[family]}"
    if method == "lora":
        extra["lora"] = {"r": 8, "alpha": 16, "dropout": 0.05}
        if family in _LORA_NO_DROPOUT:
            extra["lora"]["dropout"] = 0.0
            parts[1] += "-d0"
        if family in _NO_PEFT_DEFAULT:  # PEFT has no default targets for these model types
            extra["lora"]["targets"] = list(_NO_PEFT_DEFAULT[family])
        elif family in _LORA_TARGETS:  # PEFT refuses its defaults on these (Mamba layers)
            extra["lora"]["targets"] = list(_LORA_TARGETS[family])
    elif method == "qlora":
        extra["qlora"] = {"r": 8, "alpha": 16, "dropout": 0.05}
        extra["quant"] = "nf4"
    if images:
        extra["images"] = images
        parts[-1] += f"i{images}" + (f"x{image_size}" if image_size else "")
        if image_size:
            extra["image_size"] = image_size
        if freeze:
            extra["freeze_vision"] = True
            parts[1] += "-frozenvision"
    request = EstimateRequest(
        model=dict(FAMILIES[family]), batch_size=batch, seq_len=seq, dtype=dtype,
        mixed_precision=mp, optim=optim, grad_ckpt=ckpt, attn=attn, **extra,
    )  # fmt: skip
    return Scenario(id="-".join(parts), request=request, steps=2, optim_impl=impl)


# gradient accumulation: (row, grad_accum); the Trainer's step over grad_accum micro-batches
# (loss / grad_accum, gradients accumulated, one optimizer step), id suffix -ga<N>
_ACCUM_ROWS: list[tuple[tuple[str, str, str, str, bool, str, str, str, int, int], int]] = [
    (("llama", "full", "fp32", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256), 2),
    (("gpt2", "full", "fp32", "bf16", True, "sdpa", "adamw_torch", "foreach", 2, 256), 3),
    (("llama", "lora", "bf16", "no", False, "sdpa", "adamw_torch", "foreach", 2, 256), 2),
    (("mistral", "full", "bf16", "no", True, "sdpa", "adamw_torch", "foreach", 2, 256), 4),
]  # fmt: skip


def _make_accum(row: tuple[str, str, str, str, bool, str, str, str, int, int], ga: int) -> Scenario:
    base = _make(row)
    request = base.request.model_copy(update={"grad_accum": ga})
    return Scenario(id=f"{base.id}-ga{ga}", request=request, steps=2, optim_impl=base.optim_impl)


def scenarios() -> list[Scenario]:
    """Every scenario of the traced grid, in a fixed order."""
    return (
        [_make(row) for row in _ROWS]
        + [_make_accum(r, ga) for r, ga in _ACCUM_ROWS]
        + [_make(*row) for row in _VLM_ROWS]
    )


def scenario(scenario_id: str) -> Scenario:
    """Find the grid scenario with this id (``KeyError`` lists the ids when it is not found)."""
    for s in scenarios():
        if s.id == scenario_id:
            return s
    raise KeyError(f"no grid scenario {scenario_id!r}; ids: {', '.join(s.id for s in scenarios())}")
