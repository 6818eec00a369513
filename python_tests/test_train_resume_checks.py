"""The resume checks on hand-written checkpoint folders, without training: a checkpoint of another
kind of run or of a run of another length, a missing one, the last checkpoint of an output folder
(by step, not by name), data files that could not be read, LoRA target modules in another order or
as written by older releases, copies of a folder's checkpoints kept elsewhere, and checkpoints that
record no run settings. write_checkpoint serves test_mtp_next_token.py too. (Resumes of real runs:
test_train_resume.py.)
"""
from __future__ import annotations

import json
import warnings

import pytest

pytest.importorskip("transformers")
from superthoughts_ext.train import TrainOptions, train  # noqa: E402
from superthoughts_ext.train_resume import check_resume  # noqa: E402


def test_resume_refuses_a_checkpoint_of_another_kind_of_run(tmp_path):
    written = {
        "st-full": {"config.json": {"model_type": "qwen2", "superthoughts": {}}},
        "sft-full": {"config.json": {"model_type": "qwen2"}},
        "st-lora4": {"adapter_config.json": {"r": 4, "modules_to_save": ["compressor", "mtp"]}},
        "sft-lora8": {"adapter_config.json": {"r": 8, "modules_to_save": None}},
    }
    for name, files in written.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "trainer_state.json").write_text("{}")
        for file, values in files.items():
            (tmp_path / name / file).write_text(json.dumps(values))
    runs = {"st-full": (False, 0), "sft-full": (True, 0), "st-lora4": (False, 4), "sft-lora8": (True, 8)}
    kinds = {"st-full": "a SuperThoughts full run", "sft-full": "a baseline full run",
             "st-lora4": "a SuperThoughts LoRA r=4 run", "sft-lora8": "a baseline LoRA r=8 run"}
    for name in written:
        for this_run, (baseline, lora_r) in runs.items():
            resume = lambda: check_resume(tmp_path / "o", str(tmp_path / name), baseline=baseline, lora_r=lora_r)
            if this_run == name:
                resume()
                continue
            with pytest.raises(ValueError, match=rf"{name}' was written by {kinds[name]}, and this is {kinds[this_run]}; "
                                                 "resume with the options of the run that wrote it"):
                resume()


def test_resume_with_another_length_is_refused_where_the_schedule_depends_on_it(tmp_path):
    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps({"model_type": "qwen2", "superthoughts": {}}))
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 2, "max_steps": 4}))
    resume = lambda **kw: check_resume(tmp_path / "o", str(checkpoint), **kw)
    for scheduler, warmup in (("cosine", 0.03), ("linear", 0.0), ("constant_with_warmup", 0.1)):
        with pytest.raises(ValueError, match=r"checkpoint-4' is from a run of 4 steps, and this one has --max-steps 6; "
                                             r"resume with --max-steps 4"):
            resume(max_steps=6, lr_scheduler=scheduler, warmup_ratio=warmup)
        resume(max_steps=4, lr_scheduler=scheduler, warmup_ratio=warmup)  # an interrupted run goes on
        resume(max_steps=-1, lr_scheduler=scheduler, warmup_ratio=warmup)  # epochs: checked at train begin
    # Schedules the run's length does not shape: longer is fine.
    for scheduler in ("constant", "constant_with_warmup", "inverse_sqrt", "reduce_lr_on_plateau", "greedy"):
        resume(max_steps=6, lr_scheduler=scheduler, warmup_ratio=0.0)


def test_resume_without_a_checkpoint_is_refused_up_front(tmp_path):
    # Neither model nor data exists: the resume check comes first.
    opts = dict(model=tmp_path / "no_model", data=tmp_path / "no_data.jsonl")
    with pytest.raises(FileNotFoundError, match=r"--resume: no checkpoint-N folder in '.*fresh' to resume from"):
        train(TrainOptions(**opts, output_dir=tmp_path / "fresh", resume_from_checkpoint=True))
    with pytest.raises(FileNotFoundError, match=r"--resume '.*checkpoint-7': no such checkpoint directory"):
        train(TrainOptions(**opts, output_dir=tmp_path / "o", resume_from_checkpoint=str(tmp_path / "checkpoint-7")))


def write_checkpoint(folder, *, state=None, settings=None, run_id=None, files=None):
    """A checkpoint folder by hand: trainer_state.json (with the RunSettings record where
    `settings` or `run_id` is given) and other JSON files (name -> values)."""
    folder.mkdir(parents=True)
    state = dict(state or {})
    if settings is not None or run_id is not None:
        record = {key: value for key, value in (("settings", settings), ("run_id", run_id)) if value is not None}
        state["stateful_callbacks"] = {"RunSettings": {"args": record}}
    (folder / "trainer_state.json").write_text(json.dumps(state))
    for name, values in (files or {}).items():
        (folder / name).write_text(json.dumps(values))
    return folder


