"""mtp_input="next_token" (next_token_mtp.py): the MTP head reads E[first token of the next position].

Config (validation, save / load, old checkpoints read as "unit"); the training forward against a
hand computation (which inputs the MTP head reads, what a changed a_{j+1} changes, gradients,
a short training run); decoding against the same oracles as the default model in
test_generate.py, whose tests run here on a next_token model: kernels == reference (greedy,
sampled), the cached loop == a no-cache recompute, a batch == its rows alone; and threshold 1 and
`pairs`, per-row seeds, a compiled step (the MLP head: test_generate.py).
"""
from __future__ import annotations

import copy
import json

import pytest
import torch

from superthoughts_ext.data import IGNORE
from superthoughts_ext.generate import generate
from superthoughts_ext.modeling import SuperThoughtsConfig, SuperThoughtsForCausalLM, load_model
from superthoughts_ext.layers import next_first_ids
from test_generate import (EOS, HAS_KERNELS, MIXED_THRESHOLD, PROMPTS, check_stats, left_pad,
                           tiny_backbone)
# test_generate's decoding tests, run here on this module's `model` (a next_token one); its
# slow_decode feeds the MTP head as the model's mtp_input says.
from test_generate import (test_batch_rows_match_rows_alone, test_fast_loop_matches_full_recompute,  # noqa: F401
                           test_kernels_match_reference, test_sampled_steps_and_threshold_main_match_full_recompute)
from test_generate_io import assert_graphs_match_eager
from test_modeling import make_backbone, training_batch

pytestmark = pytest.mark.usefixtures("one_cpu_thread")
MODEL_PAD = 0  # test_modeling's PAD


def perturbed(model: SuperThoughtsForCausalLM, seed: int = 1) -> SuperThoughtsForCausalLM:
    """Random offsets on the compressor and MTP (a fresh MTP ignores its second input: fc's z half is 0)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in [*model.mtp.parameters(), *model.compressor.parameters()]:
            param.add_(torch.randn_like(param) * 0.05)
    return model.eval()


def small_model(family: str = "qwen2", **overrides) -> SuperThoughtsForCausalLM:
    return perturbed(SuperThoughtsForCausalLM.from_base(make_backbone(family), **overrides))


# ---------------------------------------------------------------------------------------------
# Config


def test_config_validates_and_defaults_to_unit() -> None:
    assert SuperThoughtsConfig().mtp_input == "unit"
    assert SuperThoughtsConfig.from_dict({"mtp_type": "mlp"}).mtp_input == "unit"  # an older config
    assert SuperThoughtsConfig(mtp_input="next_token").to_dict()["mtp_input"] == "next_token"
    for bad in ("next", "", None, 1):
        with pytest.raises(ValueError, match=r"mtp_input must be 'unit' or 'next_token', got"):
            SuperThoughtsConfig(mtp_input=bad)
    with pytest.raises(ValueError, match="mtp_input"):
        SuperThoughtsForCausalLM.from_base(make_backbone("qwen2"), mtp_input="token")


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_save_load_round_trip_bit_identical(tmp_path, family: str) -> None:
    model = small_model(family, mtp_input="next_token")
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["superthoughts"]["mtp_input"] == "next_token"
    loaded = load_model(tmp_path)
    assert loaded.config == model.config and loaded.config.mtp_input == "next_token"
    batch = training_batch()
    with torch.no_grad():
        a, b = model(**batch), loaded(**batch)
    assert torch.equal(a.logits_main, b.logits_main) and torch.equal(a.logits_mtp, b.logits_mtp)


def test_checkpoint_without_the_field_loads_as_unit(tmp_path) -> None:
    model = small_model()
    model.save_pretrained(tmp_path)
    # Left out at "unit", as written before the field existed: releases that refuse unknown
    # fields still load the design's model.
    section = json.loads((tmp_path / "config.json").read_text())["superthoughts"]
    assert "mtp_input" not in section and "mtp_type" in section
    loaded = load_model(tmp_path)
    assert loaded.config.mtp_input == "unit"
    batch = training_batch()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits_mtp, loaded(**batch).logits_mtp)


# ---------------------------------------------------------------------------------------------
# Training forward


def test_next_first_ids_shift_left_and_pad() -> None:
    first = torch.tensor([[5, 6, 7, 8], [9, 10, 3, 3]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    assert next_first_ids(first, mask, pad_id=3).tolist() == [[6, 7, 8, 3], [10, 3, 3, 3]]


def hand_mtp_logits(model: SuperThoughtsForCausalLM, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """MTP logits [B, T, V] with the next position's first id read row by row in Python."""
    first, mask = batch["first_ids"].tolist(), batch["attention_mask"].tolist()
    next_ids = [[row[t + 1] if t + 1 < len(row) and row_mask[t + 1] else MODEL_PAD for t in range(len(row))]
                for row, row_mask in zip(first, mask)]
    embed = model.get_input_embeddings()
    inputs = model.embed_inputs(batch["first_ids"], batch["second_ids"], batch["is_unit"])
    h = model.backbone.model(inputs_embeds=inputs, attention_mask=batch["attention_mask"],
                             position_ids=batch["position_ids"]).last_hidden_state
    h_mtp = model.mtp(h, embed(torch.tensor(next_ids)), batch["position_ids"], batch["attention_mask"])
    return model.get_output_embeddings()(h_mtp)


