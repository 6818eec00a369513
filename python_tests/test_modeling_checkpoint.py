"""SuperThoughtsForCausalLM checkpoints on the tiny random Qwen2 / Llama models of
test_modeling.py, CPU.

Covers: save / load round trips (bit-identical logits, tied heads, float32 RoPE under bf16),
from_base and load_model on plain checkpoints, the errors for bad paths, configs and
vocabularies, and the transformers surface that loaders and trainers call (tie_weights,
num_parameters, gradient checkpointing).
"""
from __future__ import annotations

import copy
import json

import pytest
import torch

pytest.importorskip("transformers")
from test_modeling import EOS, FAMILIES, HIDDEN, PAD, VOCAB, make_backbone, make_model, training_batch  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    Gemma2Config,
    GraniteConfig,
    OlmoConfig,
    OPTConfig,
    Qwen2Config,
)

from superthoughts_ext.modeling import (  # noqa: E402
    SuperThoughtsConfig,
    SuperThoughtsForCausalLM,
    is_superthoughts_checkpoint,
    load_model,
)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("compressor,mtp", [("linear", "decoder"), ("mlp", "mlp")])
def test_save_load_round_trip_bit_identical(tmp_path, family, compressor, mtp):
    model = make_model(family, compressor_type=compressor, mtp_type=mtp, lambda_mtp=0.7, threshold=0.99)
    model.attach_teacher(copy.deepcopy(model.backbone))
    model.backbone.generation_config.eos_token_id = [EOS, 5]  # e.g. <|im_end|> and <|endoftext|>
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["superthoughts"]["compressor_type"] == compressor and saved["hidden_size"] == HIDDEN
    assert is_superthoughts_checkpoint(tmp_path)
    loaded = load_model(tmp_path)
    assert isinstance(loaded, SuperThoughtsForCausalLM) and not loaded.training and loaded.teacher is None
    assert loaded.config == model.config
    assert loaded.backbone.generation_config.eos_token_id == [EOS, 5]
    assert loaded.backbone.config.tie_word_embeddings == model.backbone.config.tie_word_embeddings
    tied = loaded.backbone.lm_head.weight is loaded.get_input_embeddings().weight
    assert tied == (family == "qwen2")
    assert set(loaded.state_dict()) == set(model.state_dict())
    batch = training_batch()
    with torch.no_grad():
        a, b = model(**batch), loaded(**batch)
    assert torch.equal(a.logits_main, b.logits_main) and torch.equal(a.logits_mtp, b.logits_mtp)
    half = SuperThoughtsForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert_rope_like_backbone(half)


def assert_rope_like_backbone(model):
    if model.config.mtp_type != "decoder":
        return
    for name, buffer in model.backbone.model.rotary_emb.named_buffers():
        mine = getattr(model.mtp.rotary_emb, name)
        assert mine.dtype == buffer.dtype == torch.float32 and torch.equal(mine, buffer), name


@pytest.mark.parametrize("family", FAMILIES)
def test_mtp_rope_frequencies_stay_float32_in_bf16(tmp_path, family):
    # transformers builds the backbone's RoPE frequencies in float32 whatever the weights'
    # dtype; rounding the MTP layer's to bf16 would turn its angles by up to radians at
    # distances of thousands of positions.
    make_backbone(family).save_pretrained(tmp_path)
    model = SuperThoughtsForCausalLM.from_base(tmp_path, dtype=torch.bfloat16)
    assert model.mtp.layer.self_attn.q_proj.weight.dtype == torch.bfloat16
    assert_rope_like_backbone(model)


@pytest.mark.parametrize("family", FAMILIES)
def test_from_base_of_a_module_in_bf16_keeps_float32_rope_and_reloads_bit_identical(tmp_path, family):
    # A built model cast by from_base(dtype=) must match one loaded in that dtype: module.to()
    # rounds the RoPE frequencies too, which no checkpoint stores, so the reload differed.
    model = SuperThoughtsForCausalLM.from_base(make_backbone(family), dtype=torch.bfloat16).eval()
    assert model.mtp.layer.self_attn.q_proj.weight.dtype == torch.bfloat16
    assert_rope_like_backbone(model)
    assert model.backbone.model.rotary_emb.inv_freq.dtype == torch.float32
    model.save_pretrained(tmp_path)
    # The config names the stored dtype (the built module's config still says float32).
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    loaded = SuperThoughtsForCausalLM.from_pretrained(tmp_path)
    batch = training_batch()
    with torch.no_grad():
        a, b = model(**batch), loaded(**batch)
    assert torch.equal(a.logits_main, b.logits_main) and torch.equal(a.logits_mtp, b.logits_mtp)


