"""Unit layout, pad-split and collator, on hand-written examples. (Their input checks:
test_data_checks.py; loading JSONL rows into examples: test_data_jsonl.py.)
"""
from __future__ import annotations

import math
import random

import pytest
import torch

from superthoughts_ext.data import (
    SuperThoughtsCollator,
    build_baseline,
    build_units,
    layout_length,
)

PAD, EOS, X = 0, 1, -100


def layout(seq) -> list[tuple]:
    """(first, second, is_unit, main target, MTP target) per position."""
    return list(zip(seq.first_ids.tolist(), seq.second_ids.tolist(), seq.is_unit.tolist(),
                    seq.labels_main.tolist(), seq.labels_mtp.tolist()))


def test_even_response_gets_eos_appended_as_single_unit():
    seq = build_units([10, 11, 12], [20, 21, 22, 23], pad_id=PAD, eos_id=EOS)
    assert layout(seq) == [
        (10, PAD, False, X, X),  # earlier prompt positions: no targets
        (11, PAD, False, X, X),
        (12, PAD, False, 20, 21),  # last prompt position predicts unit 1 = (20, 21)
        (20, 21, True, 22, 23),  # unit 1 predicts unit 2 = (22, 23)
        (22, 23, True, EOS, X),  # unit 3 is the single (EOS, PAD): nothing follows EOS
        (EOS, PAD, True, X, X),  # the EOS unit has no targets
    ]
    assert seq.position_ids.tolist() == list(range(6))
    assert seq.tokens() == seq.token_ids.tolist() == [10, 11, 12, 20, 21, 22, 23, EOS]


def test_eos_as_second_of_a_pair_and_existing_eos_not_doubled():
    for response in ([20, 21, 22], [20, 21, 22, EOS]):
        seq = build_units([10], response, pad_id=PAD, eos_id=EOS)
        assert layout(seq) == [(10, PAD, False, 20, 21), (20, 21, True, 22, EOS), (22, EOS, True, X, X)]


def test_pad_equal_to_eos_still_teaches_the_final_eos():
    # Qwen base tokenizers fall back to pad = eos: singleness is structural, not b == PAD.
    seq = build_units([10], [20, 21, 22], pad_id=EOS, eos_id=EOS)
    assert seq.labels_mtp.tolist() == [21, EOS, X]
    assert seq.is_pair.tolist() == [False, True, True] and seq.tokens() == [10, 20, 21, 22, EOS]


def test_short_responses():
    empty = build_units([10, 11], [], pad_id=PAD, eos_id=EOS)
    assert layout(empty) == [(10, PAD, False, X, X), (11, PAD, False, EOS, X), (EOS, PAD, True, X, X)]
    one = build_units([10], [20], pad_id=PAD, eos_id=EOS)
    assert layout(one) == [(10, PAD, False, 20, EOS), (20, EOS, True, X, X)]
    only_eos = build_units([10], [EOS], pad_id=PAD, eos_id=EOS)
    assert layout(only_eos) == layout(build_units([10], [], pad_id=PAD, eos_id=EOS))


def test_bad_inputs():
    with pytest.raises(ValueError, match="EOS.*before its end"):
        build_units([10], [20, EOS, 21], pad_id=PAD, eos_id=EOS)
    with pytest.raises(ValueError, match="empty prompt"):
        build_units([], [20], pad_id=PAD, eos_id=EOS)
    with pytest.raises(ValueError, match="split_fraction"):
        build_units([10], [20], pad_id=PAD, eos_id=EOS, split_fraction=1.5)


def test_full_pad_split_gives_one_token_per_unit():
    # The MTP head is still taught the token after each main target: decoding asks for it
    # after every single unit (the fallback path), and its confidence must be trained there.
    seq = build_units([10], [20, 21, 22], pad_id=PAD, eos_id=EOS, split_fraction=1.0)
    assert layout(seq) == [
        (10, PAD, False, 20, 21), (20, PAD, True, 21, 22), (21, PAD, True, 22, EOS),
        (22, PAD, True, EOS, X), (EOS, PAD, True, X, X),
    ]


