"""Decoding around the loop: streamers, CUDA graphs (the `superthoughts generate` command: test_generate_cli).

Tiny random models on the demo's word-level chat tokenizer (no downloads). The CUDA-graph
tests run only on a GPU machine: graph replay, with and without torch.compile, must give the
eager loop's tokens.
"""
from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config, TextStreamer

from superthoughts_ext.bench_cli import load_benchmark
from superthoughts_ext.demo.tokenizer import build_tokenizer
from superthoughts_ext.generate import MODES, generate
from superthoughts_ext.modeling import SuperThoughtsForCausalLM

TOKENIZER = build_tokenizer()
VOCAB = 128  # >= len(TOKENIZER)


# Tiny models: one CPU thread (see conftest.one_cpu_thread).
pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def tiny_backbone() -> torch.nn.Module:
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         eos_token_id=TOKENIZER.eos_token_id, pad_token_id=TOKENIZER.pad_token_id,
                         bos_token_id=TOKENIZER.pad_token_id, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    with torch.no_grad():
        # Keeps the random model off the tokenizer's unused ids so that decoded text round-trips.
        model.lm_head.weight[len(TOKENIZER):] = 0.0
        model.lm_head.weight.mul_(20.0)
    return model


@pytest.fixture(scope="module")
def backbone() -> torch.nn.Module:
    return tiny_backbone()


@pytest.fixture(scope="module")
def model(backbone) -> SuperThoughtsForCausalLM:
    torch.manual_seed(1)
    return SuperThoughtsForCausalLM.from_base(copy.deepcopy(backbone)).eval()