def test_a_truncated_weights_file_is_named(tmp_path):
    # An interrupted save of a 30-60 GB file: safetensors' own error names no file.
    make_model("qwen2").save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"model.safetensors' cannot be read .*truncated or corrupt"):
        SuperThoughtsForCausalLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_model_over_max_shard_size_saves_in_shards_and_reloads_bit_identical(tmp_path, family):
    # One model.safetensors held a 14B model in float32 (train's default dtype; 60.6 GB with the
    # compressor and MTP): over the Hub's 50 GB per-file limit, while transformers shards a
    # baseline run's output at 50 GB. The tiny model's ~100 KB in 20 KB shards stands in.
    model = make_model(family)
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    shards = sorted(p.name for p in tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and not (tmp_path / "model.safetensors").exists()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == shards
    tied = family == "qwen2"
    # A tied lm_head is stored once, as in one file.
    assert set(index["weight_map"]) == set(model.state_dict()) - ({"backbone.lm_head.weight"} if tied else set())
    loaded = SuperThoughtsForCausalLM.from_pretrained(tmp_path)
    assert (loaded.backbone.lm_head.weight is loaded.get_input_embeddings().weight) == tied
    batch = training_batch()
    with torch.no_grad():
        a, b = model(**batch), loaded(**batch)
    assert torch.equal(a.logits_main, b.logits_main) and torch.equal(a.logits_mtp, b.logits_mtp)
    # Saved again as one file (the default size): the shards and their index go.
    loaded.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    (tmp_path / shards[-1]).unlink()
    missing = rf"from_pretrained: .*model.safetensors.index.json' names {shards[-1]}, which is not there"
    with pytest.raises(FileNotFoundError, match=missing):
        SuperThoughtsForCausalLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("family", FAMILIES)
def test_from_base_of_a_sharded_bf16_checkpoint_keeps_its_dtype_and_tie(tmp_path, family):
    # As Qwen2.5-Math comes: shards + index, "dtype": "bfloat16" in config.json, several EOS ids
    # in generation_config.json; no dtype given must not load it in float32 (twice the memory).
    base = make_backbone(family).to(torch.bfloat16)
    base.generation_config.eos_token_id = [EOS, 5]
    base.save_pretrained(tmp_path / "plain", max_shard_size="20KB")
    assert (tmp_path / "plain" / "model.safetensors.index.json").is_file()
    model = SuperThoughtsForCausalLM.from_base(tmp_path / "plain")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    backbone = model.backbone
    assert (backbone.lm_head.weight is backbone.get_input_embeddings().weight) == (family == "qwen2")
    assert backbone.generation_config.eos_token_id == [EOS, 5]
    for name, tensor in base.state_dict().items():
        assert torch.equal(backbone.state_dict()[name], tensor), name
    model.save_pretrained(tmp_path / "st")
    loaded = SuperThoughtsForCausalLM.from_pretrained(tmp_path / "st")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert (loaded.backbone.lm_head.weight is loaded.get_input_embeddings().weight) == (family == "qwen2")


def test_the_default_shard_size_is_transformers_own():
    # A SuperThoughts run's output then splits where its baseline's (transformers' save) does.
    import inspect

    from transformers import PreTrainedModel

    from superthoughts_ext.checkpoint import MAX_SHARD_SIZE

    default = inspect.signature(PreTrainedModel.save_pretrained).parameters["max_shard_size"].default
    assert MAX_SHARD_SIZE == default
    assert inspect.signature(SuperThoughtsForCausalLM.save_pretrained).parameters["max_shard_size"].default == default


def test_from_base_paths_and_load_model_baseline(tmp_path):
    base = make_backbone("llama")
    base.save_pretrained(tmp_path / "plain")
    assert not is_superthoughts_checkpoint(tmp_path / "plain") and not is_superthoughts_checkpoint(tmp_path / "none")
    plain = load_model(tmp_path / "plain")
    assert type(plain).__name__ == "LlamaForCausalLM"
    wrapped = SuperThoughtsForCausalLM.from_base(tmp_path / "plain", mtp_type="mlp", pad_token_id=5)
    assert wrapped.pad_token_id == 5 and wrapped.config.mtp_type == "mlp"
    assert torch.equal(wrapped.get_input_embeddings().weight, base.get_input_embeddings().weight)
    # A loaded backbone is in eval mode; the new compressor and MTP must not be left training
    # (their dropout would act while the backbone's does not).
    assert [m.training for m in (wrapped, wrapped.backbone, wrapped.compressor, wrapped.mtp)] == [False] * 4
    wrapped.save_pretrained(tmp_path / "st")
    with pytest.raises(ValueError, match="already a SuperThoughts checkpoint"):
        SuperThoughtsForCausalLM.from_base(tmp_path / "st")
    with pytest.raises(TypeError, match="already a SuperThoughtsForCausalLM"):
        SuperThoughtsForCausalLM.from_base(wrapped)


def test_path_errors_name_the_path(tmp_path):
    missing = tmp_path / "no_such_model"
    for call in (lambda: SuperThoughtsForCausalLM.from_base(missing), lambda: load_model(missing),
                 lambda: SuperThoughtsForCausalLM.from_pretrained(missing)):
        with pytest.raises(FileNotFoundError, match="no_such_model"):
            call()
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="empty_dir.*not a model directory"):
        SuperThoughtsForCausalLM.from_base(tmp_path / "empty_dir")
    # A file (say the data file passed by mistake) exists: "does not exist" would mislead.
    (tmp_path / "train.jsonl").write_text("{}\n")
    with pytest.raises(FileNotFoundError, match="train.jsonl' is a file, not a model directory"):
        load_model(tmp_path / "train.jsonl")
    make_backbone("qwen2").save_pretrained(tmp_path / "plain_qwen")
    with pytest.raises(ValueError, match="plain_qwen.*not a SuperThoughts checkpoint"):
        SuperThoughtsForCausalLM.from_pretrained(tmp_path / "plain_qwen")
    # A hand-edited config.json whose SuperThoughts section is not an object, or holds a bad value.
    make_model("qwen2").save_pretrained(tmp_path / "edited")
    config = json.loads((tmp_path / "edited" / "config.json").read_text())
    for section, message in ((None, "got NoneType"), ({"rho_max": 2}, "rho_max must be in")):
        config["superthoughts"] = section
        (tmp_path / "edited" / "config.json").write_text(json.dumps(config))
        with pytest.raises(ValueError, match=f"edited/config.json, section 'superthoughts': .*{message}"):
            SuperThoughtsForCausalLM.from_pretrained(tmp_path / "edited")
    (tmp_path / "no_weights").mkdir()
    (tmp_path / "no_weights" / "config.json").write_text((tmp_path / "plain_qwen" / "config.json").read_text())
    with pytest.raises(ValueError, match="no_weights"):
        SuperThoughtsForCausalLM.from_base(tmp_path / "no_weights")


