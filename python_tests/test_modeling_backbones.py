"""SuperThoughtsForCausalLM over backbones whose layers differ by index (MoE after dense layers,
NoPE layers), post-norm OLMo 2, and what from_base / save_pretrained / the config refuse or accept
beyond the Qwen2 / Llama basics of test_modeling.py.
"""
from __future__ import annotations

import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from superthoughts_ext.generate import generate  # noqa: E402
from superthoughts_ext.modeling import SuperThoughtsConfig, SuperThoughtsForCausalLM  # noqa: E402
from test_modeling import training_batch  # noqa: E402

VOCAB = 61


def backbone(model_type: str, **overrides):
    values = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, eos_token_id=1,
                  bos_token_id=None)
    values.update(overrides)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **values))


MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16)


@pytest.mark.parametrize("model_type, overrides", [
    ("qwen3_moe", dict(MOE, mlp_only_layers=[0])),  # layer 0 dense, the last one MoE
    ("qwen2_moe", dict(MOE, shared_expert_intermediate_size=16, decoder_sparse_step=2)),  # only layer 1 MoE
    ("smollm3", dict(num_hidden_layers=4)),  # its last layer has no RoPE
])
def test_the_mtp_layer_is_built_as_the_last_layer(model_type, overrides):
    # Built as layer 0, it had layer 0's structure: a state_dict error for MoE, RoPE where the
    # last layer has none.
    base = backbone(model_type, **overrides)
    model = SuperThoughtsForCausalLM.from_base(base).eval()
    last = base.model.layers[-1]
    assert type(model.mtp.layer.mlp) is type(last.mlp)
    assert getattr(model.mtp.layer.self_attn, "use_rope", None) == getattr(last.self_attn, "use_rope", None)
    for name, tensor in last.state_dict().items():
        assert torch.equal(model.mtp.layer.state_dict()[name], tensor), name
    # Its cache index is the MTP's own one-layer cache's: decoding runs, and the training loss too.
    ids = torch.randint(2, VOCAB, (2, 7))
    out = generate(model, ids, max_new_tokens=6, mode="pairs", ignore_eos=True)
    assert out.num_tokens == [6, 6]
    assert torch.isfinite(model(**training_batch(), return_logits=False).loss)


def test_multi_head_latent_attention_is_refused():
    deepseek = backbone("deepseek_v3", first_k_dense_replace=1, n_routed_experts=4, num_experts_per_tok=2,
                        moe_intermediate_size=16, n_group=1, topk_group=1, kv_lora_rank=16, q_lora_rank=16,
                        qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, head_dim=8)
    with pytest.raises(NotImplementedError, match=r"multi-head latent attention \(deepseek_v3, kv_lora_rank=16\)"):
        SuperThoughtsForCausalLM.from_base(deepseek)


@pytest.mark.parametrize("model_type, post_norm", [("olmo2", True), ("llama", False)])
def test_the_mlp_mtp_copies_the_last_mlp_block_pre_or_post_norm(model_type, post_norm):
    # OLMo 2's post_attention_layernorm normalises the attention output; its MLP block is
    # x + post_feedforward_layernorm(mlp(x)).
    base = backbone(model_type)
    model = SuperThoughtsForCausalLM.from_base(base, mtp_type="mlp").eval()
    last = base.model.layers[-1]
    x = torch.randn(1, 3, 32)
    with torch.no_grad():
        block = x + (last.post_feedforward_layernorm(last.mlp(x)) if post_norm
                     else last.mlp(last.post_attention_layernorm(x)))
        copied = x + (model.mtp.mlp_norm(model.mtp.mlp(x)) if model.mtp.post_norm
                      else model.mtp.mlp(model.mtp.mlp_norm(x)))
    assert model.mtp.post_norm is post_norm
    torch.testing.assert_close(copied, block, rtol=0, atol=0)


