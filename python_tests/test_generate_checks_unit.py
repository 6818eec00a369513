"""Unit checks of the stop ids (stop_tokens.py) and of generate's input checks
(generate_checks.py) on stub models and tokenizers, CPU: no model is built or decoded."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from superthoughts_ext.generate_checks import check_model_and_inputs
from superthoughts_ext.stop_tokens import stop_token_ids


class _Tokenizer:
    """A tokenizer whose EOS is its own id and whose vocabulary has no ChatML turn ends."""

    eos_token_id = 7

    def get_vocab(self) -> dict[str, int]:
        return {"</s>": 7, "a": 3, "b": 4}


def test_stop_token_ids_keep_the_tokenizers_eos():
    # A tokenizer whose EOS the model's configs do not name (and that is no ChatML turn end):
    # decoding must still stop on it, after the model's own EOS.
    model = SimpleNamespace(config=SimpleNamespace(eos_token_id=2),
                            generation_config=SimpleNamespace(eos_token_id=[2, 5]))
    assert stop_token_ids(model, _Tokenizer()) == [2, 5, 7]
    assert stop_token_ids(SimpleNamespace(), _Tokenizer()) == [7]  # no EOS in any model config


class _ModelOn(torch.nn.Module):
    """A module whose one parameter reports `device` (a GPU device faked on a CPU-only machine)."""

    def __init__(self, device: str) -> None:
        super().__init__()
        self.device = torch.device(device)

    def parameters(self, recurse: bool = True):
        yield SimpleNamespace(device=self.device)


@pytest.mark.parametrize("with_mask", [False, True], ids=["ids-only", "ids-and-mask"])
def test_inputs_on_another_device_than_the_model_are_named(with_mask):
    # Inputs on the CPU and the model on a GPU (input_ids alone: two devices in all) must be
    # refused with a message naming both, not fail later inside the embedding lookup.
    ids = torch.ones(1, 3, dtype=torch.int64)
    mask = torch.ones_like(ids) if with_mask else None
    with pytest.raises(ValueError, match=r"generate: input_ids on cpu, the model on cuda:0.*: move the inputs to the "
                                         r"model's device \(input_ids.to\(device\)\)"):
        check_model_and_inputs(_ModelOn("cuda:0"), ids, mask)
    check_model_and_inputs(_ModelOn("cpu"), ids, mask)  # one device: accepted