def test_pad_split_shifts_later_pairs_like_a_fallback_step():
    # After a fallback step the decoder feeds (t1, PAD), then pairs that start one token later
    # than the unsplit layout's pairs: training layouts must hold pairs at odd offsets too.
    response = list(range(20, 32))  # + EOS: 13 tokens, 6 pairs + the EOS single unsplit
    offsets = set()
    for seed in range(40):
        seq = build_units([10], response, pad_id=PAD, eos_id=EOS, split_fraction=0.2, rng=random.Random(seed))
        check_rules(seq, [10], response)
        pair_starts = [int(seq.source_index[pos]) - 2 for pos in range(1, len(seq.first_ids)) if seq.is_pair[pos]]
        assert len(pair_starts) in (4, 5)  # 0.2 * 6 = 1.2 of the six pairs split: 1 or 2
        offsets.update(start % 2 for start in pair_starts)
    assert offsets == {0, 1}


def check_rules(seq, prompt: list[int], response: list[int]) -> None:
    """Every layout rule, stated independently of build_units' code."""
    m = len(prompt)
    full = prompt + response + ([EOS] if not response or response[-1] != EOS else [])
    assert seq.tokens() == seq.token_ids.tolist() == full
    assert seq.first_ids[:m].tolist() == prompt and not seq.is_unit[:m].any() and seq.is_unit[m:].all()
    assert (seq.second_ids[~seq.is_pair] == PAD).all() and not seq.is_pair[:m].any()
    assert (seq.labels_main[: m - 1] == X).all() and (seq.labels_mtp[: m - 1] == X).all()
    assert seq.first_ids[-1] == EOS or seq.second_ids[-1] == EOS
    assert seq.labels_main[-1] == X and seq.labels_mtp[-1] == X
    for i in range(m - 1, len(seq.first_ids) - 1):
        assert seq.labels_main[i] == seq.first_ids[i + 1]
        # MTP: the token after the next main target, whatever the next unit's size.
        after = seq.source_index[i] + 2
        assert seq.labels_mtp[i] == (full[after] if seq.first_ids[i + 1] != EOS else X)
        # The teacher (uncompressed) position for position i is followed by i's main target.
        assert full[seq.teacher_index()[i] + 1] == seq.labels_main[i]


@pytest.mark.parametrize("seed", range(20))
def test_random_pad_split_keeps_rules_and_tokens(seed):
    rng = random.Random(seed)
    prompt = [rng.randrange(2, 50) for _ in range(rng.randint(1, 5))]
    response = [rng.randrange(2, 50) for _ in range(rng.randint(0, 15))]
    rho = rng.uniform(0, 1)
    seq = build_units(prompt, response, pad_id=PAD, eos_id=EOS, split_fraction=rho, rng=rng)
    check_rules(seq, prompt, response)
    n_pairs = (len(response) + 1) // 2  # pairs of the unsplit layout (EOS appended)
    units = int(seq.is_unit.sum())
    assert units - (len(response) + 2) // 2 in (math.floor(rho * n_pairs), math.ceil(rho * n_pairs))


def split_pairs(n_pairs: int, rho: float, rng: random.Random) -> int:
    """Pairs that build_units splits in a response of `n_pairs` pairs (EOS included)."""
    response = list(range(20, 20 + 2 * n_pairs - 1))  # + EOS: 2 * n_pairs tokens
    seq = build_units([10], response, pad_id=PAD, eos_id=EOS, split_fraction=rho, rng=rng)
    return int(seq.is_unit.sum()) - n_pairs


@pytest.mark.parametrize("n_pairs, rho", [(1, 0.25), (2, 0.25), (2, 0.1), (3, 0.5), (7, 0.3), (10, 0.25)])
def test_pad_split_count_has_mean_rho_times_pairs(n_pairs, rho):
    # round() split none of one or two pairs at rho 0.25 (round(0.5) = 0), though decoding
    # falls back on short responses too. The count is floor or ceil of rho * pairs, so the
    # draws are Bernoulli around the floor with p = the fractional part: the sample mean of
    # N draws lies within 5 standard deviations, sqrt(p (1 - p) / N), of rho * pairs.
    draws, rng = 4000, random.Random(1234)
    counts = [split_pairs(n_pairs, rho, rng) for _ in range(draws)]
    exact = rho * n_pairs
    assert set(counts) <= {math.floor(exact), math.ceil(exact)}
    p = exact - math.floor(exact)
    assert abs(sum(counts) / draws - exact) <= 5 * math.sqrt(p * (1 - p) / draws)


