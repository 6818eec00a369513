"""Model features whose decode step reads host-side state: no CUDA graph, no torch.compile.

A CUDA graph replays the kernels it captured: a Python value read while capturing is frozen
in it. torch.compile guards on such values: one that changes every step recompiles every step
(and `fullgraph=True` fails once the recompile limit is hit). Two transformers features keep
per-step state on the host:

- sliding-window attention: the sliding cache layer counts its length in a Python int
  (`cumulative_length_int`), from which it picks its write path and the mask its query
  offset. A replayed graph keeps the capture step's count: its mask hides every key written
  since, the step's own included.
- dynamic and longrope RoPE (`dynamic_rope_update`): every forward compares the largest
  position with a cached length on the host to re-plan the frequencies, a device sync that a
  graph capture refuses and a data-dependent branch that `fullgraph=True` cannot trace.

Such models decode eagerly (`generate`'s `"auto"` settings turn both off for them).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def sliding_window(configs: Iterable[Any]) -> int | None:
    """The window of the first config with sliding-attention layers, else None. A config slides
    where its layer_types say so, or everywhere (Mistral) when it lists none but sets a window."""
    for config in configs:
        window = getattr(config, "sliding_window", None)
        layer_types = getattr(config, "layer_types", None)
        slides = any(t == "sliding_attention" for t in layer_types) if layer_types else window is not None
        if slides and window is not None:
            return int(window)
    return None


def host_planned_rope(model: Any) -> str | None:
    """The rope type of a rotary embedding in `model` that re-plans its frequencies on the host
    every forward ("dynamic", "longrope", ...), else None."""
    for module in model.modules():
        rope_type = getattr(module, "rope_type", None)
        for name in rope_type.values() if isinstance(rope_type, dict) else (rope_type,):
            if isinstance(name, str) and ("dynamic" in name or name == "longrope"):
                return name
    return None


def host_state_reason(model: Any, configs: Iterable[Any]) -> str | None:
    """Why `model`'s decode step (the attention of `configs`) can be neither graphed nor
    compiled, or None when it can."""
    if (window := sliding_window(configs)) is not None:
        return (f"its sliding-window attention (window {window}) counts the cache length on the host, which a "
                "CUDA graph would freeze and torch.compile would recompile for at every step")
    if (rope := host_planned_rope(model)) is not None:
        return (f"its {rope!r} RoPE re-plans the frequencies on the host from every step's positions, which a CUDA "
                "graph cannot capture and torch.compile cannot trace")
    return None
