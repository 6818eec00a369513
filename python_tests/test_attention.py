"""Folded grouped-query attention for decode steps (superthoughts_ext/attention.py)."""
from __future__ import annotations

import pytest
import torch
import transformers.integrations.sdpa_attention as hf_sdpa
from transformers import AutoModelForCausalLM, Qwen2Config

from superthoughts_ext import attention
from superthoughts_ext.generate import generate
from superthoughts_ext.modeling import SuperThoughtsForCausalLM


class Heads(torch.nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True


@pytest.mark.parametrize("kv_heads,group", [(2, 1), (2, 2), (2, 6), (1, 4)])
@pytest.mark.parametrize("mask_kind", ["bool", "float", "none"])
@pytest.mark.parametrize("q_len", [1, 5])
def test_folded_equals_transformers_sdpa(kv_heads, group, mask_kind, q_len):
    gen = torch.Generator().manual_seed(0)
    batch, length, dim = 3, 11, 16
    query = torch.randn(batch, q_len, kv_heads * group, dim, generator=gen).transpose(1, 2)  # as the models lay it out
    key = torch.randn(batch, kv_heads, length, dim, generator=gen)
    value = torch.randn(batch, kv_heads, length, dim, generator=gen)
    keep = torch.rand(batch, 1, q_len, length, generator=gen) > 0.3
    keep[..., 0] = True  # every query sees at least one position
    mask = {"bool": keep, "float": torch.zeros(keep.shape).masked_fill(~keep, float("-inf")), "none": None}[mask_kind]
    module = Heads(group)
    want, _ = hf_sdpa.sdpa_attention_forward(module, query, key, value, mask, scaling=0.25)
    got, _ = attention.folded_gqa_sdpa(module, query, key, value, mask, scaling=0.25)
    assert got.shape == want.shape == (batch, q_len, kv_heads * group, dim)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def tiny_gqa_model(attn: str = "sdpa") -> torch.nn.Module:
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()


@pytest.mark.parametrize("mode", ["standard", "superthoughts"])
def test_decode_steps_do_not_repeat_the_kv_cache(monkeypatch, mode):
    model = tiny_gqa_model()
    if mode == "superthoughts":  # backbone and the MTP decoder layer, each with its own config
        model = SuperThoughtsForCausalLM.from_base(model).eval()
    calls = []
    real = hf_sdpa.repeat_kv

    def counting(hidden, n_rep):
        calls.append(hidden.shape[2])
        return real(hidden, n_rep)

    monkeypatch.setattr(hf_sdpa, "repeat_kv", counting)
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    out = generate(model, ids, max_new_tokens=12, mode=mode, threshold=0.0, eos_token_id=2)
    assert out.num_steps[0] >= 3  # some decode steps ran (the seed keeps EOS away)
    # The prompt's forward (5 positions) may repeat K and V once per layer (the MTP's too); the
    # decode steps never do. Unfolded, every step repeats the whole cache in every layer.
    layers = 2 + (mode == "superthoughts")
    assert len(calls) <= layers, calls
    configs = [model.config] if mode == "standard" else [model.backbone.config, model.mtp.layer_config]
    assert all(c._attn_implementation == "sdpa" for c in configs)  # restored after the call


def test_implementation_restored_on_error_and_other_implementations_untouched():
    model = tiny_gqa_model()
    with pytest.raises(RuntimeError, match="inside"):
        with attention.folded_gqa_decoding(model):
            assert model.config._attn_implementation == attention.NAME
            raise RuntimeError("inside")
    assert model.config._attn_implementation == "sdpa"
    eager = tiny_gqa_model("eager")
    with attention.folded_gqa_decoding(torch.nn.ModuleList([eager, model])):
        assert eager.config._attn_implementation == "eager"
        assert model.config._attn_implementation == attention.NAME
    with attention.folded_gqa_decoding(model, enabled=False):
        assert model.config._attn_implementation == "sdpa"


def test_on_for_cpu_and_on_request_for_gpus(monkeypatch):
    monkeypatch.delenv("SUPERTHOUGHTS_FOLDED_GQA", raising=False)
    assert attention.folded_by_default(torch.device("cpu"))
    assert not attention.folded_by_default(torch.device("cuda"))
    monkeypatch.setenv("SUPERTHOUGHTS_FOLDED_GQA", "1")
    assert attention.folded_by_default(torch.device("cuda"))