def test_one_pair_response_is_split_sometimes():
    counts = [split_pairs(1, 0.25, random.Random(seed)) for seed in range(200)]
    assert 0 < sum(counts) < 200


@pytest.mark.parametrize("n_pairs", [1, 2, 5])
def test_pad_split_none_or_all_at_fraction_0_and_1(n_pairs):
    for seed in range(100):
        assert split_pairs(n_pairs, 0.0, random.Random(seed)) == 0
        assert split_pairs(n_pairs, 1.0, random.Random(seed)) == n_pairs
    assert split_pairs(n_pairs, 1.0, None) == n_pairs


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 8, 21])
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5, 1.0])
def test_layout_length_bounds_every_layout(n, fraction):
    # drop_beyond_context reads it as the most positions a row can take: never below a built
    # layout, and reached by some draw (rounding up), so no row is dropped that always fits.
    response = list(range(4, 4 + n))
    for ids in (response, response + [EOS]):
        bound = layout_length([5, 6], ids, EOS, fraction)
        lengths = {len(build_units([5, 6], ids, pad_id=PAD, eos_id=EOS, split_fraction=fraction,
                                   rng=random.Random(seed)).first_ids) for seed in range(100)}
        assert max(lengths) == bound
        # Tensors take the same ids (it read their truth value: "ambiguous" for a tensor).
        assert layout_length(torch.tensor([5, 6]), torch.tensor(ids, dtype=torch.int64), EOS, fraction) == bound


def test_baseline_layout():
    assert build_baseline([10, 11], [20, 21], EOS) == ([10, 11, 20, 21, EOS], [X, X, 20, 21, EOS])
    assert build_baseline([10], [20, EOS], EOS) == ([10, 20, EOS], [X, 20, EOS])


FEATURES = [{"prompt_ids": [10, 11, 12], "response_ids": [20, 21, 22, 23]}, {"prompt_ids": [13], "response_ids": [24]}]


def test_collator_pads_right():
    batch = SuperThoughtsCollator(PAD, EOS, rho_max=0.0)(FEATURES)
    assert set(batch) == {"first_ids", "second_ids", "is_unit", "position_ids", "attention_mask",
                          "labels_main", "labels_mtp"}
    assert batch["first_ids"].shape == (2, 6)
    assert batch["attention_mask"].tolist() == [[1] * 6, [1, 1, 0, 0, 0, 0]]
    assert batch["first_ids"][1].tolist() == [13, 24, PAD, PAD, PAD, PAD]
    assert batch["second_ids"][1].tolist() == [PAD, EOS, PAD, PAD, PAD, PAD]
    assert batch["is_unit"][1].tolist() == [False, True, False, False, False, False]
    assert batch["labels_main"][1].tolist() == [24, X, X, X, X, X]
    assert batch["labels_mtp"][1].tolist() == [EOS, X, X, X, X, X]
    assert batch["position_ids"][0].tolist() == list(range(6))


def test_collator_distill_and_baseline():
    batch = SuperThoughtsCollator(PAD, EOS, rho_max=0.0, with_distill=True)(FEATURES)
    assert batch["teacher_input_ids"].tolist() == [[10, 11, 12, 20, 21, 22, 23, EOS], [13, 24, EOS] + [PAD] * 5]
    assert batch["teacher_attention_mask"].sum(1).tolist() == [8, 3]
    assert batch["teacher_index"].tolist() == [[-1, -1, 2, 4, 6, -1], [0, -1, -1, -1, -1, -1]]
    plain = SuperThoughtsCollator(PAD, EOS, baseline=True)(FEATURES)
    assert set(plain) == {"input_ids", "attention_mask", "labels"}
    assert plain["input_ids"][1].tolist() == [13, 24, EOS, PAD, PAD, PAD, PAD, PAD]
    assert plain["labels"][1].tolist() == [X, 24, EOS, X, X, X, X, X]
    with pytest.raises(KeyError, match="prompt_ids"):
        SuperThoughtsCollator(PAD, EOS)([{"response_ids": [1]}])