def test_config_and_vocab_errors():
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['lamda_mtp'\]"):
        SuperThoughtsForCausalLM.from_base(make_backbone("qwen2"), lamda_mtp=1.0)
    with pytest.raises(ValueError, match="compressor_type"):
        SuperThoughtsConfig(compressor_type="conv")
    with pytest.raises(ValueError, match="mtp_type"):
        SuperThoughtsConfig(mtp_type="rnn")
    with pytest.raises(ValueError, match="rho_max"):
        SuperThoughtsConfig(rho_max=1.5)
    with pytest.raises(ValueError, match="lambda_mtp must be >= 0.0, got nan"):
        SuperThoughtsConfig(lambda_mtp=float("nan"))
    with pytest.raises(ValueError, match="threshold must be in"):
        SuperThoughtsConfig(threshold=float("nan"))
    gemma = Gemma2Config(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, final_logit_softcapping=None,
                         attn_logit_softcapping=None, pad_token_id=PAD, eos_token_id=EOS)
    with pytest.raises(NotImplementedError, match="scale their input embeddings"):
        SuperThoughtsForCausalLM.from_base(AutoModelForCausalLM.from_config(gemma))
    # Granite divides its logits by logits_scaling after lm_head: the heads' confidences would differ.
    granite = GraniteConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, logits_scaling=8.0, pad_token_id=PAD,
                            eos_token_id=EOS)
    with pytest.raises(NotImplementedError, match="logits_scaling=8.0"):
        SuperThoughtsForCausalLM.from_base(AutoModelForCausalLM.from_config(granite))
    # Families without the parts the MTP head copies get the decoder-only message, not an AttributeError.
    opt = OPTConfig(vocab_size=VOCAB, hidden_size=HIDDEN, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                    word_embed_proj_dim=HIDDEN, pad_token_id=PAD, eos_token_id=EOS)
    with pytest.raises(TypeError, match="OPTForCausalLM has no .model.norm"):
        SuperThoughtsForCausalLM.from_base(AutoModelForCausalLM.from_config(opt))
    olmo = OlmoConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, pad_token_id=PAD, eos_token_id=EOS)
    with pytest.raises(NotImplementedError, match=r"OlmoLayerNorm\(hidden_size, eps=...\) fails"):
        SuperThoughtsForCausalLM.from_base(AutoModelForCausalLM.from_config(olmo))
    for name in ("lambda_mtp", "rho_max", "distill_weight", "pad_token_id"):  # bool is an int to isinstance
        with pytest.raises(ValueError, match=f"{name} must be .*got (bool )?True"):
            SuperThoughtsConfig.from_dict({name: True})
    with pytest.raises(ValueError, match="expected a mapping of field names to values, got NoneType"):
        SuperThoughtsConfig.from_dict(None)
    with pytest.raises(ValueError, match=f"pad_token_id {VOCAB} is out of range for vocabulary size {VOCAB}"):
        SuperThoughtsForCausalLM.from_base(make_backbone("qwen2"), pad_token_id=VOCAB)
    model = make_model("qwen2")

    class Tok:
        def __len__(self) -> int:
            return VOCAB + 10

    with pytest.raises(ValueError, match="does not belong to this model"):
        model.check_tokenizer(Tok())
    base = make_backbone("qwen2")
    base.config.pad_token_id = base.config.eos_token_id = None
    with pytest.raises(ValueError, match="pass pad_token_id"):
        SuperThoughtsForCausalLM.from_base(base)


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_tie_weights_reties_a_rebuilt_head(family):
    # What a loader that re-creates parameters does (accelerate's FSDP loading): the head gets
    # its own copy of the embedding, then the loader calls tie_weights() on the wrapped model.
    model = make_model(family)
    head = model.get_output_embeddings()
    head.weight = torch.nn.Parameter(head.weight.detach().clone())
    model.tie_weights()
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert tied == (family == "qwen2")



