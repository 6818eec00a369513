"""Grouped-query attention for one-position decode steps, without copying the KV cache.

transformers' SDPA attention repeats every key/value head for its query heads (`repeat_kv`)
whenever there is an attention mask, and a static-cache decode step always has one. That
materialises the whole cache num_key_value_groups times per layer per step: at batch 32 on the
CPU it is most of a small model's step, and its tens of megabytes of temporaries are paged in
afresh whenever malloc has handed them back to the OS (2-4x swings between identical runs).

With one query position the same result comes from folding the query heads of a group into
the query-length axis: query [B, Hq, 1, D] -> [B, Hkv, G, D] against the unrepeated cache
[B, Hkv, L, D], the mask [B, 1, 1, L] broadcast over the G rows. Every query head still
attends to exactly its own key/value head; nothing is copied. Prompts (more than one position)
take transformers' SDPA path unchanged.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "superthoughts_sdpa"


def folded_gqa_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                    is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers attention function: SDPA with the query heads of a KV group folded into
    the query axis for single-position steps; anything else goes to transformers' SDPA."""
    batch, q_heads, q_len, head_dim = query.shape
    kv_heads = key.shape[1]
    # A mask per head (Doge's [B, H, 1, L]) does not broadcast over the folded group.
    per_head_mask = attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[1] != 1
    if q_len != 1 or q_heads == kv_heads or per_head_mask or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    group = q_heads // kv_heads  # query head h reads key/value head h // group, as repeat_kv lays it out
    folded = query.reshape(batch, kv_heads, group, head_dim)
    mask = None if attention_mask is None else attention_mask.expand(batch, 1, group, attention_mask.shape[-1])
    out = torch.nn.functional.scaled_dot_product_attention(folded, key, value, attn_mask=mask, dropout_p=dropout,
                                                           scale=scaling)
    return out.reshape(batch, q_heads, 1, head_dim).transpose(1, 2).contiguous(), None


# The mask function must be registered under the same name: transformers builds no mask at all
# for attention implementations it has no mask function for.
AttentionInterface.register(NAME, folded_gqa_sdpa)
AttentionMaskInterface.register(NAME, sdpa_mask)


def folded_by_default(device: torch.device) -> bool:
    """On for CPU decoding. On GPUs transformers' path stays until this one is measured there;
    SUPERTHOUGHTS_FOLDED_GQA=1 turns it on for that measurement (benchmarks/gpu/session.sh)."""
    return device.type == "cpu" or os.environ.get("SUPERTHOUGHTS_FOLDED_GQA") == "1"


@contextlib.contextmanager
def folded_gqa_decoding(model: torch.nn.Module, enabled: bool = True) -> Iterator[None]:
    """Runs the block with every SDPA attention in `model` on folded_gqa_sdpa: the configs of
    its modules (a SuperThoughts model's backbone and MTP decoder layer each have their own)
    are switched, and restored afterwards, also on errors. Layers read their config's
    implementation at call time."""
    # Llama-shaped models only (.model.layers): others may test for "sdpa" by name (Falcon took
    # its eager branch under this name, with an SDPA mask).
    enabled = enabled and all(hasattr(m, "layers") or hasattr(getattr(m, "model", None), "layers")
                              for m in model.modules() if isinstance(m, PreTrainedModel))
    configs = {id(c): c for m in model.modules() if (c := getattr(m, "config", None)) is not None}
    switched = [c for c in configs.values() if enabled and getattr(c, "_attn_implementation", None) == "sdpa"]
    for config in switched:
        config._attn_implementation = NAME
    try:
        yield
    finally:
        for config in switched:
            config._attn_implementation = "sdpa"
