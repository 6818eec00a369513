"""SuperThoughts model: a stock Hugging Face causal LM + pair compressor + MTP head.

Positions are prompt tokens (input E[p]) followed by response units (input z = C(E[a], E[b]));
each position's final hidden state h feeds the main head (predicts the next unit's a) and the
MTP head (predicts the next unit's b from h and z, or E[a]: mtp_input, next_token_mtp.py).
data.py spells out the layout and every target.

Checkpoint layout (one directory): `config.json` = the backbone's config with
`architectures = ["SuperThoughtsForCausalLM"]` and a "superthoughts" section holding
`SuperThoughtsConfig` (modeling_config.py); `model.safetensors` (shards and their index past
50 GB, as transformers saves) = backbone.* + compressor.* + mtp.* (tied aliases such as
lm_head.weight stored once).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from superthoughts_ext.checkpoint import (  # load_tokenizer: loaded beside load_model by callers
    MAX_SHARD_SIZE,
    as_dtype,
    cast_weights,
    is_superthoughts_checkpoint,
    load_superthoughts_dir,
    load_plain,
    load_tokenizer,
    read_model_dir,
    save_superthoughts_dir,
)
from superthoughts_ext.head_losses import head_cross_entropy, head_kl_divergence
from superthoughts_ext.kv_cache import CACHE_ARG, SuperThoughtsCache, other_value_width
from superthoughts_ext.layers import build_compressor, build_mtp, causal_mask_for_right_padding, next_token_embeds
from superthoughts_ext.modeling_config import SuperThoughtsConfig, SuperThoughtsOutput

IGNORE = -100

__all__ = [
    "SuperThoughtsCache", "SuperThoughtsConfig", "SuperThoughtsForCausalLM", "SuperThoughtsOutput",
    "is_superthoughts_checkpoint", "load_model", "load_tokenizer",
]


def _first_int(value: Any) -> int | None:
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return int(value) if value is not None else None


class SuperThoughtsForCausalLM(nn.Module):
    """Backbone (HF AutoModelForCausalLM) + compressor + MTP head sharing the backbone's lm_head.

    Attributes: `config` (SuperThoughtsConfig), `backbone`, `compressor`, `mtp`; an optional
    frozen `teacher` (see `attach_teacher`) that is neither a submodule nor in the state dict.
    """

    # transformers.Trainer's FLOP estimate (`total_flos`) is 6 x num_parameters(exclude_embeddings=
    # True) per element of the model's main input; first_ids has one element per backbone
    # position (unit), so SuperThoughts and baseline runs are counted alike.
    main_input_name = "first_ids"

    def __init__(self, backbone: PreTrainedModel, config: SuperThoughtsConfig | None = None) -> None:
        super().__init__()
        config = config if config is not None else SuperThoughtsConfig()
        base = backbone.config
        # Heads that rescale lm_head's logits (Gemma 2, Cohere, Granite, Falcon-H1): head_logits,
        # the losses and the step op's confidences read lm_head alone.
        for key in ("final_logit_softcapping", "logit_scale", "logits_scaling", "lm_head_multiplier"):
            if getattr(base, key, None) not in (None, 1.0):
                raise NotImplementedError(f"SuperThoughts: backbones with {key}={getattr(base, key)} are not supported "
                                          f"(head_logits applies lm_head alone)")
        if getattr(base, "kv_lora_rank", None) is not None:
            # Keys and values of other widths per head, which the static KV cache generate() decodes
            # with does not hold (DeepSeek-V2/V3, Kimi K2).
            raise NotImplementedError(f"SuperThoughts: backbones with multi-head latent attention ({base.model_type}, "
                                      f"kv_lora_rank={base.kv_lora_rank}) are not supported")
        if (problem := other_value_width(base)) is not None:  # MiMo-V2
            raise NotImplementedError(f"SuperThoughts: backbones with {problem} are not supported (the decoding KV "
                                      "cache holds one width)")
        scale = getattr(backbone.get_input_embeddings(), "embed_scale", None)
        if scale is not None and float(scale) != 1.0:
            # The compressor and the step op read the raw embedding table.
            raise NotImplementedError(f"SuperThoughts: backbones that scale their input embeddings "
                                      f"({type(backbone.get_input_embeddings()).__name__}, scale {float(scale):g}) "
                                      f"are not supported")
        vocab = backbone.get_input_embeddings().num_embeddings
        head = backbone.get_output_embeddings()
        if head is None or head.weight.shape[0] != vocab:
            rows = None if head is None else head.weight.shape[0]
            raise ValueError(f"SuperThoughts: embedding table has {vocab} rows but lm_head has {rows}")
        if config.pad_token_id is None:
            pad = _first_int(getattr(base, "pad_token_id", None))
            if pad is not None and pad < 0:  # Llama 1 conversions: -1 means "no pad"
                pad = None
            if pad is None:
                pad = _first_int(getattr(base, "eos_token_id", None))
                if pad is None:
                    raise ValueError("SuperThoughts: the backbone config has neither pad_token_id nor eos_token_id; "
                                     "pass pad_token_id explicitly")
                # Qwen2.5(-Math) configs name no pad: the wrapper's PAD (the second half of a
                # single unit) would be the EOS, while a collator given the tokenizer's pad
                # trains with another id than decoding feeds.
                warnings.warn(f"SuperThoughts: the backbone config has no pad_token_id; PAD is its EOS id {pad}. "
                              "Pass pad_token_id= (the tokenizer's pad, as `superthoughts train` does) and collate "
                              "with model.pad_token_id", stacklevel=3)
            config.pad_token_id = pad
        if not 0 <= config.pad_token_id < vocab:
            raise ValueError(f"SuperThoughts: pad_token_id {config.pad_token_id} is out of range for vocabulary size {vocab}")
        self.config = config
        self.backbone = backbone
        weight = backbone.get_input_embeddings().weight
        self.compressor = build_compressor(config.compressor_type, base.hidden_size).to(weight.device, weight.dtype)
        self.mtp = build_mtp(config.mtp_type, backbone)
        # A tuple keeps the teacher out of submodules: no state dict entry, no optimizer
        # parameters, no DDP broadcast, no peft wrapping.
        self._teacher: tuple[nn.Module, ...] = ()

    # ----------------------------------------------------------------------------------
    # Construction, save and load

    @classmethod
    def from_base(cls, path_or_model: str | os.PathLike | PreTrainedModel, *, dtype: torch.dtype | None = None,
                  device: str | torch.device | None = None, **overrides: Any) -> SuperThoughtsForCausalLM:
        """Wraps a plain causal LM (a directory, a repo id in the local Hugging Face cache, or a built
        model) with a fresh compressor and MTP head; `overrides` are SuperThoughtsConfig fields."""
        config = SuperThoughtsConfig.from_dict(overrides)
        if isinstance(path_or_model, SuperThoughtsForCausalLM):
            raise TypeError("from_base: the model is already a SuperThoughtsForCausalLM")
        if isinstance(path_or_model, (str, os.PathLike)):
            path = read_model_dir(path_or_model, "from_base")
            if is_superthoughts_checkpoint(path):
                raise ValueError(f"from_base: {os.fspath(path)!r} is already a SuperThoughts checkpoint; "
                                 f"use SuperThoughtsForCausalLM.from_pretrained")
            backbone = load_plain(path, dtype, "from_base")
        elif isinstance(path_or_model, PreTrainedModel):
            _refuse_adapters(path_or_model)
            backbone = path_or_model if dtype is None else cast_weights(path_or_model, as_dtype(dtype))
        else:
            _refuse_adapters(path_or_model)
            raise TypeError(f"from_base: expected a checkpoint directory or a PreTrainedModel, "
                            f"got {type(path_or_model).__name__}")
        # The new compressor and MTP follow the backbone's mode (a loaded checkpoint is in eval
        # mode): dropout must not act in one part only.
        model = cls(backbone, config).train(backbone.training)
        return model.to(device) if device is not None else model

    def save_pretrained(self, save_directory: str | os.PathLike, state_dict: dict[str, torch.Tensor] | None = None,
                        max_shard_size: int | str = MAX_SHARD_SIZE) -> None:
        """Writes config.json, generation_config.json and model.safetensors to `save_directory`
        (created if missing; weight files of an earlier model there are removed). Weights over
        `max_shard_size` (bytes or e.g. "5GB"; default transformers' 50GB) go into shards
        model-0000i-of-0000n.safetensors named by model.safetensors.index.json, as transformers
        writes them.

        `state_dict` (e.g. a gathered FSDP state dict) replaces the module's own when given.
        The directory loads with `from_pretrained` or `superthoughts_ext.load_model`, not with
        transformers' AutoModelForCausalLM: that builds the backbone class from config.json and,
        finding none of its weight names (they start with "backbone."), initialises it randomly
        with only a warning.
        """
        save_superthoughts_dir(self, save_directory, state_dict, max_shard_size)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, dtype: torch.dtype | None = None,
                        device: str | torch.device | None = None) -> SuperThoughtsForCausalLM:
        """Loads a directory written by `save_pretrained` or a cached repo id holding one, in eval mode."""
        model = load_superthoughts_dir(cls, SuperThoughtsConfig, directory, dtype)
        model.eval()
        return model.to(device) if device is not None else model

    def attach_teacher(self, teacher: PreTrainedModel) -> None:
        """Sets the frozen model used by distillation (same vocabulary, run on uncompressed ids)."""
        rows = teacher.get_input_embeddings().num_embeddings
        if rows != self.vocab_size:
            raise ValueError(f"attach_teacher: teacher vocabulary {rows} != model vocabulary {self.vocab_size}")
        teacher.requires_grad_(False).eval()
        self._teacher = (teacher,)

    @property
    def teacher(self) -> nn.Module | None:
        """The frozen distillation teacher set by `attach_teacher`, else None."""
        return self._teacher[0] if self._teacher else None

    # ----------------------------------------------------------------------------------
    # Small accessors

    @property
    def pad_token_id(self) -> int:
        """The PAD id: the second half of a single unit (and what finished rows emit)."""
        return int(self.config.pad_token_id)

    @property
    def vocab_size(self) -> int:
        """Rows of the backbone's embedding table (lm_head has as many)."""
        return self.backbone.get_input_embeddings().num_embeddings

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Parameters of backbone, compressor and MTP (not the teacher), each shared tensor once,
        counted as transformers' PreTrainedModel.num_parameters counts them (embedding tables,
        and a head tied to one, left out with exclude_embeddings)."""
        skip = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)} if exclude_embeddings else set()
        return sum(p.numel() for p in self.parameters()
                   if id(p) not in skip and (p.requires_grad or not only_trainable))

    def get_input_embeddings(self) -> nn.Embedding:
        """The backbone's embedding table (the compressor and the step op read it too)."""
        return self.backbone.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        """The backbone's lm_head, shared by the main and the MTP head."""
        return self.backbone.get_output_embeddings()

    def tie_weights(self, *args: Any, **kwargs: Any) -> None:
        """Re-ties the backbone's lm_head to its embedding where its config says so. Loaders
        that rebuild parameters (accelerate's FSDP loading) call this on the wrapped model."""
        self.backbone.tie_weights(*args, **kwargs)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict[str, Any] | None = None,
                                      **kwargs: Any) -> None:
        """Activation checkpointing of the backbone's layers (transformers.Trainer calls this under
        `gradient_checkpointing=True`); the compressor and the MTP block keep their activations."""
        self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs,
                                                    **kwargs)

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict[str, Any] | None = None,
                                        **kwargs: Any) -> None:
        """transformers 5.23+'s name of `gradient_checkpointing_enable`, which its Trainer calls
        when the model has it; on older releases the backbone's gradient_checkpointing_enable."""
        if not hasattr(self.backbone, "activation_checkpointing_enable"):
            self.gradient_checkpointing_enable(activation_checkpointing_kwargs, **kwargs)
            return
        self.backbone.activation_checkpointing_enable(activation_checkpointing_kwargs=activation_checkpointing_kwargs,
                                                      **kwargs)

    def check_tokenizer(self, tokenizer: Any) -> None:
        """Raises ValueError when `tokenizer` has ids the embedding table cannot hold."""
        if len(tokenizer) > self.vocab_size:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the model's vocabulary has "
                             f"{self.vocab_size} rows: the tokenizer does not belong to this model")

    # ----------------------------------------------------------------------------------
    # The computation

    def embed_units(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Unit inputs z = C(E[a], E[b]): a, b [B, T] int64 (b = pad for single units) -> [B, T, H]."""
        embed = self.backbone.get_input_embeddings()
        return self.compressor(embed(a), embed(b))

    def embed_inputs(self, first_ids: torch.Tensor, second_ids: torch.Tensor, is_unit: torch.Tensor) -> torch.Tensor:
        """Inputs of a mixed layout [B, T]: E[first] at prompt positions, C(E[first], E[second]) at units."""
        plain = self.backbone.get_input_embeddings()(first_ids)
        return torch.where(is_unit.unsqueeze(-1), self.embed_units(first_ids, second_ids), plain)

    def new_cache(self, batch_size: int, max_positions: int, device: str | torch.device | None = None,
                  dtype: torch.dtype | None = None) -> SuperThoughtsCache:
        """Static KV caches (backbone + MTP layer) for `batch_size` rows and `max_positions` positions."""
        weight = self.backbone.get_input_embeddings().weight
        device = torch.device(device) if device is not None else weight.device
        return SuperThoughtsCache.create(self.backbone, self.mtp, batch_size, max_positions, device,
                                         dtype if dtype is not None else weight.dtype)

    def hidden_states(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                      cache: SuperThoughtsCache | None = None,
                      mtp_inputs: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Final hidden states of both heads.

        Args:
            inputs_embeds: [B, T, H] new positions (E[p] for prompt tokens, z for units).
            position_ids: [B, T] int64.
            attention_mask: [B, S] 0/1 over every cached and new position (past + T <= S <= the
                cache's max_positions; columns past the last new position are ignored by
                causality; left padding allowed).
            cache: from `new_cache`, updated in place; None = full causal forward over T.
            mtp_inputs: [B, T, H] what the MTP head mixes with h: None = inputs_embeds (mtp_input
                "unit"); "next_token" needs E[each next position's first token] (layers.next_token_embeds).
        Returns:
            h [B, T, H] (backbone, after its final norm) and h_mtp [B, T, H] (MTP head).
        """
        if mtp_inputs is None:
            if self.config.mtp_input != "unit":
                raise ValueError(f"hidden_states: mtp_input={self.config.mtp_input!r} needs mtp_inputs (E of each "
                                 "next position's first token, layers.next_token_embeds)")
            mtp_inputs = inputs_embeds
        h = self.backbone_hidden(inputs_embeds, position_ids, attention_mask, cache)
        return h, self.mtp_hidden(h, mtp_inputs, position_ids, attention_mask, cache)

    def backbone_hidden(self, inputs_embeds: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                        cache: SuperThoughtsCache | None = None) -> torch.Tensor:
        """The backbone half of `hidden_states` (same arguments): h [B, T, H]."""
        if inputs_embeds.dim() != 3 or position_ids.dim() != 2 or attention_mask.dim() != 2:
            raise ValueError(f"hidden_states: expected inputs_embeds [B, T, H], position_ids [B, T], attention_mask "
                             f"[B, S]; got {tuple(inputs_embeds.shape)}, {tuple(position_ids.shape)}, "
                             f"{tuple(attention_mask.shape)}")
        batch, length = inputs_embeds.shape[:2]
        if attention_mask.shape[0] != batch or attention_mask.shape[1] < length:
            raise ValueError(f"hidden_states: attention_mask {tuple(attention_mask.shape)} does not cover inputs "
                             f"{tuple(inputs_embeds.shape[:2])}")
        if cache is not None and cache.batch_size != batch:
            raise ValueError(f"hidden_states: cache was made for batch {cache.batch_size}, inputs have batch {batch}")
        if cache is not None and not torch.compiler.is_compiling() and attention_mask.shape[1] > cache.max_positions:
            # Past the end, writes would land in the cache's spare column and attention would
            # never read them. Checked eagerly only: in generate's compiled step the mask width
            # is a symbolic size, and comparing it with this per-call int would recompile the
            # step for every cache length (generate sizes its cache itself).
            raise ValueError(f"hidden_states: attention_mask covers {attention_mask.shape[1]} positions, the cache "
                             f"holds {cache.max_positions} (make it with new_cache(batch, max_positions) large enough)")
        out = self.backbone.model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
            use_cache=cache is not None, **{CACHE_ARG: None if cache is None else cache.backbone},
        )
        return out.last_hidden_state

    def mtp_hidden(self, h: torch.Tensor, mtp_inputs: torch.Tensor, position_ids: torch.Tensor,
                   attention_mask: torch.Tensor, cache: SuperThoughtsCache | None = None) -> torch.Tensor:
        """The MTP half of `hidden_states`: h, mtp_inputs [B, T, H] -> h_mtp [B, T, H]. Decoding with
        mtp_input "next_token" runs it after the main head has picked the token it reads."""
        if mtp_inputs.shape != h.shape:
            raise ValueError(f"hidden_states: mtp_inputs {tuple(mtp_inputs.shape)} must have the shape of the "
                             f"hidden states {tuple(h.shape)}")
        return self.mtp(h, mtp_inputs, position_ids, attention_mask, None if cache is None else cache.mtp)

    def head_logits(self, h: torch.Tensor, h_mtp: torch.Tensor) -> torch.Tensor:
        """One lm_head GEMM over both heads: h, h_mtp [N, H] -> logits [2, N, V] (main, MTP)."""
        rows = h.shape[0]
        return self.backbone.lm_head(torch.cat([h, h_mtp], dim=0)).view(2, rows, -1)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """`superthoughts_ext.generate(self, input_ids, attention_mask, **kwargs)`: adaptive
        two-token decoding (max_new_tokens, mode, threshold, ... as documented there). This is
        not transformers' GenerationMixin.generate, whose one-token-per-step loop cannot feed
        compressed pairs; its result has `sequences` without the prompt, plus step counts."""
        from superthoughts_ext.generate import generate

        return generate(self, input_ids, attention_mask, **kwargs)

    def forward(self, first_ids: torch.Tensor, second_ids: torch.Tensor, is_unit: torch.Tensor,
                position_ids: torch.Tensor, attention_mask: torch.Tensor, labels_main: torch.Tensor | None = None,
                labels_mtp: torch.Tensor | None = None, teacher_input_ids: torch.Tensor | None = None,
                teacher_attention_mask: torch.Tensor | None = None, teacher_index: torch.Tensor | None = None,
                return_logits: bool = True) -> SuperThoughtsOutput:
        """Training forward on a `SuperThoughtsCollator` batch (all [B, T] unless noted).

        loss = CE_main + lambda_mtp * CE_mtp (+ distill_weight * KL(teacher || main head)); each
        CE is a mean over its non-ignored (-100) targets. Distillation needs an attached teacher
        and the collator's teacher_input_ids / teacher_attention_mask [B, T'] and teacher_index
        [B, T] (the uncompressed position whose next token is the main target; -1 = none).

        The losses score only the labelled rows (hidden states gathered first) through a
        chunked head + cross-entropy that never holds [B, T, V] logits. `logits_main` /
        `logits_mtp` [B, T, V] come from a separate head GEMM over every position, made only
        when `return_logits` (or when no labels are given); training loops that need the loss
        alone pass `return_logits=False` and skip that GEMM and its memory.
        """
        if (labels_main is None) != (labels_mtp is None):
            # One without the other scores a loss without one of its parts (or none at all, silently).
            given = "labels_main" if labels_mtp is None else "labels_mtp"
            raise ValueError(f"forward: {given} given without the other labels row; pass both, or neither for logits")
        batch, length = first_ids.shape
        embeds = self.embed_inputs(first_ids, second_ids, is_unit)
        mtp_inputs = None  # mtp_input "next_token": teacher forcing with the true a_{j+1}, the main target
        if self.config.mtp_input == "next_token":
            mtp_inputs = next_token_embeds(self.get_input_embeddings(), first_ids, attention_mask, self.pad_token_id)
        h, h_mtp = self.hidden_states(embeds, position_ids, causal_mask_for_right_padding(attention_mask),
                                      mtp_inputs=mtp_inputs)
        output = SuperThoughtsOutput()
        if return_logits or labels_main is None:
            logits = self.head_logits(h.reshape(batch * length, -1), h_mtp.reshape(batch * length, -1))
            logits = logits.view(2, batch, length, -1)
            output.logits_main, output.logits_mtp = logits[0], logits[1]
        if labels_main is None:
            return output
        hidden = h.shape[-1]
        main_idx = torch.nonzero(labels_main.reshape(-1) != IGNORE).squeeze(1)  # [N_main]
        mtp_idx = torch.nonzero(labels_mtp.reshape(-1) != IGNORE).squeeze(1)  # [N_mtp]
        n_main, n_mtp = main_idx.numel(), mtp_idx.numel()
        h_main = h.reshape(-1, hidden).index_select(0, main_idx)
        rows = torch.cat([h_main, h_mtp.reshape(-1, hidden).index_select(0, mtp_idx)])  # [N_main + N_mtp, H]
        targets = torch.cat([labels_main.reshape(-1)[main_idx], labels_mtp.reshape(-1)[mtp_idx]])
        # Each CE is a mean over its own targets; an empty one weighs 0 (its rows do not exist).
        weights = torch.cat([rows.new_full((n_main,), 1.0 / max(n_main, 1), dtype=torch.float32),
                             rows.new_full((n_mtp,), self.config.lambda_mtp / max(n_mtp, 1), dtype=torch.float32)])
        loss, ce = head_cross_entropy(self.backbone.get_output_embeddings(), rows, targets, weights)
        zero = ce.new_zeros(())
        output.loss_main = ce[:n_main].mean() if n_main else zero
        output.loss_mtp = ce[n_main:].mean() if n_mtp else zero
        if self.config.distill_weight > 0:
            loss_distill = self._distill(h_main, labels_main, teacher_input_ids, teacher_attention_mask, teacher_index)
            loss = loss + self.config.distill_weight * loss_distill
            output.loss_distill = loss_distill.detach()
        # With no target at all the loss is still a function of every parameter (through the
        # empty gathers), as DDP expects.
        output.loss = loss
        return output

    def _distill(self, h_main: torch.Tensor, labels_main: torch.Tensor, teacher_input_ids: torch.Tensor | None,
                 teacher_attention_mask: torch.Tensor | None, teacher_index: torch.Tensor | None) -> torch.Tensor:
        """KL(teacher || main head) averaged over the main targets; h_main [N_main, H] are their rows."""
        teacher = self.teacher
        if teacher is None:
            raise ValueError("forward: distill_weight > 0 but no teacher is attached (call attach_teacher)")
        if teacher_input_ids is None or teacher_index is None:
            raise ValueError("forward: distill_weight > 0 needs teacher_input_ids and teacher_index in the batch "
                             "(SuperThoughtsCollator(with_distill=True))")
        if next(teacher.parameters()).device != h_main.device:
            teacher.to(h_main.device)
        rows, cols = torch.nonzero(labels_main != IGNORE, as_tuple=True)  # same row-major order as h_main
        if rows.numel() == 0:
            return h_main.sum() * 0.0
        if bool((teacher_index[rows, cols] < 0).any()):
            raise ValueError("forward: teacher_index is -1 at a position with a main target")
        with torch.no_grad():
            if teacher_attention_mask is not None:
                teacher_attention_mask = causal_mask_for_right_padding(teacher_attention_mask)
            # Hidden states only, gathered at the N scored positions: the teacher's full logits
            # [B, T', V] (and the [N, V] float32 log-softmaxes after them) were the largest tensors
            # of a distillation step at V = 152k.
            # No KV cache: the teacher's config asks for one (use_cache True, as loaded), which would
            # hold every layer's keys and values of the batch until the loss is computed.
            t_hidden = teacher.model(input_ids=teacher_input_ids, attention_mask=teacher_attention_mask,
                                     use_cache=False)
            t_rows = t_hidden.last_hidden_state[rows, teacher_index[rows, cols]]  # [N, H]
        weights = h_main.new_full((rows.numel(),), 1.0 / rows.numel(), dtype=torch.float32)
        loss, _ = head_kl_divergence(self.backbone.get_output_embeddings(), h_main, teacher.get_output_embeddings(),
                                     t_rows, weights)
        return loss