@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_num_parameters_follows_transformers(family):
    model = make_model(family)
    backbone = model.backbone
    extra = sum(p.numel() for p in model.compressor.parameters()) + sum(p.numel() for p in model.mtp.parameters())
    assert model.num_parameters() == backbone.num_parameters() + extra
    # Qwen2 here ties lm_head to the embedding: both drop out together, as in transformers.
    assert model.num_parameters(exclude_embeddings=True) == backbone.num_parameters(exclude_embeddings=True) + extra
    assert model.main_input_name == "first_ids"
    for p in backbone.parameters():
        p.requires_grad_(False)
    assert model.num_parameters(only_trainable=True) == extra


# Qwen2.5-Math-1.5B / 7B / 14B: (hidden, layers, heads, kv heads, intermediate, vocabulary, tied
# lm_head), and the parameters of backbone, compressor and MTP that docs/models.md's "Model sizes" table gives.
QWEN25_MATH = {
    "1.5B": ((1536, 28, 12, 2, 8960, 151936, True), (1_543_714_304, 4_720_128, 51_521_024)),
    "7B": ((3584, 28, 28, 4, 18944, 152064, False), (7_615_616_512, 25_693_696, 258_758_656)),
    "14B": ((5120, 48, 40, 8, 13824, 152064, False), (14_770_033_664, 52_433_920, 327_712_768)),
}


@pytest.mark.parametrize("name", list(QWEN25_MATH))
def test_parameter_counts_of_the_qwen25_math_shapes(name):
    (hidden, layers, heads, kv_heads, intermediate, vocab, tied), counts = QWEN25_MATH[name]
    config = Qwen2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, intermediate_size=intermediate, vocab_size=vocab,
                         tie_word_embeddings=tied, eos_token_id=151645)
    with torch.device("meta"):  # shapes without memory
        model = SuperThoughtsForCausalLM.from_base(AutoModelForCausalLM.from_config(config), pad_token_id=151643)
    backbone = model.backbone
    assert (backbone.lm_head.weight is backbone.get_input_embeddings().weight) == tied
    # The MTP head reads the backbone's lm_head: no [V, H] matrix of its own, and the extras
    # share no tensor with the backbone (a tied embedding stays one matrix).
    assert all(vocab not in p.shape for p in [*model.compressor.parameters(), *model.mtp.parameters()])
    extras = {id(p) for p in [*model.compressor.parameters(), *model.mtp.parameters()]}
    assert not extras & {id(p) for p in backbone.parameters()}
    found = tuple(sum(p.numel() for p in part.parameters()) for part in (backbone, model.compressor, model.mtp))
    assert found == counts
    assert model.num_parameters() == sum(counts)


def test_trainer_gradient_checkpointing_checkpoints_the_backbone(tmp_path):
    # transformers.Trainer(args=TrainingArguments(gradient_checkpointing=True)) calls the model's
    # gradient_checkpointing_enable (activation_checkpointing_enable from 5.23 on): an AttributeError
    # inside Trainer.train before the wrapper had them.
    from transformers import Trainer, TrainingArguments

    model = make_model("qwen2").train()
    batch = training_batch()
    params = [p for p in model.parameters() if p.requires_grad]
    expected = torch.autograd.grad(model(**batch, return_logits=False).loss, params)
    rows = [{k: v[i] for k, v in batch.items()} for i in range(len(batch["first_ids"]))]
    name = ("activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
            else "gradient_checkpointing")
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, max_steps=1, learning_rate=0.0,
                             per_device_train_batch_size=len(rows), save_strategy="no", **{name: True})
    Trainer(model=model, args=args, train_dataset=rows).train()
    assert all(layer.gradient_checkpointing for layer in model.backbone.model.layers)
    actual = torch.autograd.grad(model(**batch, return_logits=False).loss, params)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e)