def test_a_finished_run_on_another_number_of_processes_is_told_its_global_batch(tmp_path):
    # The command of a 2-process run that finished, requeued on one process: its last checkpoint
    # is at --max-steps, but what differs is the global batch, which the error must name.
    batch = "global batch (--batch-size x --grad-accum x processes)"
    write_checkpoint(tmp_path / "o" / "checkpoint-12", state={"global_step": 12, "max_steps": 12},
                     settings={batch: 8})
    (tmp_path / "o" / "config.json").write_text("{}")  # the finished model
    with pytest.raises(ValueError, match=r"was trained with global batch \(--batch-size x --grad-accum x "
                                         r"processes\) 8 \(this run: 4\)"):
        check_resume(tmp_path / "o", True, max_steps=12, settings={batch: 4})


def test_the_last_checkpoint_is_the_highest_step_not_the_last_name(tmp_path):
    # "checkpoint-10" sorts before "checkpoint-9" as text: the folder given for a checkpoint must
    # be pointed at its step-10 one.
    for step in (9, 10):
        write_checkpoint(tmp_path / "o" / f"checkpoint-{step}")
    with pytest.raises(FileNotFoundError, match=r"is a run's output folder, not one of its checkpoints; resume from "
                                                r"its last one, '.*checkpoint-10'"):
        check_resume(tmp_path / "o", str(tmp_path / "o"))


def test_a_data_file_unread_on_either_side_is_not_compared(tmp_path):
    # --data None is a file that could not be read (loading it says why): no digest to compare,
    # so neither a checkpoint recording one nor this run's is refused for it.
    recorded = write_checkpoint(tmp_path / "checkpoint-1", settings={"--data": "abc" * 22, "--seed": 0})
    unread = write_checkpoint(tmp_path / "checkpoint-2", settings={"--data": None, "--seed": 0})
    check_resume(tmp_path / "o", str(recorded), settings={"--data": None, "--seed": 0})
    check_resume(tmp_path / "o", str(unread), settings={"--data": "abc" * 22, "--seed": 0})
    with pytest.raises(ValueError, match=r"checkpoint-1' was trained with --data sha256 abcabcabcabc\.\.\. \(this run: "
                                         r"sha256 defdefdefdef\.\.\.\)"):
        check_resume(tmp_path / "o", str(recorded), settings={"--data": "def" * 22, "--seed": 0})


def test_a_shorter_run_is_refused_too_where_the_schedule_depends_on_its_length(tmp_path):
    # A 10-step linear schedule resumed as a 4-step one would decay on the new length's schedule
    # from the middle of the old one, just as a longer one.
    checkpoint = write_checkpoint(tmp_path / "checkpoint-2", state={"global_step": 2, "max_steps": 10},
                                  files={"config.json": {"model_type": "qwen2", "superthoughts": {}}})
    with pytest.raises(ValueError, match=r"checkpoint-2' is from a run of 10 steps, and this one has --max-steps 4; "
                                         r"resume with --max-steps 10"):
        check_resume(tmp_path / "o", str(checkpoint), max_steps=4, lr_scheduler="linear")
    check_resume(tmp_path / "o", str(checkpoint), max_steps=10, lr_scheduler="linear")


def test_lora_target_modules_in_another_order_resume(tmp_path):
    # peft writes target_modules as a set, in any order: the same modules listed otherwise are the
    # same adapter, while other modules are not.
    adapter = {"r": 4, "modules_to_save": ["compressor", "mtp"], "target_modules": ["v_proj", "q_proj"],
               "lora_alpha": 32}
    checkpoint = write_checkpoint(tmp_path / "checkpoint-1", files={"adapter_config.json": adapter})
    resume = lambda lora: check_resume(tmp_path / "o", str(checkpoint), lora_r=4, lora=lora)
    resume({"target_modules": ["q_proj", "v_proj"], "lora_alpha": 32})
    with pytest.raises(ValueError, match=r"checkpoint-1' holds a LoRA adapter with --lora-target-modules "
                                         r"q_proj v_proj \(this run: q_proj\)"):
        resume({"target_modules": ["q_proj"], "lora_alpha": 32})
    # As the flag takes them: the names, not the regex confining a SuperThoughts run's to the backbone.
    confined = write_checkpoint(tmp_path / "checkpoint-2", files={"adapter_config.json": {
        **adapter, "target_modules": "backbone\\.(?:.*\\.)?(q_proj|v_proj)"}})
    with pytest.raises(ValueError, match=r"--lora-target-modules q_proj v_proj \(this run: v_proj\); resume with"):
        check_resume(tmp_path / "o", str(confined), lora_r=4,
                     lora={"target_modules": "backbone\\.(?:.*\\.)?(v_proj)", "lora_alpha": 32})


