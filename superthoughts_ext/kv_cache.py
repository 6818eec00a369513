"""Static KV caches for decoding, with an attention window.

A static cache keeps every buffer at its final size, which is what lets a decode step be
compiled and captured in a CUDA graph. Its price: transformers' StaticLayer hands attention the
whole buffer (and a mask as wide), so every step attends over max_positions columns, most of
them not yet written and masked out. A `WindowedStaticLayer` hands over only its first
`window` columns instead. Prefill and every decode step set the window from the width of their
attention mask (decode_loop.py). Eager and compiled steps read the positions written so far
(the demo's models decode 1.1-1.5x faster on the CPU for it; a compiled step sees the width
as a symbolic size, so one compiled graph serves every window). CUDA-graphed steps read up to
the end of one of a few spans of the cache, one graph each (decode_loop.graph_window).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel, StaticCache, masking_utils
from transformers.cache_utils import StaticLayer

# transformers 5.24 renamed the KV-cache argument of model / layer forwards and of the mask
# builders from `past_key_values` to `cache` (the old name warns on every call and goes in
# 5.40): callers pass `**{CACHE_ARG: cache}`, the name the installed version takes.
CACHE_ARG = "cache" if "cache" in inspect.signature(masking_utils.create_causal_mask).parameters else "past_key_values"


class WindowedStaticLayer(StaticLayer):
    """A StaticLayer of `max_positions` positions whose attention reads its first `window` only
    (None: all of them).

    Writes are unchanged (the new states land at the layer's device-side write position); the
    window must cover every position written so far, including the ones being written. The
    buffers hold one spare position past `max_positions`, never written nor read, so that the
    keys and values handed over are always a strided view: a view of the whole buffer would be
    contiguous, and a compiled step branches on that (one more compile for the last window).
    """

    window: int | None = None

    def __init__(self, max_positions: int) -> None:
        super().__init__(max_cache_len=max_positions + 1)
        self.max_positions = max_positions

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        keys, values = super().update(key_states, value_states, *args, **kwargs)
        window = self.max_positions if self.window is None else self.window
        return keys[:, :, :window], values[:, :, :window]

    def get_mask_sizes(self, *args, **kwargs) -> tuple[int, int]:
        _, kv_offset = super().get_mask_sizes(*args, **kwargs)
        return (self.max_positions if self.window is None else self.window), kv_offset


def other_value_width(config) -> str | None:
    """Why the static cache cannot hold `config`'s keys and values (None when it can): it holds
    one width per head, MiMo-V2's values are wider than its keys. head_dim is read only where
    v_head_dim is set (Gemma 4 refuses to give one head_dim)."""
    value_dim = getattr(config, "v_head_dim", None)
    head_dim = getattr(config, "head_dim", None) if value_dim is not None else None
    if head_dim is None or value_dim == head_dim:
        return None
    return f"keys and values of other widths ({config.model_type}, head_dim={head_dim}, v_head_dim={value_dim})"


def static_cache(config, batch_size: int, max_positions: int, device: torch.device,
                 dtype: torch.dtype) -> StaticCache:
    """A transformers StaticCache for `config` whose full-attention layers are windowed."""
    if (problem := other_value_width(config)) is not None:  # the first cache write failed on the shapes
        raise NotImplementedError(f"generate: models with {problem} are not supported (the static KV cache holds "
                                  "one width)")
    cache = StaticCache(config=config, max_cache_len=max_positions)
    cache.layers = [WindowedStaticLayer(layer.max_cache_len) if type(layer) is StaticLayer else layer
                    for layer in cache.layers]
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    # Allocated now, not lazily at the first update, so every buffer exists before a CUDA
    # graph is captured and the batch size is pinned.
    cache.early_initialization(batch_size, heads, head_dim, dtype, device)
    return cache


def windowed_layers(cache: StaticCache | SuperThoughtsCache | None) -> list[WindowedStaticLayer]:
    """The windowed layers of a cache from `static_cache`, or of both caches of a
    SuperThoughtsCache (none for None)."""
    caches = (cache.backbone, cache.mtp) if isinstance(cache, SuperThoughtsCache) else (cache,)
    return [layer for c in caches for layer in getattr(c, "layers", ()) if isinstance(layer, WindowedStaticLayer)]


def set_window(cache: StaticCache | SuperThoughtsCache | None, window: int | None) -> None:
    """Attention over the first `window` positions of every windowed layer of `cache` (None: all)."""
    for layer in windowed_layers(cache):
        layer.window = window


def mark_positions_dynamic(cache: StaticCache | SuperThoughtsCache | None) -> None:
    """For torch.compile: the position dim of every windowed layer's buffers becomes a symbolic
    size (steps read only their window of it, so its length never matters to the code)."""
    for layer in windowed_layers(cache):
        torch._dynamo.mark_dynamic(layer.keys, 2)
        torch._dynamo.mark_dynamic(layer.values, 2)


@dataclass
class SuperThoughtsCache:
    """Static decode state: the backbone's KV cache and the MTP's (None for the MLP head).

    Opaque to callers: make it with `SuperThoughtsForCausalLM.new_cache` and hand it back to
    `hidden_states` step after step. Each transformers StaticCache tracks its own write
    position on the device, so no host-side counter is needed between steps.
    """

    backbone: StaticCache
    mtp: StaticCache | None
    batch_size: int
    max_positions: int

    @classmethod
    def create(cls, backbone: PreTrainedModel, mtp: nn.Module, batch_size: int, max_positions: int,
               device: torch.device, dtype: torch.dtype) -> SuperThoughtsCache:
        if batch_size < 1 or max_positions < 1:
            raise ValueError(f"new_cache: batch_size and max_positions must be >= 1, got {batch_size}, {max_positions}")
        return cls(
            backbone=static_cache(backbone.config, batch_size, max_positions, device, dtype),
            mtp=mtp.new_cache(batch_size, max_positions, device, dtype),
            batch_size=batch_size,
            max_positions=max_positions,
        )

    def reset(self) -> None:
        """Empties both caches (positions back to 0) without reallocating."""
        self.backbone.reset()
        if self.mtp is not None:
            self.mtp.reset()