def prompt_batch(texts: list[str], device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    tokenizer = copy.copy(TOKENIZER)
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return batch["input_ids"].to(device), batch["attention_mask"].to(device)


class RecordingStreamer:
    def __init__(self) -> None:
        self.puts: list = []
        self.ended = 0

    def put(self, value) -> None:
        self.puts.append(value)

    def end(self) -> None:
        self.ended += 1


@pytest.mark.parametrize("mode", MODES)
def test_streamer_batch1_gets_prompt_then_every_token(model, mode: str) -> None:
    ids, mask = prompt_batch(["what is 3 + 4"])
    streamer = RecordingStreamer()
    out = generate(model, ids, mask, max_new_tokens=15, mode=mode, threshold=0.3, streamer=streamer)
    assert streamer.ended == 1
    assert torch.equal(streamer.puts[0], ids)  # [1, T] first, like transformers' generate
    pieces = streamer.puts[1:]
    assert all(p.dim() == 1 and 1 <= p.numel() <= 2 for p in pieces)
    assert torch.cat(pieces).tolist() == out.sequences[0]
    assert len(pieces) == out.num_steps[0]
    assert out.sequences == generate(model, ids, mask, max_new_tokens=15, mode=mode, threshold=0.3).sequences


def test_streamer_batch_gets_per_row_lists(model) -> None:
    ids, mask = prompt_batch(["what is 3 + 4", "carry the one"])
    streamer = RecordingStreamer()
    out = generate(model, ids, mask, max_new_tokens=9, mode="pairs", streamer=streamer)
    prompts, steps = streamer.puts[0], streamer.puts[1:]
    assert [p.tolist() for p in prompts] == [ids[row][mask[row] == 1].tolist() for row in range(2)]
    for row in range(2):
        assert torch.cat([step[row] for step in steps]).tolist() == out.sequences[row]


def test_package_attributes_of_generate_in_a_fresh_interpreter() -> None:
    # In this process the submodule is imported already; a user's first access is not.
    code = ("import superthoughts_ext as st; g = st.generate; assert callable(g), g; "
            "assert st.GenerateOutput is g.GenerateOutput and callable(g.stop_token_ids)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_model_generate_method_is_superthoughts_generate(model) -> None:
    ids, mask = prompt_batch(["what is 3 + 4", "carry the one"])
    for mode in MODES:
        method = model.generate(ids, mask, max_new_tokens=9, mode=mode, threshold=0.3)
        function = generate(model, ids, mask, max_new_tokens=9, mode=mode, threshold=0.3)
        assert method.sequences == function.sequences and method.num_steps == function.num_steps
    with pytest.raises(TypeError, match="max_new_tokens"):
        model.generate(ids, mask)
    # README's and docs/generation.md's `superthoughts_ext.generate(model, ...)`: the package attribute is the module.
    import superthoughts_ext

    package_attribute = superthoughts_ext.generate(model, ids, mask, max_new_tokens=9, mode="pairs")
    assert package_attribute.sequences == generate(model, ids, mask, max_new_tokens=9, mode="pairs").sequences


def test_text_streamer_prints_the_decoded_text(model, capsys) -> None:
    ids, mask = prompt_batch(["what is 3 + 4"])
    streamer = TextStreamer(TOKENIZER, skip_prompt=True)
    out = generate(model, ids, mask, max_new_tokens=12, mode="pairs", streamer=streamer)
    printed = capsys.readouterr().out
    assert printed.strip() == TOKENIZER.decode(out.sequences[0]).strip()
    ids, mask = prompt_batch(["what is 3 + 4", "carry the one"])
    with pytest.raises(ValueError, match="TextStreamer streams batch 1 only .* got a batch of 2"):
        generate(model, ids, mask, max_new_tokens=4, streamer=TextStreamer(TOKENIZER))


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def assert_graphs_match_eager(gpu_model, ids: torch.Tensor, mask: torch.Tensor, **kwargs):
    """The CUDA default (graphs + compiled step), graphs alone, the eager loop and the reference
    step give the same tokens and pair steps; returns the graphed run's output."""
    compiled = generate(gpu_model, ids, mask, cuda_graphs=True, compile=True, **kwargs)  # the CUDA default
    graphed = generate(gpu_model, ids, mask, cuda_graphs=True, compile=False, **kwargs)
    eager = generate(gpu_model, ids, mask, cuda_graphs=False, compile=False, **kwargs)
    reference = generate(gpu_model, ids, mask, cuda_graphs=False, compile=False, use_kernels=False, **kwargs)
    assert compiled.sequences == graphed.sequences == eager.sequences == reference.sequences
    assert compiled.num_pair_steps == graphed.num_pair_steps == eager.num_pair_steps
    return graphed


@needs_cuda
@pytest.mark.parametrize("mode", MODES)
def test_cuda_graphs_match_eager(model, mode: str) -> None:
    gpu_model = copy.deepcopy(model).cuda()
    ids, mask = prompt_batch(["what is 3 + 4", "carry", "what is 12 + 35 and then some more"], device="cuda")
    kwargs = dict(max_new_tokens=40, mode=mode, threshold=0.3)
    graphed = assert_graphs_match_eager(gpu_model, ids, mask, **kwargs)
    cpu = generate(model, ids.cpu(), mask.cpu(), **kwargs)
    agree = sum(a == b for a, b in zip(cpu.sequences, graphed.sequences))
    assert agree >= 2  # fp32 GPU vs CPU: an argmax may flip on a near-tie, not everywhere


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_cuda_16bit_graphs_match_eager(model, dtype) -> None:
    # bf16 is what a GPU user loads: the graphed and the eager loop run the same kernels and
    # must agree exactly; against the reference step (cuBLAS merge instead of the kernel's) a
    # rounding apart may flip a near-tie, so most rows, not all, must agree.
    gpu_model = copy.deepcopy(model).to("cuda", dtype)
    ids, mask = prompt_batch(["what is 3 + 4", "carry", "what is 12 + 35 and then some more"], device="cuda")
    for mode in MODES:
        kwargs = dict(max_new_tokens=40, mode=mode, threshold=0.3)
        graphed = generate(gpu_model, ids, mask, cuda_graphs=True, compile=False, **kwargs)
        eager = generate(gpu_model, ids, mask, cuda_graphs=False, compile=False, **kwargs)
        reference = generate(gpu_model, ids, mask, cuda_graphs=False, compile=False, use_kernels=False, **kwargs)
        assert graphed.sequences == eager.sequences, mode
        assert sum(a == b for a, b in zip(eager.sequences, reference.sequences)) >= 2, mode


@needs_cuda
def test_cuda_standard_matches_transformers(backbone) -> None:
    gpu = copy.deepcopy(backbone).cuda()
    ids, mask = prompt_batch(["what is 3 + 4", "carry the one"], device="cuda")
    eos = TOKENIZER.eos_token_id
    ours = generate(gpu, ids, mask, max_new_tokens=30, mode="standard")
    theirs = gpu.generate(input_ids=ids, attention_mask=mask, max_new_tokens=30, do_sample=False)
    expected = [row[: row.index(eos) + 1] if eos in row else row for row in theirs[:, ids.shape[1]:].tolist()]
    assert ours.sequences == expected


@needs_cuda
def test_cuda_sampling_runs_eagerly(model) -> None:
    gpu_model = copy.deepcopy(model).cuda()
    ids, mask = prompt_batch(["what is 3 + 4"], device="cuda")
    with pytest.raises(ValueError, match="temperature 0"):
        generate(gpu_model, ids, mask, max_new_tokens=4, temperature=1.0, cuda_graphs=True)
    sampled = generate(gpu_model, ids, mask, max_new_tokens=20, temperature=1.0, seed=3, mode="pairs")
    again = generate(gpu_model, ids, mask, max_new_tokens=20, temperature=1.0, seed=3, mode="pairs", use_kernels=False)
    assert sampled.sequences == again.sequences


def test_bench_generate_smoke(tmp_path) -> None:
    import argparse
    import json

    bench = load_benchmark("generate")
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out = tmp_path / "generate.json"
    args = parser.parse_args(["--device", "cpu", "--batch", "1", "3", "--prompt-len", "8", "--new-tokens", "7",
                              "--repeats", "1", "--thresholds", "0.9", "--threads", "1", "--output", str(out)])
    threads = torch.get_num_threads()
    try:
        assert bench.main(args) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads(out.read_text())
    assert report["check"]["equal"] and out.with_suffix(".png").exists()
    rows = {(r["method"], r["batch"]): r for r in report["results"]}
    assert set(rows) == {(m, b) for m in ("hf_dynamic", "standard", "pairs", "st@0.9") for b in (1, 3)}
    assert all(r["tokens"] == 7 * r["batch"] for r in rows.values())
    assert rows[("pairs", 1)]["forward_passes"] == 4 and rows[("standard", 1)]["forward_passes"] == 7
    assert rows[("pairs", 3)]["mean_row_steps"] == 4 and rows[("standard", 3)]["slowest_row_steps"] == 7
    st = rows[("st@0.9", 3)]
    assert st["mean_row_steps"] <= st["slowest_row_steps"] <= 7
    assert report["compile"] is False and not any(r["compiled"] for r in rows.values())  # 'auto' on CPU
    # What ran: ours say it (no CUDA graph on a CPU), transformers' choice is unknown.
    assert all(r["cuda_graph"] is (None if m == "hf_dynamic" else False) for (m, _), r in rows.items())
    # The cache holds prompt + steps - 1 positions: the last step's input is never written.
    shape = bench.SHAPES["tiny"]
    per_position = shape["num_hidden_layers"] * 2 * shape["num_key_value_heads"] * (
        shape["hidden_size"] // shape["num_attention_heads"]) * 4  # float32 K and V
    assert rows[("standard", 1)]["kv_bytes_per_token"] == pytest.approx((8 + 7 - 1) * per_position / 7)
    # pairs: 4 steps, and the MTP decoder layer's own cache beside the backbone's 8 layers.
    assert rows[("pairs", 1)]["kv_bytes_per_token"] == pytest.approx((8 + 4 - 1) * per_position * 9 / 8 / 7)
    assert report["mtp_logit_std"] == 30.0


def test_bench_generate_mtp_logit_std_sets_the_pair_share() -> None:
    """The benchmark's MTP scale: a random head never pairs at 0.9; at spread 30 it pairs on most
    steps, fewer at a higher threshold, and the tokens stay those of the random head."""
    bench = load_benchmark("generate")
    ids, mask = bench.prompts(4, 16, bench.SHAPES["tiny"]["vocab_size"], torch.device("cpu"))
    shares, sequences = {}, {}
    for std in (0.0, 30.0):
        _, model = bench.build_models("tiny", torch.float32, torch.device("cpu"), 96, mtp_logit_std=std)
        for threshold in (0.9, 0.999):
            out = generate(model, ids, mask, max_new_tokens=48, mode="superthoughts", threshold=threshold,
                           eos_token_id=bench.EOS, compile=False)
            shares[std, threshold] = sum(out.num_pair_steps) / sum(out.num_steps)
        sequences[std] = generate(model, ids, mask, max_new_tokens=48, mode="pairs", eos_token_id=bench.EOS,
                                  compile=False).sequences
    assert shares[0.0, 0.9] == 0.0
    assert shares[30.0, 0.9] > 0.5 and 0.1 < shares[30.0, 0.999] < shares[30.0, 0.9]
    assert sequences[0.0] == sequences[30.0]


@pytest.mark.parametrize("mode,compiled", [*((mode, False) for mode in MODES), ("superthoughts", True)])
def test_graph_step_sequencing_with_a_stand_in_graph(model, monkeypatch, mode: str, compiled: bool) -> None:
    """CPU check of CudaGraphStep's call order (warm-up runs a step, capture records one without
    running it, replay runs it): a stand-in graph records the step's arguments at capture.
    Compiled, every window's step must reuse the one compile (as the GPU default would)."""
    import contextlib
    from types import SimpleNamespace

    from torch._dynamo.utils import counters

    from superthoughts_ext import decode_loop
    from superthoughts_ext import generate_settings

    real_step_function = decode_loop.step_function

    windows: list[int] = []  # of the captured graphs, in capture order

    class StandInGraph:
        recorded = None

        def replay(self) -> None:
            real_step_function(self.recorded[0])(*self.recorded[1])

        def pool(self) -> str:
            return "pool"

    @contextlib.contextmanager
    def capture(graph: StandInGraph, pool=None):
        assert pool == (None if not windows else "pool")  # the graphs share the first one's pool
        monkeypatch.setattr(decode_loop, "step_function",
                            lambda compiled: lambda *args: setattr(graph, "recorded", (compiled, args)))
        yield
        monkeypatch.setattr(decode_loop, "step_function", real_step_function)
        windows.append(graph.recorded[1][-1].shape[1])  # the step's mask

    stream = SimpleNamespace(wait_stream=lambda other: None)
    cuda = SimpleNamespace(Stream=lambda: stream, stream=lambda s: contextlib.nullcontext(),
                           current_stream=lambda: stream, CUDAGraph=StandInGraph, graph=capture)

    class TorchWithStandInCuda:
        def __getattr__(self, name: str):
            return cuda if name == "cuda" else getattr(torch, name)

    ids, mask = prompt_batch(["what is 3 + 4", "carry", "what is 12 + 35 and then some more"])
    kwargs = dict(max_new_tokens=21, mode=mode, threshold=0.3)
    eager = generate(model, ids, mask, **kwargs)
    monkeypatch.setattr(decode_loop, "torch", TorchWithStandInCuda())
    monkeypatch.setattr(generate_settings, "_use_graphs", lambda *args: True)
    monkeypatch.setattr(decode_loop, "GRAPH_MIN_SPAN", 1)  # several windows in a short call
    before = counters["stats"]["unique_graphs"]
    graphed = generate(model, ids, mask, compile=compiled, **kwargs)
    # At most one compile (none if an earlier test compiled the same step) for every window.
    assert counters["stats"]["unique_graphs"] - before <= (1 if compiled else 0)
    assert graphed.sequences == eager.sequences
    assert (graphed.num_steps, graphed.num_pair_steps) == (eager.num_steps, eager.num_pair_steps)
    assert graphed.num_forward_passes == eager.num_forward_passes
    # One graph per window, captured at the window's second step (its first is the warm-up).
    assert windows == sorted(set(windows)) and 1 < len(windows) <= decode_loop.GRAPH_WINDOWS


@pytest.mark.parametrize("min_span", [1, 512])
def test_graph_windows_cover_each_step_in_a_few_spans(monkeypatch, min_span: int) -> None:
    from superthoughts_ext import decode_loop

    monkeypatch.setattr(decode_loop, "GRAPH_MIN_SPAN", min_span)
    for prompt_len, width in ((13, 34), (5, 6), (100, 612), (7, 10), (128, 639), (128, 2175), (40, 1100)):
        state = decode_loop.DecodeState.allocate(torch.ones(2, prompt_len, dtype=torch.int64), width, 8)
        windows = [decode_loop.graph_window(state, columns) for columns in range(prompt_len + 1, width + 1)]
        assert all(w >= c for w, c in zip(windows, range(prompt_len + 1, width + 1)))  # covers its step
        assert windows == sorted(windows) and windows[-1] == width
        decode_columns = width - prompt_len
        spans = min(decode_loop.GRAPH_WINDOWS, -(-decode_columns // min_span))
        assert len(set(windows)) == min(spans, decode_columns)


def test_the_compile_limit_names_what_to_do(model, monkeypatch) -> None:
    # Past torch.compile's limit of graphs for the step (one per batch size, mode, thresholds,
    # ...: a threshold sweep reaches it) dynamo raised FailOnRecompileLimitHit naming its config.
    from torch._dynamo.exc import FailOnRecompileLimitHit

    from superthoughts_ext import decode_loop

    def compile_at_its_limit(fn, recompile_limit=None, **options):
        def run(*args, **kwargs):
            raise FailOnRecompileLimitHit("recompile_limit reached with fullgraph=True")
        return run

    monkeypatch.setattr(torch, "compile", compile_at_its_limit)
    decode_loop.compiled_decode_step.cache_clear()
    try:
        with pytest.raises(RuntimeError, match=r"generate: compile=True has compiled the decode step 64 times in this "
                                               r"process .* decode this configuration with compile=False"):
            generate(model, prompt_batch(["1 + 1"])[0], max_new_tokens=4, compile=True)
    finally:
        decode_loop.compiled_decode_step.cache_clear()  # the real compiled step for later tests
