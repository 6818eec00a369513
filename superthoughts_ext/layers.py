"""SuperThoughts building blocks: the pair compressor C and the MTP head (decode caches: kv_cache.py),
and the MTP inputs of mtp_input "next_token" in training (its decoding: next_token_mtp.py).

Both blocks are built FROM a Hugging Face causal LM (they copy its norm / decoder-layer classes
and weights) but never modify it: the backbone stays a stock transformers model. Also here: the
training forward's attention mask for right padding. The chunked head losses live in
head_losses.py.
"""
from __future__ import annotations

import copy
import inspect

import torch
from torch import nn
from transformers import PreTrainedModel, StaticCache
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from superthoughts_ext.kv_cache import CACHE_ARG, static_cache


class LinearCompressor(nn.Module):
    """z = W [E[a]; E[b]] + bias with W [H, 2H] initialised to [I, I] and bias 0 (z = E[a] + E[b])."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(2 * hidden_size, hidden_size, bias=True)
        eye = torch.eye(hidden_size)
        with torch.no_grad():
            self.linear.weight.copy_(torch.cat([eye, eye], dim=1))
            self.linear.bias.zero_()

    @property
    def merge_weight(self) -> torch.Tensor:
        """W [H, 2H], as the fused step op takes it."""
        return self.linear.weight

    @property
    def merge_bias(self) -> torch.Tensor:
        """bias [H]."""
        return self.linear.bias

    def merge_pair(self, pair: torch.Tensor) -> torch.Tensor:
        """[..., 2H] concatenated embeddings [E[a]; E[b]] -> z [..., H]."""
        return self.linear(pair)

    def forward(self, emb_a: torch.Tensor, emb_b: torch.Tensor) -> torch.Tensor:
        """E[a] [..., H], E[b] [..., H] -> z [..., H]."""
        return self.merge_pair(torch.cat([emb_a, emb_b], dim=-1))


class MLPCompressor(nn.Module):
    """z = W2 SiLU(W1 [E[a]; E[b]] + b1) + b2 (2H -> 2H -> H), initialised to z = E[a] + E[b].

    The init uses the identity SiLU(u) - SiLU(-u) = u * (sigmoid(u) + sigmoid(-u)) = u: the
    first H hidden units compute s = E[a] + E[b], the other H compute -s, and W2 = [I, -I]
    subtracts them, so the block starts as the exact superposition the linear compressor starts
    from while every unit still has a non-zero gradient.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2 * hidden_size, 2 * hidden_size, bias=True)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(2 * hidden_size, hidden_size, bias=True)
        eye = torch.eye(hidden_size)
        with torch.no_grad():
            sum_rows = torch.cat([eye, eye], dim=1)  # [H, 2H]: s = E[a] + E[b]
            self.fc1.weight.copy_(torch.cat([sum_rows, -sum_rows], dim=0))
            self.fc1.bias.zero_()
            self.fc2.weight.copy_(torch.cat([eye, -eye], dim=1))
            self.fc2.bias.zero_()

    @property
    def merge_weight(self) -> None:
        """None: the fused op cannot apply an MLP, it returns the raw pair for `merge_pair`."""
        return None

    @property
    def merge_bias(self) -> None:
        return None

    def merge_pair(self, pair: torch.Tensor) -> torch.Tensor:
        """[..., 2H] concatenated embeddings [E[a]; E[b]] -> z [..., H]."""
        return self.fc2(self.act(self.fc1(pair)))

    def forward(self, emb_a: torch.Tensor, emb_b: torch.Tensor) -> torch.Tensor:
        """E[a] [..., H], E[b] [..., H] -> z [..., H]."""
        return self.merge_pair(torch.cat([emb_a, emb_b], dim=-1))


def build_compressor(kind: str, hidden_size: int) -> nn.Module:
    """The compressor named by `SuperThoughtsConfig.compressor_type` ("linear" | "mlp")."""
    if kind == "linear":
        return LinearCompressor(hidden_size)
    if kind == "mlp":
        return MLPCompressor(hidden_size)
    raise ValueError(f"compressor_type must be 'linear' or 'mlp', got {kind!r}")