def test_a_copied_checkpoint_is_matched_with_the_outputs_latest_one(tmp_path):
    # The output's checkpoints were written by two runs (an old one's checkpoint-2, then
    # checkpoint-4 of the run now in the folder): a copy kept elsewhere continues the folder's run
    # when its run id is that of the latest checkpoint, not of the oldest.
    from superthoughts_ext.train_resume import check_output_dir, continued_run_id

    out = tmp_path / "o"
    write_checkpoint(out / "checkpoint-2", run_id="old")
    write_checkpoint(out / "checkpoint-4", run_id="new")
    new = write_checkpoint(tmp_path / "scratch" / "new" / "checkpoint-4", run_id="new")
    old = write_checkpoint(tmp_path / "scratch" / "old" / "checkpoint-2", run_id="old")
    check_output_dir(out, str(tmp_path / "model"), str(new))
    assert continued_run_id(new, out) == "new"
    with pytest.raises(ValueError, match=r"--output '.*o' holds another run \(checkpoint-2, checkpoint-4\), and "
                                         r"--resume '.*old/checkpoint-2' is not one of its checkpoints"):
        check_output_dir(out, str(tmp_path / "model"), str(old))
    assert continued_run_id(old, out) == ""


def test_lora_targets_of_releases_before_b69032d_resume(tmp_path):
    # SuperThoughts LoRA runs before commit b69032d (2026-12-05) wrote target_modules as
    # `backbone\..*\.(names)`, which adapts the same layers as today's `backbone\.(?:.*\.)?(names)`:
    # a resume with the run's own options was refused as "other target modules" (no flag gives
    # the old pattern). Their pattern never reached backbone.lm_head: one naming it adapted the
    # others alone, and a resume names those.
    from superthoughts_ext.train_utils import DEFAULT_LORA_TARGETS, lora_settings

    names = "|".join(sorted(DEFAULT_LORA_TARGETS))
    adapter = {"r": 4, "modules_to_save": ["compressor", "mtp"], "lora_alpha": 32, "lora_dropout": 0.0,
               "target_modules": f"backbone\\..*\\.({names})"}  # as written by c3ca857
    old = write_checkpoint(tmp_path / "checkpoint-2", files={"adapter_config.json": adapter})
    check_resume(tmp_path / "o", str(old), lora_r=4, lora=lora_settings(32, 0.0, DEFAULT_LORA_TARGETS, True))
    with pytest.raises(ValueError, match=r"--lora-target-modules q_proj v_proj \(this run: q_proj\); resume with"):
        check_resume(tmp_path / "o", str(write_checkpoint(tmp_path / "checkpoint-3", files={"adapter_config.json": {
            **adapter, "target_modules": "backbone\\..*\\.(q_proj|v_proj)"}})), lora_r=4,
            lora=lora_settings(32, 0.0, ["q_proj"], True))
    head = write_checkpoint(tmp_path / "checkpoint-4", files={"adapter_config.json": {
        **adapter, "target_modules": "backbone\\..*\\.(lm_head|q_proj)"}})
    with pytest.raises(ValueError, match=r"--lora-target-modules q_proj \(this run: lm_head q_proj\) \(an adapter "
                                         r"written before 2026-12-05, whose pattern never reached backbone.lm_head: "
                                         r"it adapted q_proj alone; resume with --lora-target-modules q_proj\)"):
        check_resume(tmp_path / "o", str(head), lora_r=4, lora=lora_settings(32, 0.0, ["q_proj", "lm_head"], True))
    check_resume(tmp_path / "o", str(head), lora_r=4, lora=lora_settings(32, 0.0, ["q_proj"], True))


def test_a_checkpoint_recording_no_settings_is_resumed_with_a_warning(tmp_path):
    # Checkpoints of releases before 8df6e74 record no run settings: a resume with another learning
    # rate or seed trained on at the old one's schedule without a word (Trainer restores it).
    settings = {"--learning-rate": 0.05, "--seed": 7}
    old = write_checkpoint(tmp_path / "checkpoint-2", state={"global_step": 2, "max_steps": 4})
    with pytest.warns(UserWarning, match=r"checkpoint-2' records no run settings \(written by an older release\?\): "
                                         r"whether this run's --learning-rate, .* is not checked"):
        check_resume(tmp_path / "o", str(old), settings=settings)
    recorded = write_checkpoint(tmp_path / "checkpoint-3", settings=settings)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_resume(tmp_path / "o", str(recorded), settings=settings)


def test_a_finished_run_is_told_by_its_record_beside_the_whole_model(tmp_path):
    # train_finished.finished_step, what `--resume auto` ends at once on.
    from superthoughts_ext.train_finished import FINISHED_RUN_FILE, finished_step, write_record

    record = {"--max-steps": 6, "--data": "ab" * 32, "lora": None}
    out = tmp_path / "o"
    out.mkdir()
    write_record(out, record, 6)
    assert finished_step(out, record) is None  # no config.json: a final save cut off while moving in
    (out / "config.json").write_text("{}")
    assert finished_step(out, record) == 6
    assert finished_step(out, {**record, "--max-steps": 8}) is None
    (out / "checkpoint-7").mkdir()  # a longer run resumed from it, under way there
    assert finished_step(out, record) is None
    (out / "checkpoint-7").rmdir()
    (out / FINISHED_RUN_FILE).unlink()  # an output finished by an earlier release
    assert finished_step(out, record) is None