def test_a_negative_pad_id_means_none_and_falls_back_to_the_eos():
    with pytest.warns(UserWarning, match="no pad_token_id; PAD is its EOS id 1"):
        model = SuperThoughtsForCausalLM.from_base(backbone("llama", pad_token_id=-1))  # Llama 1 conversions
    assert model.pad_token_id == 1


# peft (0.21) reads `is_gradient_checkpointing`, deprecated in transformers 5.25 (train_utils filters it too).
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.* is deprecated:FutureWarning")
def test_peft_adapters_are_refused_with_what_to_do():
    peft = pytest.importorskip("peft")
    wrapped = peft.get_peft_model(backbone("qwen2"), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for model in (wrapped, wrapped.base_model.model):  # the PeftModel, and the model with adapters injected
        with pytest.raises(TypeError, match=r"holds peft adapters; .*merge_and_unload\(\)"):
            SuperThoughtsForCausalLM.from_base(model)
    with pytest.raises(TypeError, match="expected a checkpoint directory or a PreTrainedModel, got NoneType"):
        SuperThoughtsForCausalLM.from_base(None)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.* is deprecated:FutureWarning")
def test_saving_a_model_with_peft_adapters_is_refused_with_what_to_do(tmp_path):
    # get_peft_model injects the adapters into the model itself: its own save_pretrained wrote
    # renamed weights (q_proj.base_layer.weight) that from_pretrained could not load.
    peft = pytest.importorskip("peft")
    model = SuperThoughtsForCausalLM.from_base(backbone("qwen2")).eval()
    config = peft.LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["compressor"])
    wrapped = peft.get_peft_model(model, config)
    with pytest.raises(TypeError, match=r"holds peft adapters \(.*base_layer.*merge_and_unload\(\)"):
        model.save_pretrained(tmp_path / "unmerged")
    assert not (tmp_path / "unmerged").exists()
    merged = wrapped.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    loaded = SuperThoughtsForCausalLM.from_pretrained(tmp_path / "merged")
    for name, tensor in merged.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_a_dtype_name_casts_a_built_model():
    model = SuperThoughtsForCausalLM.from_base(backbone("qwen2"), dtype="bfloat16")
    assert model.backbone.get_input_embeddings().weight.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be a torch.dtype or its name, got 'bf17'"):
        SuperThoughtsForCausalLM.from_base(backbone("qwen2"), dtype="bf17")


def test_saving_over_another_model_removes_its_weight_files(tmp_path):
    backbone("llama", hidden_size=64, intermediate_size=256).save_pretrained(tmp_path, max_shard_size="20KB")
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
    model = SuperThoughtsForCausalLM.from_base(backbone("qwen2")).eval()
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]
    reloaded = SuperThoughtsForCausalLM.from_pretrained(tmp_path)
    batch = training_batch()
    assert torch.equal(model(**batch).logits_main, reloaded(**batch).logits_main)


def test_config_numbers_of_other_types():
    np = pytest.importorskip("numpy")
    config = SuperThoughtsConfig(rho_max=np.float32(0.5), lambda_mtp=2, pad_token_id=np.int64(3))
    assert (config.rho_max, config.lambda_mtp, config.pad_token_id) == (0.5, 2.0, 3)
    assert [type(v) for v in (config.rho_max, config.lambda_mtp, config.pad_token_id)] == [float, float, int]
    # A type error says so (it read "must be in [0.0, 1.0], got '0.5'").
    for bad in ("0.5", torch.tensor(0.5)):
        with pytest.raises(ValueError, match=f"rho_max must be a number, got {type(bad).__name__}"):
            SuperThoughtsConfig(rho_max=bad)
    with pytest.raises(ValueError, match="pad_token_id must be an int, got float 3.0"):
        SuperThoughtsConfig(pad_token_id=3.0)


def test_one_labels_row_without_the_other_is_refused():
    model = SuperThoughtsForCausalLM.from_base(backbone("qwen2"))
    batch = training_batch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for missing in ("labels_main", "labels_mtp"):
            given = "labels_mtp" if missing == "labels_main" else "labels_main"
            # labels_mtp alone returned loss None, silently.
            with pytest.raises(ValueError, match=f"{given} given without the other labels row"):
                model(**{k: v for k, v in batch.items() if k != missing})


