"""LoRA training runs: only the adapters, the compressor and the MTP head train; target names that
match no module, or fused layers that the default targets miss, are named; an adapted lm_head tied to
the embedding is untied, so the saved model is the one trained. Tiny random models on CPU
(test_train.py's fixtures). (Resuming LoRA runs: test_train_resume.py.)
"""
from __future__ import annotations

import re
import warnings

import pytest
import torch

pytest.importorskip("transformers")
import test_train  # noqa: E402
from test_train import FAST, ROWS, make_tokenizer  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from superthoughts_ext import train_utils  # noqa: E402
from superthoughts_ext.train import TrainOptions, train  # noqa: E402

base_dirs = test_train.base_dirs  # the saved tiny base checkpoints (a fixture)


def test_lora_trains_only_lora_compressor_mtp(base_dirs, tmp_path):
    from superthoughts_ext.modeling import SuperThoughtsForCausalLM, load_model

    st = SuperThoughtsForCausalLM.from_base(str(base_dirs["llama"]), pad_token_id=0)
    wrapped = train_utils.apply_lora(st, r=4, alpha=8, dropout=0.0, targets=("q_proj", "v_proj"),
                                     superthoughts=True)
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable), trainable
    assert any(".compressor." in n for n in trainable) and any(".mtp." in n for n in trainable)
    # LoRA must stay in the backbone: the MTP layer is trained fully, not adapted.
    assert not any("lora_" in n and ".mtp." in n for n in trainable)

    before = SuperThoughtsForCausalLM.from_base(str(base_dirs["llama"]), pad_token_id=0).state_dict()
    result = train(TrainOptions(
        model=base_dirs["llama"], data=base_dirs["data"], output_dir=tmp_path / "lora",
        lora_r=4, lora_alpha=8, lora_target_modules=("q_proj", "v_proj"), **{**FAST, "max_steps": 5},
    ))
    after = load_model(tmp_path / "lora").state_dict()
    assert set(after) == set(before)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed, "nothing trained"
    for name in changed:
        ok = name.startswith(("compressor.", "mtp.")) or name.endswith(("q_proj.weight", "v_proj.weight"))
        assert ok, f"{name} changed but is neither LoRA-targeted nor compressor/MTP"
    assert any(n.startswith("compressor.") for n in changed) and any(n.startswith("mtp.") for n in changed)
    assert any(n.startswith("backbone.") for n in changed)
    assert result.metrics["trainable_params"] < result.metrics["total_params"]


@pytest.mark.parametrize("baseline", [False, True], ids=["superthoughts", "baseline"])
def test_a_lora_target_that_names_no_module_is_refused(base_dirs, tmp_path, baseline):
    # peft dropped "v_prj" without a word while "q_proj" matched: q_proj alone trained.
    with pytest.raises(ValueError, match=r"--lora-target-modules v_prj: no module of the backbone has that name "
                                         r"\(its linear and embedding layers: down_proj embed_tokens .* v_proj\)"):
        train(TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=tmp_path / "o", lora_r=4, baseline=baseline,
                           lora_target_modules=("q_proj", "v_prj"), **{**FAST, "max_steps": 1}))
    # A name of blocks, not layers: peft's error printed the whole module tree and named no option.
    with pytest.raises(ValueError, match=r"--lora-target-modules layers \(ModuleList\), mlp \(Qwen2MLP\): not a layer "
                                         r"LoRA adapts; name linear or embedding layers \(the backbone's: down_proj "):
        train(TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=tmp_path / "o", lora_r=4, baseline=baseline,
                           lora_target_modules=("q_proj", "mlp", "layers"), **{**FAST, "max_steps": 1}))