class _MTPInput(nn.Module):
    """x = fc([RMSNorm(h); RMSNorm(z)]), fc: 2H -> H initialised to [I, 0] (x = RMSNorm(h)).

    Passing h through at init makes the MTP head start as "one more application of the
    backbone's last layer" on the backbone's own representation: its logits are a sensible
    distribution from step 0 instead of noise, so early MTP gradients do not wreck the shared
    lm_head, and the z half (zero at init, non-zero gradient) is learned from there.
    """

    def __init__(self, backbone: PreTrainedModel) -> None:
        super().__init__()
        config = backbone.config
        hidden = config.hidden_size
        norm_cls = type(backbone.model.norm)
        eps = getattr(config, "rms_norm_eps", 1e-6)
        try:
            self.norm_h = norm_cls(hidden, eps=eps)
            self.norm_z = norm_cls(hidden, eps=eps)
        except TypeError as exc:
            raise NotImplementedError(f"SuperThoughts: the MTP head builds its input norms as the backbone's final "
                                      f"norm type, and {norm_cls.__name__}(hidden_size, eps=...) fails: {exc}") from exc
        self.fc = nn.Linear(2 * hidden, hidden, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.cat([torch.eye(hidden), torch.zeros(hidden, hidden)], dim=1))
        # The output norm is the backbone's final norm: the shared lm_head was trained on it.
        self.norm = copy.deepcopy(backbone.model.norm)

    def mix(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """h, z [B, T, H] -> x [B, T, H]."""
        return self.fc(torch.cat([self.norm_h(h), self.norm_z(z)], dim=-1))


def _one_layer_config(backbone: PreTrainedModel):
    """A copy of the backbone config describing ONE layer of the type of its last layer."""
    config = copy.deepcopy(backbone.config)
    layer_types = getattr(config, "layer_types", None)
    config.num_hidden_layers = 1
    if layer_types is not None:
        config.layer_types = list(layer_types[-1:])
    return config


class DecoderMTP(_MTPInput):
    """MTP head: one decoder layer of the backbone's own class over x = fc([RMSNorm(h); RMSNorm(z)]).

    The layer starts as a copy of the backbone's last layer; it attends over its own per-position
    states, so at decode time it keeps its own one-layer KV cache.
    """

    has_cache = True

    def __init__(self, backbone: PreTrainedModel) -> None:
        super().__init__(backbone)
        last = backbone.model.layers[-1]
        self.layer_config = _one_layer_config(backbone)
        # The last layer's type, when the config lists them (else the backbone's own rule: every
        # layer slides when a window is set, as in Mistral).
        layer_types = getattr(self.layer_config, "layer_types", None)
        kind = layer_types[0] if layer_types else None
        if kind not in (None, "full_attention", "sliding_attention"):  # Zaya's "hybrid", a last linear-attention layer
            raise NotImplementedError(f"SuperThoughts: the decoder MTP copies the last layer, a {kind!r} layer, whose "
                                      "mask and state it does not build (full or sliding-window causal attention "
                                      "only); use mtp_type='mlp'")
        # Built on the meta device and filled from the last layer: no random init to waste.
        # Built as the LAST layer (its index and the full config): models that shape a layer by
        # its index (dense first layers then MoE in DeepSeek-V3 / GLM-4 MoE, Qwen MoE's
        # mlp_only_layers, SmolLM3's NoPE layers) built layer 0's structure instead.
        with torch.device("meta"):
            self.layer = type(last)(copy.deepcopy(backbone.config), len(backbone.model.layers) - 1)
        # Index 0 of the MTP's own one-layer cache, wherever the layer keeps its index.
        for module in self.layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = 0
        self.layer.to_empty(device=backbone.model.norm.weight.device)
        self.layer.load_state_dict(last.state_dict())
        self.rotary_emb = type(backbone.model.rotary_emb)(config=self.layer_config)
        if kind is not None:
            self.sliding = kind == "sliding_attention"
        else:
            self.sliding = getattr(self.layer_config, "sliding_window", None) is not None
        # Rotary embeddings keyed by layer type (OLMo 3, Mellum) take the MTP layer's; multimodal
        # RoPE (Qwen3.5) takes the text positions in each of its 3 sections, as its backbone does.
        takes = inspect.signature(self.rotary_emb.forward).parameters
        self.rope_kwargs = {"layer_type": kind} if "layer_type" in takes and kind is not None else {}
        self.mrope = hasattr(self.rotary_emb, "mrope_section")

    def new_cache(self, batch_size: int, max_positions: int, device: torch.device, dtype: torch.dtype) -> StaticCache:
        """Static one-layer KV cache for `batch_size` rows and `max_positions` positions."""
        return static_cache(self.layer_config, batch_size, max_positions, device, dtype)

    def forward(self, h: torch.Tensor, z: torch.Tensor, position_ids: torch.Tensor,
                attention_mask: torch.Tensor | None, cache: StaticCache | None = None) -> torch.Tensor:
        """h, z [B, T, H], position_ids [B, T], attention_mask [B, S] -> h_mtp [B, T, H]."""
        x = self.mix(h, z)
        make_mask = create_sliding_window_causal_mask if self.sliding else create_causal_mask
        mask = make_mask(config=self.layer_config, inputs_embeds=x, attention_mask=attention_mask,
                         position_ids=position_ids, **{CACHE_ARG: cache})
        out = self.layer(x, attention_mask=mask, position_ids=position_ids, use_cache=cache is not None,
                         position_embeddings=self._rotary(x, position_ids), **{CACHE_ARG: cache})
        if isinstance(out, tuple):
            out = out[0]
        return self.norm(out)

    def _rotary(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        positions = position_ids[None].expand(3, *position_ids.shape) if self.mrope else position_ids
        return self.rotary_emb(x, positions, **self.rope_kwargs)


class MLPMTP(_MTPInput):
    """MTP head without attention: x = fc(...); x + MLP(RMSNorm(x)); final RMSNorm. No cache.

    MLP and its norm start as copies of the backbone's last layer's MLP block: pre-norm
    (x + MLP(norm(x)), norm = post_attention_layernorm) in Llama-style layers, post-norm
    (x + norm(MLP(x)), norm = post_feedforward_layernorm) in OLMo 2's, whose
    post_attention_layernorm normalises the attention output instead.
    """

    has_cache = False

    def __init__(self, backbone: PreTrainedModel) -> None:
        super().__init__(backbone)
        last = backbone.model.layers[-1]
        missing = [name for name in ("mlp", "post_attention_layernorm") if not hasattr(last, name)]
        if missing:  # Granite MoE's block_sparse_moe, Cohere's parallel block without a second norm
            raise NotImplementedError(f"SuperThoughts: mtp_type='mlp' copies the last layer's mlp and its norm; "
                                      f"{type(last).__name__} has no {' or '.join(missing)} (use mtp_type='decoder')")
        self.post_norm = hasattr(last, "post_feedforward_layernorm") and not hasattr(last, "pre_feedforward_layernorm")
        self.mlp_norm = copy.deepcopy(last.post_feedforward_layernorm if self.post_norm
                                      else last.post_attention_layernorm)
        self.mlp = copy.deepcopy(last.mlp)

    def new_cache(self, batch_size: int, max_positions: int, device: torch.device, dtype: torch.dtype) -> None:
        return None

    def forward(self, h: torch.Tensor, z: torch.Tensor, position_ids: torch.Tensor,
                attention_mask: torch.Tensor | None, cache: None = None) -> torch.Tensor:
        """h, z [B, T, H] -> h_mtp [B, T, H] (position_ids, attention_mask unused)."""
        x = self.mix(h, z)
        return self.norm(x + (self.mlp_norm(self._mlp(x)) if self.post_norm else self._mlp(self.mlp_norm(x))))

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        out = self.mlp(x)
        return out[0] if isinstance(out, tuple) else out  # MoE blocks that also return router logits (GPT-OSS)


def next_first_ids(first_ids: torch.Tensor, attention_mask: torch.Tensor, pad_id: int) -> torch.Tensor:
    """first_ids [B, T] shifted left by one position: [B, T] int64, pad_id at the last column and
    wherever the next position is padding (attention_mask [B, T] 0/1 of a right-padded batch)."""
    pad = torch.full_like(first_ids[:, :1], pad_id)
    shifted = torch.cat([first_ids[:, 1:], pad], dim=1)
    next_real = torch.cat([attention_mask[:, 1:], torch.zeros_like(attention_mask[:, :1])], dim=1).bool()
    return torch.where(next_real, shifted, pad)


def next_token_embeds(embedding: nn.Embedding, first_ids: torch.Tensor, attention_mask: torch.Tensor,
                      pad_id: int) -> torch.Tensor:
    """The MTP inputs of a training batch under mtp_input "next_token": E[`next_first_ids`] [B, T, H]."""
    return embedding(next_first_ids(first_ids, attention_mask, pad_id))


def build_mtp(kind: str, backbone: PreTrainedModel) -> nn.Module:
    """The MTP head named by `SuperThoughtsConfig.mtp_type` ("decoder" | "mlp")."""
    # The MTP head copies the backbone's last layer, final norm and (decoder) rotary embedding.
    needed = ["model", "lm_head", "model.norm", "model.layers"] + (["model.rotary_emb"] if kind == "decoder" else [])
    for name in needed:
        owner, _, attribute = name.rpartition(".")
        if not hasattr(getattr(backbone, owner) if owner else backbone, attribute):
            raise TypeError(f"SuperThoughts needs a decoder-only causal LM with .model (holding .norm, .layers"
                            f"{', .rotary_emb' if kind == 'decoder' else ''}) and .lm_head; "
                            f"{type(backbone).__name__} has no .{name}")
    if kind not in ("decoder", "mlp"):
        raise ValueError(f"mtp_type must be 'decoder' or 'mlp', got {kind!r}")
    weight = backbone.get_input_embeddings().weight
    mtp = (DecoderMTP if kind == "decoder" else MLPMTP)(backbone).to(weight.device, weight.dtype)
    if kind == "decoder":
        # .to(dtype) also rounds the RoPE frequencies, which transformers keeps in float32
        # whatever the weights' dtype: take the backbone's, which the copied layer knows.
        for name, buffer in backbone.model.rotary_emb.named_buffers():
            setattr(mtp.rotary_emb, name, buffer.clone())
    return mtp


def causal_mask_for_right_padding(attention_mask: torch.Tensor) -> torch.Tensor:
    """An all-ones mask in place of a right-padding mask [B, T] (per row ones, then zeros).

    With right padding, causality alone keeps every real position from seeing the pads after
    it, and the pads carry no targets, so the training loss is the same; a mask without zeros
    lets SDPA run its causal kernel instead of a materialised [B, 1, T, T] mask (a fifth of a
    SuperThoughts training step at T = 2048 on CPU). Any other mask (left padding, holes) is
    returned unchanged.
    """
    if attention_mask.dim() != 2 or attention_mask.shape[1] < 2:
        return attention_mask
    if bool((attention_mask[:, 1:] > attention_mask[:, :-1]).any()):  # a zero before a one
        return attention_mask
    return torch.ones_like(attention_mask)
