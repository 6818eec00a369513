"""Stamp analysis and printed tables of phase_probe.py."""
from __future__ import annotations

import torch

from probe_library import STAMPS, VARIANTS

MODES = ["eager", "queued_warm", "queued_cold", "graph"]
STAMP_MODES = ["queued_warm", "queued_cold", "graph"]


# ---- stamp analysis ----------------------------------------------------------------------

def med(values: torch.Tensor) -> float:
    return values.double().median().item()


def phase_summary(stamps: torch.Tensor, back_to_back: bool) -> dict:
    """stamps [launches, grid, 6] globaltimer ns -> microseconds.

    end_us[k]: median over launches of (last block past stamp k) - (first block entry): the
    wall time of one launch up to the end of phase k. step_us[k]: end_us[k] - end_us[k-1].
    block_median_us / block_max_us[k]: time one block spends between stamps k-1 and k
    (median over launches of the median / max over blocks).
    """
    if (stamps == 0).any():
        return {"error": f"{int((stamps == 0).sum())} stamps not written"}
    # Subtract in int64 first: ~1.7e18 ns do not fit a double's mantissa at ns resolution.
    rel = stamps - stamps[:, :, 0].min(dim=1).values.view(-1, 1, 1)
    last = rel.max(dim=1).values  # [launches, 6]
    first = rel.min(dim=1).values
    end = [med(last[:, k]) / 1e3 for k in range(len(STAMPS))]
    per_block = (rel[:, :, 1:] - rel[:, :, :-1]).double()
    out = {
        "launches": stamps.shape[0],
        "entry_skew_us": med(last[:, 0]) / 1e3,
        "end_us": dict(zip(STAMPS, end)),
        "step_us": {STAMPS[k]: end[k] - (end[k - 1] if k else 0.0) for k in range(len(STAMPS))},
        "block_median_us": {STAMPS[k + 1]: med(per_block[:, :, k].median(dim=1).values) / 1e3 for k in range(5)},
        "block_max_us": {STAMPS[k + 1]: med(per_block[:, :, k].max(dim=1).values) / 1e3 for k in range(5)},
        # First block out of the barrier minus last block into it.
        "barrier_release_us": med(first[:, 3] - last[:, 2]) / 1e3,
        "wall_us": end[-1],
    }
    if back_to_back and stamps.shape[0] > 1:
        entry = stamps[:, :, 0].min(dim=1).values
        exit_ = stamps[:, :, 5].max(dim=1).values
        out["gap_to_next_launch_us"] = med(entry[1:] - exit_[:-1]) / 1e3
        out["launch_period_us"] = med(entry[1:] - entry[:-1]) / 1e3
    return out


# ---- report ------------------------------------------------------------------------------

def fmt(value, width: int = 9) -> str:
    return f"{value:{width}.1f}" if isinstance(value, (int, float)) else f"{'-':>{width}}"


def print_config(row: dict) -> None:
    plan = row["plan"]
    regs = {k: row.get("kernels", {}).get(k, {}) for k in ("real", "instrumented")}
    regs_text = "/".join(f"{r.get('registers', '?')}r{'+spill' if r.get('local_bytes') else ''}" for r in regs.values())
    print(f"\n== {row['label']}: grid {plan['grid']}, range {plan['range']}, seg_max {plan['seg_max']}, "
          f"merge {plan['merge_path']}, registers real/instrumented {regs_text}; "
          f"check {'ok' if not row['errors'] else 'FAILED'} (vs op: {row['check'].get('vs_op') or 'not run'})")
    print(f"   {'variant (us, median)':<42}" + "".join(f"{m:>13}" for m in MODES))
    for _, key, label in VARIANTS:
        times = row["variants"].get(key, {})
        print(f"   {label:<42}" + "".join(f"{fmt(times.get(m), 13)}" for m in MODES))
    phases = row.get("phases", {})
    if not phases:
        return
    print(f"   {'instrumented: us since first block entry':<42}" + "".join(f"{m:>13}" for m in STAMP_MODES))
    for k, name in enumerate(STAMPS):
        cells = []
        for m in STAMP_MODES:
            p = phases.get(m)
            ok = p is not None and "end_us" in p
            cells.append(f"{p['end_us'][name]:6.1f} +{p['step_us'][name]:5.1f}" if ok else f"{'-':>13}")
        label = "entry (last block in)" if k == 0 else f"after {name}"
        print(f"   {label:<42}" + "".join(f"{c:>13}" for c in cells))
    for key, label in [("barrier_release_us", "barrier release (first out - last in)"),
                       ("gap_to_next_launch_us", "graph: last block out -> next launch in")]:
        print(f"   {label:<42}" + "".join(fmt(phases.get(m, {}).get(key), 13) for m in STAMP_MODES))
    outside = {m: row["variants"]["instrumented"].get(m) for m in STAMP_MODES}
    print(f"   {'event time - stamped wall (launch + drain)':<42}" + "".join(
        fmt(outside[m] - phases[m]["wall_us"]
            if outside[m] is not None and "wall_us" in phases.get(m, {}) else None, 13) for m in STAMP_MODES))


def print_summary(rows: list[dict]) -> None:
    print("\n== summary (us). real/empty/sync: graph mode (queued_cold for real in brackets); "
          "phases: step times of the instrumented kernel, queued_cold")
    head = ["config", "real", "[cold]", "empty", "e.coop", "sync", "skew", "prefet", "reduce", "g.sync",
            "write", "merge", "wall", "outside"]
    print(f"{head[0]:<34}" + "".join(f"{h:>8}" for h in head[1:]))
    for row in rows:
        v, p = row["variants"], row.get("phases", {}).get("queued_cold", {})
        cells = [v.get("real", {}).get("graph"), v.get("real", {}).get("queued_cold"),
                 v.get("empty_normal", {}).get("graph"), v.get("empty_coop", {}).get("graph"),
                 v.get("sync_coop", {}).get("graph"), p.get("entry_skew_us")]
        cells += [p.get("step_us", {}).get(s) for s in STAMPS[1:]]
        inst = v.get("instrumented", {}).get("queued_cold")
        cells += [p.get("wall_us"), inst - p["wall_us"] if inst is not None and "wall_us" in p else None]
        print(f"{row['label']:<34}" + "".join(fmt(c, 8) for c in cells))
