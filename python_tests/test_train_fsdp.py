"""FSDP2 training through `accelerate launch`, 2 processes on CPU (gloo), against DDP.

accelerate 1.15 turns `--use_fsdp` into FSDP only for GPU-like device types
(AcceleratorState switches distributed_type to FSDP inside its MULTI_GPU / MULTI_NPU / ...
branch); on CPU it keeps MULTI_CPU and silently runs DDP. torch's FSDP2 itself runs on CPU
with gloo, so the launched script lifts that one gate (FSDP_SCRIPT below) and the rest of
the path is the real one: accelerate's fully_shard wrapping, Trainer's gathered full-state
saves, FSDP checkpoints and resume. The tests check that FSDP did run, that the result
equals a DDP run of the same job (a full run, and a LoRA run whose saved model is merged), that
tied weights stay tied, and that a SIGTERM in the last step lets the final save finish (a resume
cannot make it under FSDP), after which the requeued `--resume auto` ends at once.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("accelerate")
import test_train  # noqa: E402
from test_train import free_port  # noqa: E402

from superthoughts_ext import train_utils  # noqa: E402

base_dirs = test_train.base_dirs  # the saved tiny base checkpoints (a fixture)

REPO = Path(__file__).resolve().parents[1]
FSDP_FLAGS = [
    "--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
    "--fsdp_transformer_layer_cls_to_wrap", "Qwen2DecoderLayer", "--fsdp_state_dict_type", "FULL_STATE_DICT",
    "--fsdp_reshard_after_forward", "true",
]

# accelerate's gate lifted (see the module docstring), the first lines of each launched script.
FSDP_ON_CPU = textwrap.dedent("""
    import json, os, signal, sys
    import accelerate.state
    from accelerate.utils import FullyShardedDataParallelPlugin

    init = accelerate.state.AcceleratorState.__init__

    def init_fsdp_on_cpu(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if os.environ.get("ACCELERATE_USE_FSDP") == "true" and self.distributed_type == accelerate.state.DistributedType.MULTI_CPU:
            self.distributed_type = accelerate.state.DistributedType.FSDP
            self.fsdp_plugin = (kwargs.get("fsdp_plugin") or getattr(self, "fsdp_plugin", None)
                                or FullyShardedDataParallelPlugin())

    accelerate.state.AcceleratorState.__init__ = init_fsdp_on_cpu
""")

FSDP_SCRIPT = FSDP_ON_CPU + textwrap.dedent("""
    import torch
    from torch.distributed.fsdp import FSDPModule
    from superthoughts_ext.train import TrainOptions, train

    model, data, out, steps = sys.argv[1:5]
    result = train(TrainOptions(model=model, data=data, output_dir=out, max_steps=int(steps), batch_size=2,
                                learning_rate=3e-3, warmup_ratio=0.0, lr_scheduler="constant", save_steps=2,
                                logging_steps=1, progress_bar=False, lora_r=int(os.environ.get("TEST_LORA_R", "0")),
                                resume_from_checkpoint=True if len(sys.argv) > 5 else None))
    state = accelerate.state.AcceleratorState()
    with open(os.path.join(out, f"rank{os.environ['RANK']}.json"), "w") as f:
        json.dump({"distributed_type": str(state.distributed_type), "fsdp_module": isinstance(result.model, FSDPModule),
                   "global_step": result.global_step, "world_size": int(os.environ["WORLD_SIZE"]),
                   "losses": [e["loss"] for e in result.log_history if "loss" in e]}, f)
    # After FSDP2 on gloo, about one CPU process in six aborted in interpreter teardown
    # ("terminate called without an active exception"), with or without
    # destroy_process_group; leaving without teardown never did (0 of 20).
    torch.distributed.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
""")


def launch(tmp_path: Path, launcher: list[str], base: Path, data: Path, out: Path, steps: int,
           resume: bool = False, lora_r: int = 0) -> list[dict]:
    script = tmp_path / "fsdp_train.py"
    script.write_text(FSDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "TEST_LORA_R": str(lora_r),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = launcher + [str(script), str(base), str(data), str(out), str(steps)] + (["resume"] if resume else [])
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


ACCELERATE_CMD = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2",
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
TORCHRUN_CMD = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]


def test_fsdp2_two_processes_matches_ddp(base_dirs, tmp_path):
    from superthoughts_ext.modeling import load_model

    base, data = base_dirs["qwen2"], base_dirs["data"]
    accelerate_cmd, torchrun_cmd = ACCELERATE_CMD, TORCHRUN_CMD
    fsdp_out, ddp_out = tmp_path / "fsdp", tmp_path / "ddp"
    # accelerate launch leaves --fsdp_cpu_ram_efficient_loading on by default; train turns it off.
    first = launch(tmp_path, accelerate_cmd + ["--main_process_port", str(free_port())] + FSDP_FLAGS,
                   base, data, fsdp_out, steps=2)
    assert (fsdp_out / "checkpoint-2" / "pytorch_model_fsdp.bin").is_file()
    resumed = launch(tmp_path, accelerate_cmd + ["--main_process_port", str(free_port())] + FSDP_FLAGS,
                     base, data, fsdp_out, steps=4, resume=True)
    ddp = launch(tmp_path, torchrun_cmd + ["--master_port", str(free_port())], base, data, ddp_out, steps=4)

    for rank in first + resumed:
        assert rank["distributed_type"] == "DistributedType.FSDP" and rank["fsdp_module"], rank
    assert [r["distributed_type"] for r in ddp] == ["DistributedType.MULTI_CPU"] * 2
    assert resumed[0]["global_step"] == resumed[1]["global_step"] == 4
    # Same data, same updates: the loss curves agree step by step, the resumed run included.
    torch.testing.assert_close(first[0]["losses"] + resumed[0]["losses"][2:], ddp[0]["losses"], rtol=1e-4, atol=0)
    assert ddp[0]["losses"][-1] < ddp[0]["losses"][0]

    # The gathered state dict holds embed_tokens and lm_head apart; the tied matrix is stored once.
    assert set(load_file(fsdp_out / "model.safetensors")) == set(load_file(ddp_out / "model.safetensors"))
    fsdp_model, ddp_model = load_model(fsdp_out), load_model(ddp_out)
    backbone = fsdp_model.backbone
    assert backbone.get_input_embeddings().weight is backbone.get_output_embeddings().weight
    reference = ddp_model.state_dict()
    for name, tensor in fsdp_model.state_dict().items():
        torch.testing.assert_close(tensor, reference[name], rtol=1e-3, atol=1e-4, msg=name)


def test_fsdp2_lora_run_matches_ddp(base_dirs, tmp_path):
    # LoRA under FSDP2: the adapters and the fully trained compressor / MTP are sharded with the
    # layers, and the saved model is the merged one, as under DDP.
    from superthoughts_ext.modeling import load_model

    base, data = base_dirs["qwen2"], base_dirs["data"]
    fsdp_out, ddp_out = tmp_path / "fsdp", tmp_path / "ddp"
    fsdp = launch(tmp_path, ACCELERATE_CMD + ["--main_process_port", str(free_port())] + FSDP_FLAGS,
                  base, data, fsdp_out, steps=3, lora_r=4)
    ddp = launch(tmp_path, TORCHRUN_CMD + ["--master_port", str(free_port())], base, data, ddp_out, steps=3, lora_r=4)
    assert [r["distributed_type"] for r in fsdp] == ["DistributedType.FSDP"] * 2
    torch.testing.assert_close(fsdp[0]["losses"], ddp[0]["losses"], rtol=1e-4, atol=0)
    assert ddp[0]["losses"][-1] < ddp[0]["losses"][0]
    reference = load_model(ddp_out).state_dict()
    start = load_file(base / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"]
    merged = load_model(fsdp_out).state_dict()
    assert not torch.equal(merged["backbone.model.layers.0.self_attn.q_proj.weight"], start)  # adapter merged in
    for name, tensor in merged.items():
        torch.testing.assert_close(tensor, reference[name], rtol=1e-3, atol=1e-4, msg=name)


# `superthoughts train ARGS` under FSDP, rank 0 sending itself SIGTERM during the forward of step
# SIGTERM_DURING_STEP (0: none); the exit status is the command's, without interpreter teardown.
FSDP_CLI_SCRIPT = FSDP_ON_CPU + textwrap.dedent("""
    from superthoughts_ext.train import main
    from superthoughts_ext.trainer import SuperThoughtsTrainer

    step, training_step = int(os.environ["SIGTERM_DURING_STEP"]), SuperThoughtsTrainer.training_step

    def signalled_step(self, *args, **kwargs):
        if self.state.global_step == step - 1 and os.environ["RANK"] == "0" and not hasattr(self, "signalled"):
            self.signalled = True
            os.kill(os.getpid(), signal.SIGTERM)
        return training_step(self, *args, **kwargs)

    SuperThoughtsTrainer.training_step = signalled_step
    status = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
""")


def test_a_sigterm_in_the_last_step_under_fsdp_saves_the_model_and_the_requeued_job_ends_at_once(base_dirs,
                                                                                                 tmp_path):
    # It stopped at the last step's checkpoint, from which a resume under FSDP cannot save the
    # model (trainer.load_finished_run): the requeued `--resume auto` exited 2 on every rank.
    script, out = tmp_path / "fsdp_cli.py", tmp_path / "out"
    script.write_text(FSDP_CLI_SCRIPT)
    argv = ["--model", str(base_dirs["qwen2"]), "--data", str(base_dirs["data"]), "--output", str(out),
            "--max-steps", "2", "--save-steps", "0", "--batch-size", "2", "--no-progress", "--resume", "auto"]
    runs = []
    for step in ("2", "0"):  # SIGTERM in step 2 of 2; then the requeued job
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "SIGTERM_DURING_STEP": step,
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        cmd = ACCELERATE_CMD + ["--main_process_port", str(free_port())] + FSDP_FLAGS + [str(script), *argv]
        runs.append(subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240))
    stopped, requeued = runs
    went_on = "terminated (SIGTERM): after training: the final save went on, the run is finished and its model saved"
    assert stopped.stderr.count(went_on) == 2, stopped.stderr[-4000:]  # both ranks, after the save
    assert (out / "config.json").is_file() and not list(out.glob("checkpoint-*"))
    assert requeued.returncode == 0, requeued.stderr[-4000:]
    assert requeued.stdout.count("train: --resume auto: the run is already finished") == 1


def test_share_tied_entries():
    from test_train import make_model

    model = make_model("qwen2", 30)
    gathered = {name: t.clone() for name, t in model.state_dict().items()}
    shared = train_utils.share_tied_entries(model, gathered)
    assert shared["lm_head.weight"] is shared["model.embed_tokens.weight"] is gathered["model.embed_tokens.weight"]
    assert all(shared[n] is gathered[n] for n in gathered if n != "lm_head.weight")
    assert gathered["lm_head.weight"] is not gathered["model.embed_tokens.weight"]


def test_fsdp_ram_efficient_loading_is_turned_off(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    with pytest.warns(UserWarning, match="cpu_ram_efficient_loading"):
        assert train_utils.without_fsdp_ram_efficient_loading({"seed": 1}) == {"seed": 1}
    assert os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "false"

    asked = {"fsdp": "full_shard", "fsdp_config": {"cpu_ram_efficient_loading": "true", "version": 2}}
    with pytest.warns(UserWarning, match="cpu_ram_efficient_loading"):
        changed = train_utils.without_fsdp_ram_efficient_loading(asked)
    assert changed["fsdp_config"] == {"cpu_ram_efficient_loading": False, "version": 2}
    assert asked["fsdp_config"]["cpu_ram_efficient_loading"] == "true"

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert train_utils.without_fsdp_ram_efficient_loading({"fsdp_config": {"cpu_ram_efficient_loading": True}}) \
            == {"fsdp_config": {"cpu_ram_efficient_loading": True}}
    assert os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"