def _refuse_adapters(model: Any) -> None:
    """A peft model, or a model with adapter layers injected, is no plain backbone: the MTP head
    copies the last layer's weights, which adapters split into base and adapter parts."""
    if type(model).__name__.startswith("Peft") or (
            isinstance(model, nn.Module) and any(hasattr(m, "base_layer") for m in model.modules())):
        raise TypeError(f"from_base: {type(model).__name__} holds peft adapters; wrap the plain model (merge them "
                        "first with merge_and_unload()) and add LoRA afterwards, as `superthoughts train --lora-r N` does")


def load_model(path: str | os.PathLike, dtype: torch.dtype | None = None,
               device: str | torch.device | None = None) -> nn.Module:
    """A SuperThoughts checkpoint -> SuperThoughtsForCausalLM; a plain one -> AutoModelForCausalLM
    (the baseline). Both in eval mode. `path`: a directory, or a Hugging Face repo id (``org/name``,
    ``org/name@revision``) in the local hub cache; a local directory of that name wins."""
    directory = read_model_dir(path, "load_model")
    if is_superthoughts_checkpoint(directory):
        return SuperThoughtsForCausalLM.from_pretrained(directory, dtype=dtype, device=device)
    model = load_plain(directory, dtype, "load_model").eval()
    return model.to(device) if device is not None else model
