"""superthoughts_step's input checks: a clear error naming the op and the value for each bad
input, from the kernels and from the fake kernel that tracing (FakeTensorMode, torch.compile) and
meta tensors run; argument types the schema would take loosely (a float id or seed)."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from superthoughts_ext.ops import superthoughts_step
from test_step import EOS, PAD, make_inputs

BAD_INPUTS = [
    ("logits", lambda t: t.update(logits=t["logits"][:1]), r"logits must be \[2, B, V\]"),
    ("logits_int", lambda t: t.update(logits=t["logits"].long()), r"logits dtype"),
    ("vocab", lambda t: t.update(embed=t["embed"][:-1]), r"logits vocab size V=100 does not match embed rows 99"),
    ("empty_vocab", lambda t: t.update(logits=t["logits"][:, :, :0], embed=t["embed"][:0]),
     r"logits have an empty vocab dim \(V=0\)"),
    ("hidden", lambda t: t.update(merge_weight=t["merge_weight"][:, :-1]), r"merge_weight must be \[H, 2H\]"),
    ("weight_dtype", lambda t: t.update(merge_weight=t["merge_weight"].double()), r"merge_weight dtype"),
    ("bias_only", lambda t: t.update(merge_weight=None), r"merge_bias given without merge_weight"),
    ("finished_len", lambda t: t.update(finished=t["finished"][:-1]), r"finished must be \[B\] with B=3"),
    ("finished_dtype", lambda t: t.update(finished=t["finished"].int()), r"finished must be bool"),
    ("noncontig", lambda t: t.update(logits=t["logits"].transpose(1, 2).contiguous().transpose(1, 2)),
     r"logits must be contiguous along the vocab dim"),
    ("pad", lambda t: t.update(pad_id=100), r"pad_id=100 outside \[0, V=100\)"),
    ("eos", lambda t: t.update(eos_id=-1), r"eos_id=-1 outside"),
    ("threshold", lambda t: t.update(threshold=1.5), r"threshold=1.5 outside \[0, 1\]"),
    ("threshold_main", lambda t: t.update(threshold_main=-0.1), r"threshold_main=-0.1 outside"),
    ("temperature", lambda t: t.update(temperature=-1.0), r"temperature must be finite and >= 0, got -1"),
    # The refused value as given, not rounded to 6 digits ("threshold=1 outside [0, 1]").
    ("threshold-just-above-1", lambda t: t.update(threshold=1.0000001), r"threshold=1\.0000001 outside \[0, 1\]"),
    ("threshold_main-just-above-1", lambda t: t.update(threshold_main=1 + 1e-12),
     r"threshold_main=1\.000000000001 outside"),
]


@pytest.mark.parametrize("name,mutate,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_clear_error(name, mutate, message):
    logits, embed, weight, bias, finished = make_inputs(3, 100, 8, torch.float32, "cpu")
    kwargs = dict(logits=logits, embed=embed, merge_weight=weight, merge_bias=bias, finished=finished,
                  pad_id=PAD, eos_id=EOS, threshold=0.5, threshold_main=0.0, temperature=0.0)
    mutate(kwargs)
    with pytest.raises(RuntimeError, match="superthoughts_step: " + message):
        superthoughts_step(**kwargs)


@pytest.mark.parametrize("mode", ["fake", "meta"])
@pytest.mark.parametrize("name,mutate,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_refused_when_traced(name, mutate, message, mode):
    # Fake tensors (torch.compile's tracing) and meta tensors run the fake kernel, which built
    # plausible outputs for any input; it refuses what the kernel refuses, in the same words.
    logits, embed, weight, bias, finished = make_inputs(3, 100, 8, torch.float32, "cpu")
    kwargs = dict(logits=logits, embed=embed, merge_weight=weight, merge_bias=bias, finished=finished,
                  pad_id=PAD, eos_id=EOS, threshold=0.5, threshold_main=0.0, temperature=0.0)
    mutate(kwargs)
    if mode == "meta":
        kwargs = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        context = contextlib.nullcontext()
    else:
        context = FakeTensorMode(allow_non_fake_inputs=True)
    with context, pytest.raises(RuntimeError, match="superthoughts_step: " + message):
        superthoughts_step(**kwargs)


def test_fake_kernel_checks_ranks_before_reading_shapes():
    # A 1-D logits tensor read logits.shape[1] first: a bare IndexError naming nothing.
    with pytest.raises(RuntimeError, match=r"superthoughts_step: logits must be \[2, B, V\] \(main, mtp\), got \[100\]"):
        superthoughts_step(torch.empty(100, device="meta"), torch.empty(100, 8, device="meta"), None, None,
                           torch.empty(3, dtype=torch.bool, device="meta"), 0, 2, 0.5)


@pytest.mark.parametrize("bad", [torch.tensor(3.7), torch.tensor([3.99]), True, 3.0], ids=str)
def test_token_ids_must_be_integers(bad):
    # A float tensor was truncated to pad 3 and True taken as 1, while a float seed is refused.
    logits, embed, weight, bias, finished = make_inputs(3, 100, 8, torch.float32, "cpu")
    with pytest.raises(TypeError, match=r"superthoughts_step: pad_id must be an integer, got"):
        superthoughts_step(logits, embed, weight, bias, finished, bad, EOS, 0.5)
    tokens = superthoughts_step(logits, embed, weight, bias, finished.clone(), torch.tensor(PAD), np.int64(EOS), 0.5)[0]
    torch.testing.assert_close(tokens, superthoughts_step(logits, embed, weight, bias, finished.clone(), PAD, EOS, 0.5)[0])


def test_bad_seed_and_threshold_types_name_the_op():
    logits, embed, weight, bias, finished = make_inputs(3, 100, 8, torch.float32, "cpu")
    args = (logits, embed, weight, bias, finished, PAD, EOS)
    with pytest.raises(TypeError, match=r"superthoughts_step: seed and offset must be integers, got seed=1\.5"):
        superthoughts_step(*args, 0.5, temperature=1.0, seed=1.5)
    with pytest.raises(TypeError, match=r"superthoughts_step: seed and offset must be integers, got seed=True"):
        superthoughts_step(*args, 0.5, temperature=1.0, seed=True)
    for threshold in ("x", "0.5", True):  # float() reads the last two
        with pytest.raises(TypeError, match=rf"superthoughts_step: .* must be numbers, got {threshold!r}"):
            superthoughts_step(*args, threshold)
    # numpy's and torch's bools too (numpy's is no subclass of bool: it ran as threshold 1.0).
    for threshold in (np.True_, torch.tensor(True)):
        with pytest.raises(TypeError, match=r"superthoughts_step: .* must be numbers, got"):
            superthoughts_step(*args, threshold)
    assert torch.equal(superthoughts_step(*args, np.float32(0.5))[0], superthoughts_step(*args, 0.5)[0])


@pytest.mark.parametrize("on_meta", ["embed", "merge_weight", "finished"])
def test_a_meta_tensor_among_cpu_ones_is_refused(on_meta):
    # The dispatcher sends the call to the Meta kernel (the fake), which returned uninitialised
    # tokens instead of the device error the CPU kernel gives.
    logits, embed, weight, bias, finished = make_inputs(3, 100, 8, torch.float32, "cpu")
    tensors = dict(embed=embed, merge_weight=weight, finished=finished)
    tensors[on_meta] = tensors[on_meta].to("meta")
    with pytest.raises(RuntimeError, match=rf"superthoughts_step: tensors on different devices: logits on cpu, "
                                           rf"{on_meta} on meta"):
        superthoughts_step(logits, tensors["embed"], tensors["merge_weight"], bias, tensors["finished"], PAD, EOS, 0.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_mixed_devices_rejected():
    logits, embed, weight, bias, finished = make_inputs(3, 100, 8, torch.float32, "cuda")
    with pytest.raises(RuntimeError, match="different devices"):
        superthoughts_step(logits, embed.cpu(), None, None, finished, PAD, EOS, 0.5)