@pytest.mark.parametrize("model_type, overrides", [
    ("olmo3", dict(sliding_window=4)),  # rotary embeddings keyed by layer type
    ("qwen3_5_text", dict(num_hidden_layers=4, head_dim=8, linear_num_value_heads=2, linear_num_key_heads=2,
                          linear_key_head_dim=8, linear_value_head_dim=8)),  # multimodal RoPE over 3-D positions
])
def test_the_mtp_layer_takes_the_backbones_rotary_embedding(model_type, overrides):
    # The MTP layer called the rotary embedding as Llama's: OLMo 3's wants the layer type,
    # Qwen3.5's positions per section; both were accepted and then failed at their first forward.
    from test_generate import slow_decode

    model = SuperThoughtsForCausalLM.from_base(backbone(model_type, **overrides)).eval()
    prompt = torch.randint(2, VOCAB, (1, 7))
    fast = generate(model, prompt, max_new_tokens=10, mode="pairs", eos_token_id=1)
    assert fast.sequences[0] == slow_decode(model, prompt[0].tolist(), 10, 0.0, 1)
    reference = generate(model, prompt, max_new_tokens=10, mode="superthoughts", threshold=0.2, eos_token_id=1,
                         use_kernels=False)
    assert generate(model, prompt, max_new_tokens=10, mode="superthoughts", threshold=0.2,
                    eos_token_id=1).sequences == reference.sequences
    assert torch.isfinite(model(**training_batch(), return_logits=False).loss)


@pytest.mark.parametrize("model_type, overrides", [
    # Falcon's attention tests for "sdpa" by name.
    ("falcon", dict(new_decoder_architecture=False, multi_query=False, num_key_value_heads=4,
                    tie_word_embeddings=False)),
    ("doge", {}),  # an attention mask per head
])
def test_plain_models_of_other_attention_code_decode_as_transformers_does(model_type, overrides):
    # Falcon took its eager branch under the folded attention's name (with an SDPA mask): other
    # tokens than transformers' for a left-padded batch; Doge's per-head mask failed to broadcast.
    model = backbone(model_type, **overrides).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(20)  # logits far apart: a wrong mask changes tokens
    prompts = [[2, 17, 33, 50, 4, 27, 40], [2, *range(30, 41)], [2, 9, 30]]
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    want = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, eos_token_id=1,
                          pad_token_id=0)[:, width:].tolist()
    got = generate(model, ids, mask, max_new_tokens=6, mode="standard", eos_token_id=1).sequences
    assert got == [row[: row.index(1) + 1] if 1 in row else row for row in want]


def test_values_of_another_width_than_keys_are_refused():
    # MiMo-V2: the static cache sized values as keys, and the first cache write failed.
    mimo = backbone("mimo_v2_flash", head_dim=8, v_head_dim=16)
    with pytest.raises(NotImplementedError, match=r"SuperThoughts: backbones with keys and values of other widths "
                                                  r"\(mimo_v2_flash, head_dim=8, v_head_dim=16\) are not supported"):
        SuperThoughtsForCausalLM.from_base(mimo)
    # A plain model decoded alone: the cache refuses it (the first cache write failed on its shapes).
    with pytest.raises(NotImplementedError, match=r"generate: models with keys and values of other widths"):
        generate(mimo, torch.randint(2, VOCAB, (1, 5)), max_new_tokens=2, mode="standard")
    # Gemma 4 gives no single head_dim (transformers raises for it): its embedding scale is named.
    gemma4 = backbone("gemma4_text", head_dim=8, global_head_dim=8)
    with pytest.raises(NotImplementedError, match="scale their input embeddings"):
        SuperThoughtsForCausalLM.from_base(gemma4)


