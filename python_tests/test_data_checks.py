"""Input checks of the unit layout and the collator (data.py), on hand-written examples: a
response with a doubled EOS, and rho_max outside [0, 1]. (The layouts themselves: test_data.py.)"""
from __future__ import annotations

import pytest

from superthoughts_ext.data import SuperThoughtsCollator, build_baseline, build_units

PAD, EOS = 0, 1


def test_a_response_ending_in_two_eos_is_refused():
    # Only the last token may be EOS: a response ending EOS, EOS would teach the model to go on
    # after its end (in both layouts), so the earlier EOS is named.
    with pytest.raises(ValueError, match=r"response holds EOS \(1\) at position 1 before its end"):
        build_units([10], [20, EOS, EOS], pad_id=PAD, eos_id=EOS)
    with pytest.raises(ValueError, match=r"response holds EOS \(1\) at position 1 before its end"):
        build_baseline([10], [20, EOS, EOS], EOS)
    with pytest.raises(ValueError, match=r"at position 0 before its end"):
        build_units([10], [EOS, EOS], pad_id=PAD, eos_id=EOS)


@pytest.mark.parametrize("rho_max", [1.5, -0.1])
def test_collator_refuses_rho_max_outside_0_1(rho_max):
    # rho is the fraction of pairs split; above 1 the split count would pass the pairs there are.
    with pytest.raises(ValueError, match=rf"SuperThoughtsCollator: rho_max must be in \[0, 1\], got {rho_max}"):
        SuperThoughtsCollator(PAD, EOS, rho_max=rho_max)
    SuperThoughtsCollator(PAD, EOS, rho_max=1.0)  # the bounds themselves are accepted
    SuperThoughtsCollator(PAD, EOS, rho_max=0.0)