@pytest.mark.parametrize("mtp_type", ["decoder", "mlp"])
def test_training_forward_feeds_the_next_first_token(mtp_type: str) -> None:
    model = small_model(mtp_type=mtp_type, mtp_input="next_token")
    batch = training_batch()
    with torch.no_grad():
        out = model(**batch)
        expected = hand_mtp_logits(model, batch)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(out.logits_mtp[real], expected[real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mtp_input", ["unit", "next_token"])
def test_changing_a_next_changes_the_mtp_logits_at_unit_j_only_for_next_token(mtp_input: str) -> None:
    model = small_model(mtp_input=mtp_input)
    batch = training_batch()
    # Unit j of row 0 whose next unit holds a labelled a_{j+1}.
    row = 0
    j = int(torch.nonzero(batch["is_unit"][row] & (batch["labels_main"][row] != IGNORE))[0])
    changed = {k: v.clone() for k, v in batch.items()}
    old = int(changed["first_ids"][row, j + 1])
    changed["first_ids"][row, j + 1] = old + 1 if old + 2 < model.vocab_size else 2
    with torch.no_grad():
        a, b = model(**batch), model(**changed)
    # Nothing before unit j moves; the main head at j does not either (it reads h only).
    assert torch.equal(a.logits_mtp[row, :j], b.logits_mtp[row, :j])
    assert torch.equal(a.logits_main[row, : j + 1], b.logits_main[row, : j + 1])
    moved = not torch.equal(a.logits_mtp[row, j], b.logits_mtp[row, j])
    assert moved == (mtp_input == "next_token")
    assert torch.equal(a.logits_mtp[1:], b.logits_mtp[1:])  # other rows


def test_gradients_reach_the_z_half_of_the_mtp_fc() -> None:
    grads = {}
    for mtp_input in ("unit", "next_token"):
        model = small_model(mtp_input=mtp_input).train()
        model(**training_batch(), return_logits=False).loss.backward()
        hidden = model.backbone.config.hidden_size
        grads[mtp_input] = model.mtp.fc.weight.grad[:, hidden:]
        assert torch.isfinite(grads[mtp_input]).all() and grads[mtp_input].abs().sum() > 0
    assert not torch.allclose(grads["unit"], grads["next_token"])


def test_hidden_states_needs_the_mtp_inputs() -> None:
    model = small_model(mtp_input="next_token")
    embeds = model.get_input_embeddings()(torch.tensor([[3, 4, 5]]))
    positions, mask = torch.arange(3)[None], torch.ones(1, 3, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"mtp_input='next_token' needs mtp_inputs"):
        model.hidden_states(embeds, positions, mask)
    with pytest.raises(ValueError, match=r"mtp_inputs \(1, 2, 32\) must have the shape of the hidden states"):
        model.hidden_states(embeds, positions, mask, mtp_inputs=embeds[:, :2])


def test_training_run_learns_and_saves_the_field(tmp_path) -> None:
    from test_train import FAST, ROWS, losses, make_model, make_tokenizer

    from superthoughts_ext.train import TrainOptions, add_arguments, options_from_args, train

    tok = make_tokenizer()
    base = tmp_path / "base"
    make_model("qwen2", len(tok) + 3).save_pretrained(base)
    tok.save_pretrained(base)
    out = tmp_path / "out"
    result = train(TrainOptions(model=base, data=ROWS, output_dir=out, mtp_input="next_token", **FAST))
    curve = losses(result)
    assert sum(curve[-3:]) / 3 <= 0.5 * curve[0], curve
    mtp = [e["loss_mtp"] for e in result.log_history if "loss_mtp" in e]
    assert sum(mtp[-3:]) / 3 <= 0.5 * mtp[0], mtp
    assert load_model(out).config.mtp_input == "next_token"
    # The structure of a continued model stays: another mtp_input is refused.
    with pytest.raises(ValueError, match=r"mtp_input='unit' was asked for but .* has mtp_input='next_token'"):
        train(TrainOptions(model=out, data=ROWS, output_dir=tmp_path / "again", mtp_input="unit", **FAST))
    # A resume keeps the MTP input of the run that wrote the checkpoint (the weights would load either way).
    fast = {**FAST, "max_steps": 2, "save_steps": 1}
    train(TrainOptions(model=base, data=ROWS, output_dir=tmp_path / "r", mtp_input="next_token", **fast))
    with pytest.raises(ValueError, match=r"checkpoint-1' was trained with --mtp-input 'next_token' \(this run: "
                                         r"'unit'\)"):
        train(TrainOptions(model=base, data=ROWS, output_dir=tmp_path / "r", mtp_input="unit",
                           resume_from_checkpoint=str(tmp_path / "r" / "checkpoint-1"), **fast))
    # What is compared is the input the model gets: no flag and `--mtp-input unit` build the same model.
    train(TrainOptions(model=base, data=ROWS, output_dir=tmp_path / "u", **fast))
    train(TrainOptions(model=base, data=ROWS, output_dir=tmp_path / "u", mtp_input="unit",
                       resume_from_checkpoint=str(tmp_path / "u" / "checkpoint-1"), **fast))
    with pytest.raises(ValueError, match=r"was trained with --mtp-input 'unit' \(this run: 'next_token'\)"):
        train(TrainOptions(model=base, data=ROWS, output_dir=tmp_path / "u", mtp_input="next_token",
                           resume_from_checkpoint=str(tmp_path / "u" / "checkpoint-1"), **fast))
    with pytest.raises(ValueError, match="mtp_input applies to SuperThoughts mode, not baseline"):
        TrainOptions(model=base, data=ROWS, output_dir=tmp_path / "b", baseline=True, mtp_input="next_token")
    with pytest.raises(ValueError, match="mtp_input must be one of unit, next_token, got 'x'"):
        TrainOptions(model=base, data=ROWS, output_dir=tmp_path / "c", mtp_input="x")
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--model", str(base), "--data", "d", "--output", "o", "--mtp-input", "next_token"])
    assert options_from_args(args).mtp_input == "next_token"


def test_a_resume_of_a_checkpoint_recorded_before_the_setting_compares_its_model_config(tmp_path) -> None:
    # Checkpoints written before --mtp-input was recorded (its run settings lack the flag) hold a
    # "unit" model: their config.json (a full run) or export record (LoRA) has no mtp_input. A
    # resume with --mtp-input next_token loaded those weights and trained them as the other input.
    from test_train_resume_checks import write_checkpoint

    from superthoughts_ext.export import EXPORT_FILE
    from superthoughts_ext.train_resume import check_resume

    older = {"--learning-rate": 0.003}  # settings recorded, but not --mtp-input
    section = {k: v for k, v in SuperThoughtsConfig().to_dict().items() if k != "mtp_input"}
    full = write_checkpoint(tmp_path / "full" / "checkpoint-1", settings=older,
                            files={"config.json": {"model_type": "qwen2", "superthoughts": section}})
    adapter = {"r": 4, "modules_to_save": ["compressor", "mtp"]}
    lora = write_checkpoint(tmp_path / "lora" / "checkpoint-1", settings=older, files={
        "adapter_config.json": adapter, EXPORT_FILE: {"superthoughts": True, "superthoughts_config": section}})
    for checkpoint, lora_r in ((full, 0), (lora, 4)):
        check_resume(tmp_path / "o", str(checkpoint), lora_r=lora_r, settings={**older, "--mtp-input": "unit"})
        with pytest.raises(ValueError, match=r"checkpoint-1' was trained with --mtp-input 'unit' \(this run: "
                                             r"'next_token'\)"):
            check_resume(tmp_path / "o", str(checkpoint), lora_r=lora_r,
                         settings={**older, "--mtp-input": "next_token"})
    # A checkpoint of the field's own release records it: its model config is not read.
    recorded = write_checkpoint(tmp_path / "new" / "checkpoint-1", settings={**older, "--mtp-input": "next_token"})
    check_resume(tmp_path / "o", str(recorded), settings={**older, "--mtp-input": "next_token"})


# ---------------------------------------------------------------------------------------------
# Decoding


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def model(request) -> SuperThoughtsForCausalLM:
    backbone = tiny_backbone(request.param)
    return perturbed(SuperThoughtsForCausalLM.from_base(copy.deepcopy(backbone), mtp_input="next_token"))


def test_per_row_seeds_match_rows_alone(model) -> None:
    # Each row as alone with its seed, through the first launch's sample of t1 too.
    ids, mask = left_pad(PROMPTS)
    seeds = [3, 4, 5, 6]
    rows = generate(model, ids, mask, max_new_tokens=19, threshold=MIXED_THRESHOLD, temperature=1.0, seed=seeds)
    for row, prompt in enumerate(PROMPTS):
        alone = generate(model, torch.tensor([prompt]), max_new_tokens=19, threshold=MIXED_THRESHOLD,
                         temperature=1.0, seed=seeds[row])
        assert alone.sequences[0] == rows.sequences[row], f"row {row}"


def test_threshold_one_never_pairs_and_pairs_always_pair(model) -> None:
    ids, mask = left_pad(PROMPTS)
    single = generate(model, ids, mask, max_new_tokens=20, threshold=1.0)
    assert single.num_pair_steps == [0] * len(PROMPTS) and single.num_steps == single.num_tokens
    pairs = generate(model, ids, mask, max_new_tokens=20, mode="pairs")
    for row, seq in enumerate(pairs.sequences):
        ended_single = seq[-1] == EOS and (len(seq) % 2 == 1)
        assert pairs.num_pair_steps[row] == pairs.num_steps[row] - ended_single, row
    check_stats(pairs, 20)


def test_standard_mode_is_the_backbone(model) -> None:
    ids, mask = left_pad(PROMPTS)
    expected = generate(model.backbone, ids, mask, max_new_tokens=12, mode="standard")
    assert generate(model, ids, mask, max_new_tokens=12, mode="standard").sequences == expected.sequences


@pytest.mark.skipif(not HAS_KERNELS, reason="superthoughts_ext._C is not built")
def test_compiled_step_matches_eager_and_compiles_once() -> None:
    from torch._dynamo.utils import counters

    model = perturbed(SuperThoughtsForCausalLM.from_base(tiny_backbone("qwen2"), mtp_input="next_token"))
    ids, mask = left_pad(PROMPTS)
    kwargs = dict(max_new_tokens=21, threshold=MIXED_THRESHOLD)
    eager = generate(model, ids, mask, compile=False, **kwargs)
    torch._dynamo.reset()
    before = counters["stats"]["unique_graphs"]
    compiled = generate(model, ids, mask, compile=True, **kwargs)
    assert compiled.compiled and compiled.sequences == eager.sequences
    assert (compiled.num_steps, compiled.num_pair_steps) == (eager.num_steps, eager.num_pair_steps)
    assert 0 < sum(compiled.num_pair_steps) < sum(compiled.num_steps)
    assert counters["stats"]["unique_graphs"] - before == 1



@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graphs_match_eager(model) -> None:
    # The graph captures both launches of a step (t1 first, then the real one) and the MTP head
    # between them; replays must give the eager loop's and the reference's tokens.
    gpu_model = copy.deepcopy(model).cuda()
    ids, mask = (t.cuda() for t in left_pad(PROMPTS))
    kwargs = dict(max_new_tokens=25, threshold=MIXED_THRESHOLD)
    assert_graphs_match_eager(gpu_model, ids, mask, **kwargs)
    # Sampling runs eagerly on a GPU: the CUDA kernel's t1 launch draws what the reference draws.
    sampled = dict(kwargs, temperature=1.0, seed=5)
    assert (generate(gpu_model, ids, mask, **sampled).sequences
            == generate(gpu_model, ids, mask, use_kernels=False, **sampled).sequences)
