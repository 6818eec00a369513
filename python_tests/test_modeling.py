"""SuperThoughtsForCausalLM on tiny random Qwen2 (tied head) and Llama (untied head) models, CPU.

Covers: compressor and MTP init, one-GEMM head logits, gradients reaching every part, the
training loss (the chunked labelled-rows head against the full-logits computation; the
head itself is tested in test_layers.py), distillation, the right-padding shortcut, and
static-cache decoding equal to a no-cache forward (left padding included). (Checkpoints,
config errors and the transformers surface: test_modeling_checkpoint.py, which reuses the
tiny models built here.)
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config  # noqa: E402

from superthoughts_ext.data import SuperThoughtsCollator  # noqa: E402
from superthoughts_ext.layers import causal_mask_for_right_padding  # noqa: E402
from superthoughts_ext.modeling import SuperThoughtsForCausalLM  # noqa: E402

VOCAB, HIDDEN, PAD, EOS = 61, 32, 0, 1
FAMILIES = ["qwen2", "llama"]


def make_backbone(kind: str, seed: int = 0):
    common = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  pad_token_id=PAD, eos_token_id=EOS, tie_word_embeddings=kind == "qwen2")
    if kind == "mistral":  # every layer slides (no layer_types in its config)
        config = MistralConfig(**common, sliding_window=4)
    else:
        config = Qwen2Config(**common) if kind == "qwen2" else LlamaConfig(**common)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def make_model(kind: str = "qwen2", **overrides) -> SuperThoughtsForCausalLM:
    model = SuperThoughtsForCausalLM.from_base(make_backbone(kind), **overrides)
    # Random (not identity-initialised) extra parts, so tests see every weight matter.
    torch.manual_seed(1)
    with torch.no_grad():
        for p in [*model.compressor.parameters(), *model.mtp.parameters()]:
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def training_batch(with_distill: bool = False, rho_max: float = 0.5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    features = [{"prompt_ids": torch.randint(2, VOCAB, (m,), generator=g).tolist(),
                 "response_ids": torch.randint(2, VOCAB, (n,), generator=g).tolist()} for m, n in [(3, 9), (5, 4), (2, 1)]]
    return SuperThoughtsCollator(PAD, EOS, rho_max=rho_max, seed=3, with_distill=with_distill)(features)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_compressor_init_is_sum(kind):
    model = SuperThoughtsForCausalLM.from_base(make_backbone("qwen2"), compressor_type=kind)
    a, b = torch.randint(0, VOCAB, (2, 5)), torch.randint(0, VOCAB, (2, 5))
    embed = model.get_input_embeddings()
    torch.testing.assert_close(model.embed_units(a, b), embed(a) + embed(b), atol=1e-5, rtol=1e-5)
    pair = torch.cat([embed(a), embed(b)], dim=-1)
    torch.testing.assert_close(model.compressor.merge_pair(pair), model.embed_units(a, b))
    if kind == "linear":
        assert model.compressor.merge_weight.shape == (HIDDEN, 2 * HIDDEN)
        assert model.compressor.merge_bias.shape == (HIDDEN,)
    else:
        assert model.compressor.merge_weight is None and model.compressor.merge_bias is None


@pytest.mark.parametrize("family", FAMILIES)
def test_decoder_mtp_init_copies_last_layer_and_ignores_z(family):
    model = SuperThoughtsForCausalLM.from_base(make_backbone(family)).eval()
    last = model.backbone.model.layers[-1]
    assert type(model.mtp.layer) is type(last)
    for name, tensor in last.state_dict().items():
        assert torch.equal(model.mtp.layer.state_dict()[name], tensor), name
        assert model.mtp.layer.state_dict()[name].data_ptr() != tensor.data_ptr(), "MTP must own its weights"
    h, pos, mask = torch.randn(2, 4, HIDDEN), torch.arange(4).expand(2, 4), torch.ones(2, 4, dtype=torch.int64)
    with torch.no_grad():
        out1 = model.mtp(h, torch.randn(2, 4, HIDDEN), pos, mask)
        out2 = model.mtp(h, torch.randn(2, 4, HIDDEN), pos, mask)
    torch.testing.assert_close(out1, out2)  # fc starts as [I, 0]: z enters through learning only


def test_pad_falls_back_to_the_eos_with_a_warning():
    backbone = make_backbone("qwen2")
    backbone.config.pad_token_id = None  # as in Qwen2.5-Math's config.json
    with pytest.warns(UserWarning, match=rf"no pad_token_id; PAD is its EOS id {EOS}\. Pass pad_token_id="):
        assert SuperThoughtsForCausalLM.from_base(backbone).pad_token_id == EOS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert SuperThoughtsForCausalLM.from_base(backbone, pad_token_id=PAD).pad_token_id == PAD
        assert SuperThoughtsForCausalLM.from_base(make_backbone("qwen2")).pad_token_id == PAD  # the config's


def test_head_logits_is_one_gemm_over_both_heads():
    model = make_model("llama")
    h, h_mtp = torch.randn(3, HIDDEN), torch.randn(3, HIDDEN)
    logits = model.head_logits(h, h_mtp)
    assert logits.shape == (2, 3, VOCAB)
    head = model.backbone.lm_head
    torch.testing.assert_close(logits, torch.stack([head(h), head(h_mtp)]))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("compressor,mtp", [("linear", "decoder"), ("mlp", "mlp")])
def test_gradients_reach_compressor_mtp_backbone(family, compressor, mtp):
    model = SuperThoughtsForCausalLM.from_base(make_backbone(family), compressor_type=compressor, mtp_type=mtp).train()
    out = model(**training_batch())
    out.loss.backward()
    torch.testing.assert_close(out.loss.detach(), out.loss_main + model.config.lambda_mtp * out.loss_mtp)
    assert out.loss_distill is None
    # The z half of the MTP input projection starts at zero but must still learn ...
    assert bool(model.mtp.fc.weight.grad[:, HIDDEN:].abs().sum() > 0)
    # ... so norm_z, behind that zero block, gets gradients from the second step on.
    assert bool(model.mtp.norm_z.weight.grad.abs().sum() == 0)
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    model.zero_grad()
    model(**training_batch()).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), f"no gradient reaches {name}"


def test_loss_matches_manual_cross_entropy():
    model = make_model("qwen2", lambda_mtp=0.5)
    batch = training_batch()
    out = model(**batch)
    assert out.logits_main.shape == out.logits_mtp.shape == (*batch["first_ids"].shape, VOCAB)
    ce_main = F.cross_entropy(out.logits_main.flatten(0, 1), batch["labels_main"].flatten(), ignore_index=-100)
    ce_mtp = F.cross_entropy(out.logits_mtp.flatten(0, 1), batch["labels_mtp"].flatten(), ignore_index=-100)
    torch.testing.assert_close(out.loss_main, ce_main)
    torch.testing.assert_close(out.loss_mtp, ce_mtp)
    torch.testing.assert_close(out.loss, ce_main + 0.5 * ce_mtp)
    # No MTP targets at all (every unit single): the MTP loss is 0, not NaN.
    batch["labels_mtp"].fill_(-100)
    out = model(**batch)
    assert out.loss_mtp == 0 and torch.isfinite(out.loss)


class _BiasedHead(torch.nn.Linear):
    """A head the chunked loss does not handle (a subclass, with a bias): the fallback path."""


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("head", ["linear", "fallback"])
def test_gathered_loss_equals_full_logits_loss(family, head):
    """Loss and gradients of the labelled-rows chunked head equal the old full-logits computation:
    lm_head over every position, then a masked cross-entropy per head."""
    model = make_model(family, lambda_mtp=0.7).train()
    if head == "fallback":
        old = model.backbone.lm_head
        model.backbone.lm_head = _BiasedHead(HIDDEN, VOCAB, bias=True)
        with torch.no_grad():
            model.backbone.lm_head.weight.copy_(old.weight)
            model.backbone.lm_head.bias.normal_()
    batch = training_batch(rho_max=0.5)
    params = [p for p in model.parameters() if p.requires_grad]
    out = model(**batch, return_logits=False)
    assert out.logits_main is None and out.logits_mtp is None
    grads = torch.autograd.grad(out.loss, params)

    h, h_mtp = model.hidden_states(model.embed_inputs(batch["first_ids"], batch["second_ids"], batch["is_unit"]),
                                   batch["position_ids"], batch["attention_mask"])
    lm_head = model.backbone.lm_head
    ce_main = F.cross_entropy(lm_head(h).flatten(0, 1), batch["labels_main"].flatten(), ignore_index=-100)
    ce_mtp = F.cross_entropy(lm_head(h_mtp).flatten(0, 1), batch["labels_mtp"].flatten(), ignore_index=-100)
    reference = ce_main + 0.7 * ce_mtp
    torch.testing.assert_close(out.loss_main, ce_main.detach())
    torch.testing.assert_close(out.loss_mtp, ce_mtp.detach())
    torch.testing.assert_close(out.loss.detach(), reference.detach())
    for p, got, want in zip(params, grads, torch.autograd.grad(reference, params)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6, msg=lambda m: f"{p.shape}: {m}")
    # The same loss whether or not the logits are returned.
    torch.testing.assert_close(model(**batch).loss, out.loss)


def test_loss_without_any_target_keeps_every_parameter_in_the_graph():
    model = make_model("qwen2").train()
    batch = training_batch()
    batch["labels_main"].fill_(-100)
    batch["labels_mtp"].fill_(-100)
    out = model(**batch, return_logits=False)
    assert out.loss == 0 and out.loss_main == 0 and out.loss_mtp == 0
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_distillation_kl_against_frozen_teacher():
    model = make_model("qwen2", distill_weight=0.3)
    teacher = copy.deepcopy(model.backbone)
    model.attach_teacher(teacher)
    assert model.teacher is teacher and not any(p.requires_grad for p in teacher.parameters())
    assert not any(k.startswith("teacher") or k.startswith("_teacher") for k in model.state_dict())
    assert all(p is not tp for p in model.parameters() for tp in teacher.parameters())
    batch = training_batch(with_distill=True)
    # The teacher's [B, T', V] logits are never built: its head weight scores the gathered rows only.
    teacher_head_calls = []
    teacher.lm_head.register_forward_hook(lambda *args: teacher_head_calls.append(1))
    # Nor a KV cache (the teacher's config asks for one): it would live until the loss is computed.
    assert teacher.config.use_cache
    teacher_caches = []
    teacher.model.register_forward_hook(lambda module, args, output: teacher_caches.append(output.past_key_values))
    out = model.train()(**batch)
    assert not teacher_head_calls
    assert teacher_caches == [None]
    # Oracle: KL(teacher || student main head) at each main target, averaged over targets.
    with torch.no_grad():
        t_logits = teacher(input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"]).logits
    rows, cols = torch.nonzero(batch["labels_main"] != -100, as_tuple=True)
    idx = batch["teacher_index"][rows, cols]
    # The teacher position's next uncompressed token is the unit's main target.
    assert torch.equal(batch["teacher_input_ids"][rows, idx + 1], batch["labels_main"][rows, cols])
    p_t = F.log_softmax(t_logits[rows, idx], -1)
    p_s = F.log_softmax(out.logits_main[rows, cols].detach(), -1)
    kl = (p_t.exp() * (p_t - p_s)).sum(-1).mean()
    torch.testing.assert_close(out.loss_distill, kl, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss.detach(), out.loss_main + out.loss_mtp + 0.3 * kl, rtol=1e-5, atol=1e-6)
    out.loss.backward()
    assert all(p.grad is None for p in teacher.parameters())


def test_distillation_errors():
    model = make_model("qwen2", distill_weight=0.3)
    with pytest.raises(ValueError, match="no teacher is attached"):
        model(**training_batch(with_distill=True))
    model.attach_teacher(copy.deepcopy(model.backbone))
    with pytest.raises(ValueError, match="teacher_input_ids"):
        model(**training_batch(with_distill=False))
    with pytest.raises(ValueError, match="vocabulary"):
        other = Qwen2Config(vocab_size=VOCAB + 5, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=4, num_key_value_heads=2)
        model.attach_teacher(AutoModelForCausalLM.from_config(other))


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_right_padding_shortcut_keeps_the_loss(family, monkeypatch):
    # The training forward drops a right-padding mask (causality hides the pads); the loss and
    # gradients must equal those of the masked computation, for the backbone, the MTP layer and
    # the distillation teacher.
    import superthoughts_ext.modeling as modeling

    model = make_model(family, distill_weight=0.5)
    model.attach_teacher(copy.deepcopy(model.backbone))
    batch = training_batch(with_distill=True)
    assert bool((batch["attention_mask"] == 0).any()), "the batch should have right padding"

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        out = model(**batch, return_logits=False)
        out.loss.backward()
        return out.loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    fast_loss, fast_grads = loss_and_grads()
    monkeypatch.setattr(modeling, "causal_mask_for_right_padding", lambda mask: mask)
    masked_loss, masked_grads = loss_and_grads()
    torch.testing.assert_close(fast_loss, masked_loss, rtol=1e-5, atol=1e-6)
    for fast, masked in zip(fast_grads, masked_grads, strict=True):
        torch.testing.assert_close(fast, masked, rtol=1e-4, atol=1e-6)


def test_right_padding_shortcut_keeps_the_baseline_loss():
    backbone = make_backbone("qwen2")
    batch = SuperThoughtsCollator(PAD, EOS, baseline=True)([
        {"prompt_ids": [5, 6, 7], "response_ids": [8, 9, 10, 11]}, {"prompt_ids": [5], "response_ids": [12]}])
    assert bool((batch["attention_mask"] == 0).any())
    masked = backbone(**batch).loss
    fast = backbone(**{**batch, "attention_mask": causal_mask_for_right_padding(batch["attention_mask"])}).loss
    torch.testing.assert_close(fast, masked, rtol=1e-5, atol=1e-6)


def left_padded(lengths: list[int], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    mask = torch.zeros(len(lengths), width, dtype=torch.int64)
    for row, n in enumerate(lengths):
        mask[row, width - n:] = 1
    position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    return mask, position_ids


@pytest.mark.parametrize("family", FAMILIES + ["mistral"])
@pytest.mark.parametrize("mtp", ["decoder", "mlp"])
def test_cache_steps_equal_one_forward(family, mtp):
    model = make_model(family, mtp_type=mtp)
    if family == "mistral" and mtp == "decoder":
        assert model.mtp.sliding  # its cache is a sliding one, so must its training mask be
    batch, width, prefill, capacity = 3, 11, 5, 16
    mask, position_ids = left_padded([11, 8, 5], width)
    g = torch.Generator().manual_seed(0)
    inputs = torch.randn(batch, width, HIDDEN, generator=g)
    with torch.no_grad():
        h_ref, mtp_ref = model.hidden_states(inputs, position_ids, mask)
        cache = model.new_cache(batch, capacity)
        for reuse in range(2):  # second pass: reset() must give the same results
            h, m = model.hidden_states(inputs[:, :prefill], position_ids[:, :prefill], mask[:, :prefill], cache)
            hs, ms = [h], [m]
            full = torch.ones(batch, capacity, dtype=torch.int64)
            full[:, :width] = mask
            for t in range(prefill, width):
                # Alternate the two mask conventions: exactly past + 1 columns, or full width.
                step_mask = full if t % 2 else mask[:, : t + 1]
                h, m = model.hidden_states(inputs[:, t:t + 1], position_ids[:, t:t + 1], step_mask, cache)
                hs.append(h)
                ms.append(m)
            real = mask.bool()
            torch.testing.assert_close(torch.cat(hs, 1)[real], h_ref[real], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(torch.cat(ms, 1)[real], mtp_ref[real], atol=1e-5, rtol=1e-5)
            cache.reset()
    assert (cache.mtp is None) == (mtp == "mlp")


def test_cache_is_static_and_checked():
    model = make_model("qwen2")
    cache = model.new_cache(2, 8, dtype=torch.float32)
    keys = cache.backbone.layers[0].keys
    assert keys.shape[0] == 2 and keys.shape[2] == 8 + 1  # one spare position (kv_cache.WindowedStaticLayer)
    ptr = keys.data_ptr()
    mask = torch.ones(2, 3, dtype=torch.int64)
    with torch.no_grad():
        model.hidden_states(torch.randn(2, 3, HIDDEN), torch.arange(3).expand(2, 3), mask, cache)
    assert cache.backbone.layers[0].keys.data_ptr() == ptr  # written in place, never reallocated
    with pytest.raises(ValueError, match="batch 2"):
        model.hidden_states(torch.randn(1, 1, HIDDEN), torch.zeros(1, 1, dtype=torch.int64), mask[:1], cache)
    # A ninth position does not fit: the mask that covers it is refused before anything is written.
    with pytest.raises(ValueError, match="covers 9 positions, the cache holds 8"):
        model.hidden_states(torch.randn(2, 6, HIDDEN), torch.arange(3, 9).expand(2, 6), torch.ones(2, 9), cache)
    with pytest.raises(ValueError, match="attention_mask"):
        model.hidden_states(torch.randn(2, 3, HIDDEN), torch.arange(3).expand(2, 3), mask[:, :2])
    with pytest.raises(ValueError, match="inputs_embeds"):
        model.hidden_states(torch.randn(2, HIDDEN), torch.arange(3).expand(2, 3), mask)


def test_cache_follows_an_explicit_head_dim():
    # A config whose head_dim is set apart from hidden_size / heads (16 here, not 32 / 4): the
    # static caches must be that wide, and decoding through them must give the tokens of
    # transformers' own generate.
    from superthoughts_ext.generate import generate

    config = Qwen2Config(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
                         pad_token_id=PAD, eos_token_id=EOS)
    torch.manual_seed(0)
    backbone = AutoModelForCausalLM.from_config(config).eval()
    model = SuperThoughtsForCausalLM.from_base(backbone).eval()
    cache = model.new_cache(2, 8)
    assert cache.backbone.layers[0].keys.shape[-1] == 16 and cache.mtp.layers[0].keys.shape[-1] == 16
    ids = torch.tensor([[5, 6, 7, 8], [PAD, 9, 10, 11]])
    mask = (ids != PAD).long()
    ours = generate(backbone, ids, mask, max_new_tokens=6, mode="standard", eos_token_id=EOS)
    theirs = backbone.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                               eos_token_id=EOS, pad_token_id=PAD)
    want = [row[: row.index(EOS) + 1] if EOS in row else row for row in theirs[:, ids.shape[1]:].tolist()]
    assert ours.sequences == want


def test_new_cache_refuses_an_empty_batch():
    # A batch of 0 rows has nothing to decode; its cache is refused up front.
    model = make_model("qwen2")
    with pytest.raises(ValueError, match=r"must be >= 1, got 0, 8"):
        model.new_cache(0, 8)