def test_default_lora_targets_a_backbone_lacks_are_named_in_a_warning(tmp_path):
    # Phi-3 fuses q/k/v and gate/up: the defaults adapt o_proj and down_proj alone, which the
    # user, who named no targets, is told (a typo check refused the run outright).
    from transformers import Phi3Config

    tok = make_tokenizer()
    config = Phi3Config(vocab_size=len(tok) + 3, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                        pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    phi3 = AutoModelForCausalLM.from_config(config)
    with pytest.warns(UserWarning, match=r"default LoRA targets q_proj k_proj v_proj gate_proj up_proj name no module "
                                         r"of this backbone, so LoRA adapts o_proj down_proj alone; its linear and "
                                         r"embedding layers are .*gate_up_proj .*qkv_proj"):
        result = train(TrainOptions(model=phi3, tokenizer=tok, data=ROWS, output_dir=tmp_path / "o", lora_r=4,
                                    **{**FAST, "max_steps": 1}))
    assert result.global_step == 1


def test_lora_reaches_the_backbone_lm_head_and_counts_the_saved_model(base_dirs):
    from superthoughts_ext.modeling import SuperThoughtsForCausalLM

    pattern = train_utils.lora_target_pattern(("q_proj", "lm_head"), "backbone")
    assert re.fullmatch(pattern, "backbone.lm_head") and re.fullmatch(pattern, "backbone.model.layers.0.self_attn.q_proj")
    assert not re.fullmatch(pattern, "mtp.layer.self_attn.q_proj")
    st = SuperThoughtsForCausalLM.from_base(str(base_dirs["llama"]), pad_token_id=0)
    plain_total = sum(p.numel() for p in st.parameters())
    with pytest.warns(UserWarning, match="untied them"):  # the base ties lm_head to the embedding
        wrapped = train_utils.apply_lora(st, r=4, alpha=8, dropout=0.0, targets=("q_proj", "lm_head"),
                                         superthoughts=True)
    untied_head = st.backbone.get_output_embeddings().base_layer.weight.numel()
    adapted = {n.split(".lora_")[0] for n, _ in wrapped.named_parameters() if ".lora_" in n}
    assert any(n.endswith("backbone.lm_head") for n in adapted), adapted
    assert any(n.endswith("q_proj") for n in adapted) and not any(".mtp." in n for n in adapted)
    # peft's frozen copies of the fully trained compressor and MTP are not part of the model.
    lora = sum(p.numel() for n, p in wrapped.named_parameters() if ".lora_" in n)
    assert train_utils.trainable_summary(wrapped)["total_params"] == plain_total + untied_head + lora


@pytest.mark.parametrize("baseline", [False, True], ids=["superthoughts", "baseline"])
def test_lora_on_a_tied_lm_head_saves_the_model_it_trained(base_dirs, tmp_path, monkeypatch, baseline):
    # The base models tie lm_head to the embedding (as Qwen2.5-Math-1.5B does): merging an lm_head
    # adapter into the one shared matrix changed the input embeddings too, so the saved model was
    # not the trained one (max logit difference 0.15 after 5 steps).
    from superthoughts_ext import train as train_module
    from superthoughts_ext.data import SuperThoughtsCollator
    from superthoughts_ext.modeling import load_model

    batch = SuperThoughtsCollator(0, 2, rho_max=0.0, baseline=baseline)(
        [{"prompt_ids": [1, 4, 5, 6], "response_ids": [7, 8, 9, 10, 11, 2]}])
    trained = {}
    merge = train_utils.merge_lora

    def logits_before_merging(model):
        model.eval()
        with torch.no_grad():
            out = model(**batch)
        trained["logits"] = out.logits if baseline else out.logits_main
        return merge(model)

    monkeypatch.setattr(train_module.train_utils, "merge_lora", logits_before_merging)
    out = tmp_path / "lora"
    # Recorded: under transformers 5.25 peft's get_peft_model reads a deprecated attribute of a
    # plain model, a FutureWarning that apply_lora silences; none may reach the user.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(TrainOptions(model=base_dirs["qwen2"], data=base_dirs["data"], output_dir=out, baseline=baseline,
                           lora_r=4, lora_alpha=8, lora_target_modules=("q_proj", "lm_head"),
                           **{**FAST, "max_steps": 5}))
    assert [str(w.message) for w in caught if "untied" in str(w.message)] == [
        "LoRA adapts lm_head, tied to model.embed_tokens: untied them, so lm_head alone takes the adapter and "
        "model.embed_tokens keeps its weights in the merged model (the output directory stores both matrices)"]
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], [str(w.message) for w in caught]
    if baseline:
        saved = AutoModelForCausalLM.from_pretrained(out).eval()
    else:
        saved = load_model(out)
    with torch.no_grad():
        out_saved = saved(**batch)
    logits = out_saved.logits if baseline else out_saved.logits_main
    torch.testing.assert_close(logits, trained["logits"], rtol=1e-5, atol=1e-5)
