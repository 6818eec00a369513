"""The `mtp_input="next_token"` variant: the MTP head reads E[t1] instead of the position's own input.

In the method's design (mtp_input "unit") the MTP head at a position mixes h with that position's
own input z. DeepSeek-V3 feeds its MTP module the embedding of the token the main head predicts
instead; here that is the first token of the NEXT position: p_{i+1} at a prompt position p_i, and
a_{j+1} (the main head's target, its chosen token at decode time) at the last prompt position and
at unit j. The MTP head still predicts the token after a_{j+1}.

Training (`layers.next_token_embeds`, kept apart from this decoding module: what training imports
keys the demo's model cache) feeds the true a_{j+1} (teacher forcing): the first ids shifted left
by one position. Decoding (`NextTokenStepper`) needs t1 before the MTP head runs, so a step is
backbone -> h -> main logits -> t1 -> MTP(h, E[t1]) -> MTP logits -> `superthoughts_step` on both.
t1 is picked by the step op itself, launched once on [main, all -inf] logits with threshold 1 (it
never accepts a second token, as BackboneStepper uses it): the same argmax ties, Gumbel noise
(keyed by seed, offset, row, head 0) and per-row seeds as the real launch that follows, whose
first token is therefore t1 again. The price per step: a second lm_head GEMM (one [B, H] x [H, V]
each instead of one over [2B, H]) and a second op launch.
"""
from __future__ import annotations

import torch

from superthoughts_ext.decode_loop import DecodeState, StepConfig, SuperThoughtsStepper


class NextTokenStepper(SuperThoughtsStepper):
    """`SuperThoughtsStepper` for mtp_input "next_token": the MTP head runs after the main head's
    token t1 is picked (by a first step-op launch) and reads E[t1].

    Prefill runs the MTP layer over every prompt position too (its KV cache covers them all):
    its inputs there are E[p_2..p_m], and E[t1] at the last prompt position.
    """

    def __init__(self, model, batch: int, max_positions: int) -> None:
        super().__init__(model, batch, max_positions)
        self.lm_head = model.get_output_embeddings()
        # [2, B, V]: the main head's row, then all -inf (to pick t1) or the MTP head's row.
        # Allocated by prefill, then reused: a CUDA graph replays on fixed buffers.
        self.logits: torch.Tensor | None = None

    def prefill(self, input_ids: torch.Tensor, position_ids: torch.Tensor, state: DecodeState,
                cfg: StepConfig) -> torch.Tensor:
        """Runs the prompt [B, T] through backbone and MTP; logits [2, B, V] of its last position."""
        embeds = self.embedding(input_ids)  # [B, T, H]
        mask = self.attend(state.attention_mask[:, : input_ids.shape[1]])
        h = self.model.backbone_hidden(embeds, position_ids, mask, self.cache)
        first = self._main_token(h[:, -1], state, cfg, offset=0)  # [B]
        # Left pads read the token after them as well; nothing attends to them.
        next_ids = torch.cat([input_ids[:, 1:], first.unsqueeze(1)], dim=1)  # [B, T]
        state.inputs = embeds.new_zeros(embeds.shape[0], 1, embeds.shape[2])  # [B, 1, H] (see the base class)
        return self._with_mtp(h, self.embedding(next_ids), position_ids, mask)

    def forward(self, state: DecodeState, mask: torch.Tensor, cfg: StepConfig, offset: int) -> torch.Tensor:
        """One unit position per row from `state.inputs`, attending over the columns of `mask`
        [B, W]; logits [2, B, V]."""
        mask = self.attend(mask)
        h = self.model.backbone_hidden(state.inputs, state.position_ids, mask, self.cache)
        first = self._main_token(h[:, -1], state, cfg, offset)  # [B]
        return self._with_mtp(h, self.embedding(first).unsqueeze(1), state.position_ids, mask)

    def _main_token(self, h_last: torch.Tensor, state: DecodeState, cfg: StepConfig, offset: int) -> torch.Tensor:
        """t1 [B] int64 of the main head at h_last [B, H], as the step's real launch will pick it
        (pad_id for finished rows)."""
        main = self.lm_head(h_last)  # [B, V]
        if self.logits is None:
            self.logits = main.new_empty(2, *main.shape)
        self.logits[0].copy_(main)
        self.logits[1].fill_(float("-inf"))
        # A copy of `finished`: the op sets it for rows whose t1 is EOS, which must still emit t1
        # in the real launch. No merge weight: the op returns the raw pair, which is not read.
        tokens, _, _, _ = cfg.step_fn(
            self.logits, self.embed, None, None, state.finished.clone(), cfg.pad_id, cfg.eos_id, 1.0, 0.0,
            cfg.temperature, cfg.seed, offset, row_seeds=cfg.row_seeds)
        return tokens[:, 0]

    def _with_mtp(self, h: torch.Tensor, mtp_inputs: torch.Tensor, position_ids: torch.Tensor,
                  mask: torch.Tensor) -> torch.Tensor:
        """Runs the MTP head on h, mtp_inputs [B, T, H]; logits [2, B, V] (main row kept)."""
        h_mtp = self.model.mtp_hidden(h, mtp_inputs, position_ids, mask, self.cache)
        self.logits[1].copy_(self.lm_head(h_mtp[:, -1]))
        return self.logits