def test_the_mlp_mtp_refuses_layers_without_an_mlp_and_takes_an_moe_blocks_output():
    granite = backbone("granitemoe", num_local_experts=4, num_experts_per_tok=2)
    with pytest.raises(NotImplementedError, match=r"mtp_type='mlp' copies the last layer's mlp and its norm; "
                                                  r"GraniteMoeDecoderLayer has no mlp \(use mtp_type='decoder'\)"):
        SuperThoughtsForCausalLM.from_base(granite, mtp_type="mlp")
    # GPT-OSS's MoE block returns (hidden, router scores): "Tensor + tuple" at the first step.
    model = SuperThoughtsForCausalLM.from_base(backbone("gpt_oss", num_local_experts=4, num_experts_per_tok=2,
                                                        head_dim=8), mtp_type="mlp").eval()
    assert generate(model, torch.randint(2, VOCAB, (1, 5)), max_new_tokens=4, mode="pairs",
                    ignore_eos=True).num_tokens == [4]


def test_a_last_layer_of_another_kind_than_attention_is_refused_for_the_decoder_mtp():
    # Zaya's "hybrid" layers take a dict of masks and a conv state: accepted, then the first
    # SuperThoughts step failed inside the layer. The MLP MTP needs neither.
    zaya = backbone("zaya", head_dim=8)
    with pytest.raises(NotImplementedError, match=r"the decoder MTP copies the last layer, a 'hybrid' layer, whose mask "
                                                  r"and state it does not build .*use mtp_type='mlp'"):
        SuperThoughtsForCausalLM.from_base(zaya)
    model = SuperThoughtsForCausalLM.from_base(zaya, mtp_type="mlp").eval()
    assert generate(model, torch.randint(2, VOCAB, (1, 5)), max_new_tokens=4, mode="pairs",
                    ignore_eos=True).num_tokens == [4]


def test_values_narrower_than_keys_are_refused_too():
    mimo = backbone("mimo_v2_flash", head_dim=16, v_head_dim=8)
    with pytest.raises(NotImplementedError, match=r"keys and values of other widths \(mimo_v2_flash, "
                                                  r"head_dim=16, v_head_dim=8\)"):
        SuperThoughtsForCausalLM.from_base(mimo)


def test_the_mlp_mtp_names_a_layer_without_its_norm():
    # Cohere's parallel block has no post_attention_layernorm (an AttributeError in deepcopy before).
    cohere = backbone("cohere", logit_scale=1.0)
    with pytest.raises(NotImplementedError, match=r"CohereDecoderLayer has no post_attention_layernorm "
                                                  r"\(use mtp_type='decoder'\)"):
        SuperThoughtsForCausalLM.from_base(cohere, mtp_type="mlp")


@pytest.mark.parametrize("model_type, overrides", [
    # Full and sliding layers of other rope_theta (500000, 10000): the last (sliding) layer's is taken.
    ("mellum", dict(layer_types=["full_attention", "sliding_attention"], sliding_window=4)),
    ("qwen3_5_text", dict(num_hidden_layers=4, head_dim=8, linear_num_value_heads=2, linear_num_key_heads=2,
                          linear_key_head_dim=8, linear_value_head_dim=8)),
])
def test_the_mtp_rotary_embedding_is_the_backbones_for_its_last_layer(model_type, overrides):
    # Fast and slow decoding share the MTP layer: only this pins its positions to the backbone's.
    base = backbone(model_type, **overrides)
    model = SuperThoughtsForCausalLM.from_base(base).eval()
    x, positions = torch.randn(2, 5, 32), torch.arange(3, 8).repeat(2, 1)
    rotary = base.model.rotary_emb
    if model_type == "mellum":
        want = rotary(x, positions, base.config.layer_types[-1])
    else:  # the text positions in each of the 3 sections, as Qwen3.5's text model passes them
        want = rotary(x, positions[None].expand(3, 2, 5))
    got = model.mtp._rotary(x, positions)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
