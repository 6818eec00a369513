"""evaluate(compile=True): one untimed warm-up call per batch size, none more once generate decodes
eagerly, and on a real tiny SuperThoughts model every torch.compile happens in the warm-up, so the
timed batches' tokens/s measure decoding alone. On the tiny tokenizer and fake generate of
test_evaluation.py, CPU. (The main flow: test_evaluation.py.)
"""
from __future__ import annotations

import pytest

pytest.importorskip("math_verify")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from test_evaluation import PROBLEMS, fake_generate, fake_model, make_tokenizer  # noqa: E402

from superthoughts_ext.evaluation import evaluate  # noqa: E402


def test_compiled_decoding_warms_up_each_batch_size_untimed() -> None:
    from superthoughts_ext.evaluation import WARMUP_TOKENS

    tokenizer, calls = make_tokenizer(), []
    summary = evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, batch_size=3, max_new_tokens=64,
                       progress=False, generate_fn=fake_generate(tokenizer, calls), compile=True)
    # One short call per batch size (3 and the last batch's 1) before the timed batches.
    assert [(c["batch"], c["new_tokens"]) for c in calls] == [(3, WARMUP_TOKENS), (1, WARMUP_TOKENS), (3, 64),
                                                              (3, 64), (1, 64)]
    assert all(c["compile"] is True for c in calls)
    assert summary.generation_time == pytest.approx(1.5) and summary.n == 7  # the warm-up is not charged
    assert 0 <= summary.warmup_time <= summary.wall_time


def test_no_further_warm_up_once_generate_decodes_eagerly() -> None:
    # generate turns compile off for a model whose step reads host-side state (sliding windows,
    # dynamic RoPE) and says so in its result: the other batch sizes need no warm-up.
    from superthoughts_ext.evaluation import WARMUP_TOKENS

    tokenizer, calls = make_tokenizer(), []
    solve = fake_generate(tokenizer, calls)

    def eager_generate(*args, **kwargs):
        result = solve(*args, **kwargs)
        result.compiled = False
        return result

    evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, batch_size=3, max_new_tokens=64,
             progress=False, generate_fn=eager_generate, compile=True)
    assert [(c["batch"], c["new_tokens"]) for c in calls] == [(3, WARMUP_TOKENS), (3, 64), (3, 64), (1, 64)]


def test_compiled_decoding_compiles_only_in_the_warm_up() -> None:
    # A real tiny SuperThoughts model through torch.compile on the CPU: every compile happens in
    # the warm-up, so the timed batches' tokens/s measure decoding only.
    from torch._dynamo.utils import counters
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from superthoughts_ext.generate import generate
    from superthoughts_ext.modeling import SuperThoughtsForCausalLM

    tokenizer = make_tokenizer()
    torch.manual_seed(0)
    backbone = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    model = SuperThoughtsForCausalLM.from_base(backbone).eval()
    new_graphs, last_call = [], {}

    def counting_generate(*args, **kwargs):
        before = counters["stats"]["unique_graphs"]
        result = generate(*args, **kwargs)
        new_graphs.append((kwargs["max_new_tokens"], counters["stats"]["unique_graphs"] - before))
        last_call.update(kwargs)
        return result

    evaluate(model, tokenizer, "math500", PROBLEMS, threshold=0.5, batch_size=3, max_new_tokens=24, progress=False,
             generate_fn=counting_generate, compile=True)
    warm, timed = new_graphs[:2], new_graphs[2:]
    assert [n for n, _ in timed] == [24, 24, 24] and all(graphs == 0 for _, graphs in timed), new_graphs
    assert all(graphs >= 1 for _, graphs in warm), new_graphs
    # The last batch held one row: more single rows of other prompt lengths reuse its compile (a
    # batch of 1 kept the prompt's strides in the step's inputs: one compile per prompt length).
    for length in (3, 11):
        counting_generate(model, torch.full((1, length), 5), **last_call)
    assert new_graphs[-2:] == [(24, 0), (24, 0)], new_graphs