def test_collator_draws_rho_per_sequence_reproducibly():
    long = [{"prompt_ids": [10], "response_ids": list(range(2, 42))}] * 8
    first = SuperThoughtsCollator(PAD, EOS, rho_max=0.5, seed=7)(long)
    again = SuperThoughtsCollator(PAD, EOS, rho_max=0.5, seed=7)(long)
    assert torch.equal(first["first_ids"], again["first_ids"])
    units = first["is_unit"].sum(1)
    assert units.min() >= 21 and units.max() <= 21 + 10 and len(set(units.tolist())) > 1


LONG_ROW = {"prompt_ids": [10], "response_ids": list(range(2, 42))}


def split_patterns(collator: SuperThoughtsCollator, num_workers: int, epochs: int = 1) -> list[list[tuple]]:
    """Per epoch, the unit layout (first_ids) of each batch of one identical row, in loader order."""
    loader = torch.utils.data.DataLoader([LONG_ROW] * 8, batch_size=1, num_workers=num_workers,
                                         collate_fn=collator, generator=torch.Generator().manual_seed(0))
    return [[tuple(batch["first_ids"][0].tolist()) for batch in loader] for _ in range(epochs)]


def test_collator_workers_draw_their_own_splits():
    # Two workers take batches in turn (worker 0: batches 0, 2, ...; worker 1: 1, 3, ...). A
    # generator copied into both would give batch 2k and 2k + 1 the same split.
    first, second = split_patterns(SuperThoughtsCollator(PAD, EOS, rho_max=0.5, seed=7), num_workers=2, epochs=2)
    assert all(first[k] != first[k + 1] for k in range(0, 8, 2)), first
    assert len(set(first)) == 8
    # A new iterator (epoch) gives each worker a new seed, hence new splits.
    assert second != first and len(set(first) & set(second)) == 0
    # Same seeds, same splits.
    assert split_patterns(SuperThoughtsCollator(PAD, EOS, rho_max=0.5, seed=7), num_workers=2, epochs=2) == [first, second]
    assert split_patterns(SuperThoughtsCollator(PAD, EOS, rho_max=0.5, seed=8), num_workers=2)[0] != first


def test_collator_ranks_and_epochs_draw_their_own_splits(monkeypatch):
    def patterns(epoch: int = 0) -> list[tuple]:
        collator = SuperThoughtsCollator(PAD, EOS, rho_max=0.5, seed=7)
        collator.set_epoch(epoch)
        return split_patterns(collator, num_workers=0)[0]

    rank0 = patterns()
    assert len(set(rank0)) == 8 and patterns() == rank0
    assert patterns(epoch=5) != rank0
    monkeypatch.setenv("RANK", "1")
    rank1 = patterns()
    assert rank1 != rank0 and patterns() == rank1


def test_a_row_index_keys_its_own_splits(monkeypatch):
    # train() numbers its rows: a row's splits depend on the seed, the epoch and the row alone,
    # not on the process, worker or step that collates it (so a resumed run replays them).
    rows = [{**LONG_ROW, "row": i} for i in range(8)]

    def layouts(collator, batches, num_workers=0):
        loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=num_workers, collate_fn=collator)
        return [tuple(tuple(ids[:n]) for ids, n in zip(batch["first_ids"].tolist(), batch["attention_mask"].sum(1)))
                for batch in loader]

    together = layouts(SuperThoughtsCollator(PAD, EOS, rho_max=0.5, seed=7), [rows[:4], rows[4:]])
    assert len({row for batch in together for row in batch}) == 8  # identical rows, their own splits
    one_by_one = layouts(SuperThoughtsCollator(PAD, EOS, rho_max=0.5, seed=7), [[r] for r in rows], num_workers=2)
    assert [row for batch in together for row in batch] == [batch[0] for batch in one_by_one]
    monkeypatch.setenv("RANK", "1")
    assert layouts(SuperThoughtsCollator(PAD, EOS, rho_max=0.5, seed=7), [rows[4:]]) == together[1:]
    later = SuperThoughtsCollator(PAD, EOS, rho_max=0.5, seed=7)
    later.set_epoch(1)
    assert not set(layouts(later, [rows[:4]])[0]) & set(together[0])
    assert layouts(SuperThoughtsCollator(PAD, EOS, rho_max=0.5, seed=8), [rows[:4]])[0] != together[0]
