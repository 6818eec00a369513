"""The SuperThoughts model's dataclasses: `SuperThoughtsConfig`, the "superthoughts" section of a
checkpoint's config.json (checked on construction), and `SuperThoughtsOutput`, what
`SuperThoughtsForCausalLM.forward` returns.

`superthoughts_ext.modeling` re-exports both; import them from there, beside the model.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from numbers import Integral, Real
from typing import Any

import torch
from transformers.utils import ModelOutput

__all__ = ["SuperThoughtsConfig", "SuperThoughtsOutput"]

COMPRESSOR_TYPES = ("linear", "mlp")
MTP_TYPES = ("decoder", "mlp")
# What the MTP head mixes with h: "unit", the position's own input z (the method's design);
# "next_token", E[t] of the next position's first token (a_{j+1}, the main head's token at
# decode time), as DeepSeek-V3's MTP module is fed.
MTP_INPUTS = ("unit", "next_token")


@dataclass
class SuperThoughtsConfig:
    """SuperThoughts fields, stored under "superthoughts" in the checkpoint's config.json."""

    compressor_type: str = "linear"  # "linear" | "mlp"
    mtp_type: str = "decoder"  # "decoder" | "mlp"
    lambda_mtp: float = 1.0  # weight of the MTP cross-entropy
    rho_max: float = 0.25  # pad-split fraction is drawn from U[0, rho_max] per sequence
    pad_token_id: int | None = None  # None: the backbone config's pad, else its eos
    distill_weight: float = 0.0  # weight of the stage-1 KL toward a frozen teacher
    threshold: float = 0.999  # MTP confidence needed to keep the second token at decode time
    threshold_main: float = 0.0  # main-head confidence needed as well
    mtp_input: str = "unit"  # "unit" | "next_token" (MTP_INPUTS); checkpoints without it: "unit"

    def __post_init__(self) -> None:
        if self.compressor_type not in COMPRESSOR_TYPES:
            raise ValueError(f"SuperThoughtsConfig: compressor_type must be 'linear' or 'mlp', got {self.compressor_type!r}")
        if self.mtp_type not in MTP_TYPES:
            raise ValueError(f"SuperThoughtsConfig: mtp_type must be 'decoder' or 'mlp', got {self.mtp_type!r}")
        if self.mtp_input not in MTP_INPUTS:
            raise ValueError(f"SuperThoughtsConfig: mtp_input must be 'unit' or 'next_token', got {self.mtp_input!r}")
        for name, low, high in (("lambda_mtp", 0.0, None), ("rho_max", 0.0, 1.0), ("distill_weight", 0.0, None),
                                ("threshold", 0.0, 1.0), ("threshold_main", 0.0, 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Real):  # numpy scalars are Reals too
                raise ValueError(f"SuperThoughtsConfig: {name} must be a number, got {type(value).__name__} {value!r}")
            # A plain float: the config is saved as JSON.
            setattr(self, name, value := float(value))
            if not math.isfinite(value) or value < low or (high is not None and value > high):
                bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
                raise ValueError(f"SuperThoughtsConfig: {name} must be {bound}, got {value!r}")
        if self.pad_token_id is not None:
            if isinstance(self.pad_token_id, bool) or not isinstance(self.pad_token_id, Integral):
                raise ValueError(f"SuperThoughtsConfig: pad_token_id must be an int, got "
                                 f"{type(self.pad_token_id).__name__} {self.pad_token_id!r}")
            self.pad_token_id = int(self.pad_token_id)
            if self.pad_token_id < 0:
                raise ValueError(f"SuperThoughtsConfig: pad_token_id must be a non-negative int, got {self.pad_token_id}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SuperThoughtsConfig:
        """Builds a config, rejecting unknown field names (typos must not be silently ignored)."""
        if not isinstance(values, dict):
            raise ValueError(f"SuperThoughtsConfig: expected a mapping of field names to values, "
                             f"got {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"SuperThoughtsConfig: unknown field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict (the "superthoughts" section of config.json). mtp_input is left out
        at its default "unit" (read back as "unit"): releases before it refuse unknown fields, and
        the design's model stays loadable by them."""
        values = asdict(self)
        if values["mtp_input"] == "unit":
            del values["mtp_input"]
        return values

    def get_text_config(self, *args: Any, **kwargs: Any) -> SuperThoughtsConfig:
        """Itself. transformers' Trainer (5.24+) reads and aligns the special token ids of
        `model.config.get_text_config()`, a PretrainedConfig method; train_utils.record_special_tokens
        has written the tokenizer's ids here already, so it finds nothing to change."""
        return self


@dataclass
class SuperThoughtsOutput(ModelOutput):
    """Training forward output; logits are [B, T, V] (None under `return_logits=False`), losses are
    scalars (None when not computed)."""

    loss: torch.Tensor | None = None
    loss_main: torch.Tensor | None = None
    loss_mtp: torch.Tensor | None = None
    loss_distill: torch.Tensor | None = None
    logits_main: torch.Tensor | None = None
    logits_mtp: torch.Tensor | None = None
