"""Cluster launch: the rendered sbatch script (run under stand-ins for Slurm's commands, as
no Slurm runs here), its quoting, the submit path, and Hydra's submitit launchers (the Slurm
one composed, the local executor running a real 2-rank job)."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from helpers import cli_env
from autorlhf_nemo.config.compose import compose_config, conf_dir
from autorlhf_nemo.config.schema import register_configs
from autorlhf_nemo.config.validate import ConfigError
from autorlhf_nemo.slurm import render_sbatch

CANARY = "autorlhf_injected"
# Overrides a user might type, including ones that would break or extend a naively built script.
NASTY = [f'logging.wandb_project="a b; touch {CANARY} $(touch {CANARY}) `touch {CANARY}`"',
         'run_dir="runs/it\'s here"',
         "+cluster.env.NCCL_SOCKET_IFNAME='ib0 && echo'"]
RECIPE_4X8 = ["recipe=llama3_70b_ppo", "model.hf_checkpoint=/data/Meta-Llama-3-70B-Instruct",
              "cluster.partition=batch", "cluster.account=rlhf", "cluster.log_dir=/scratch/logs"]


def _stub(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_rendered_sbatch_for_4_nodes_x_8_gpus():
    script = render_sbatch(compose_config(RECIPE_4X8), RECIPE_4X8)
    for line in ["#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --partition=batch", "#SBATCH --account=rlhf", "#SBATCH --time=24:00:00",
                 "#SBATCH --job-name=llama3_70b_ppo", "#SBATCH --output=/scratch/logs/%x-%j.out",
                 '--nnodes="$SLURM_NNODES"', "--nproc-per-node=8", "--rdzv-backend=c10d",
                 '--rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT"',
                 "-m autorlhf_nemo recipe=llama3_70b_ppo model.hf_checkpoint=/data/Meta-Llama-3-70B-Instruct "
                 "cluster.partition=batch cluster.account=rlhf cluster.log_dir=/scratch/logs parallel.world_size=32"]:
        assert line in script, line
    assert not re.search(r"\{\{\w+\}\}", script)  # every field filled
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_script_runs_under_slurm_stand_ins_and_passes_overrides_intact(tmp_path):
    """Run the script with scontrol/srun stand-ins: srun records the command it would start
    on every node. Each override must arrive as one argument, byte for byte, and nothing in
    them may run."""
    overrides = [*RECIPE_4X8, *NASTY]
    script = render_sbatch(compose_config(overrides), overrides)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir, "scontrol", 'echo gpu-node-017; echo gpu-node-018; echo gpu-node-019; echo gpu-node-020\n')
    _stub(bin_dir, "srun", f'printf "%s\\0" "$@" > {tmp_path}/srun_argv\n'
                           f'env > {tmp_path}/srun_env\n')
    (tmp_path / "job.sbatch").write_text(script)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="4242", SLURM_NNODES="4",
               SLURM_JOB_NODELIST="gpu-node-[017-020]")
    proc = subprocess.run(["bash", "job.sbatch"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "rendezvous gpu-node-017:29500" in proc.stdout
    argv = (tmp_path / "srun_argv").read_text().split("\0")[:-1]
    assert argv[:4] == ["--ntasks-per-node=1", "--kill-on-bad-exit=1", "python", "-m"]
    assert argv[4:11] == ["torch.distributed.run", "--nnodes=4", "--nproc-per-node=8", "--rdzv-id=4242",
                          "--rdzv-backend=c10d", "--rdzv-endpoint=gpu-node-017:29500", "-m"]
    assert argv[11:] == ["autorlhf_nemo", *overrides, "parallel.world_size=32"]
    assert not list(tmp_path.rglob(f"*{CANARY}*"))
    srun_env = (tmp_path / "srun_env").read_text()
    assert "NCCL_SOCKET_IFNAME=ib0 && echo\n" in srun_env          # exported verbatim, not executed
    assert "TORCH_NCCL_ASYNC_ERROR_HANDLING=1" in srun_env


@pytest.mark.parametrize("field, value", [("job_name", "x\n#SBATCH --mem=0"), ("partition", "gpu --exclusive"),
                                          ("time", "1:00:00;reboot")])
def test_values_that_would_extend_an_sbatch_line_are_rejected(field, value):
    cfg = compose_config(RECIPE_4X8)
    OmegaConf.update(cfg, f"cluster.{field}", value)
    with pytest.raises(ConfigError, match=f"cluster.{field}="):
        render_sbatch(cfg, RECIPE_4X8)


def test_world_size_disagreeing_with_the_allocation_is_rejected():
    overrides = [*RECIPE_4X8, "parallel.world_size=16"]
    with pytest.raises(ConfigError, match="parallel.world_size=16 but the allocation has"):
        render_sbatch(compose_config(overrides), overrides)


def test_bad_environment_variable_name_is_rejected():
    cfg = compose_config([*RECIPE_4X8, "+cluster.env.NCCL_IB_HCA=mlx5"])
    OmegaConf.update(cfg, "cluster.env", {"BAD NAME": "1"}, merge=False)
    with pytest.raises(ConfigError, match="not valid environment variable names"):
        render_sbatch(cfg, RECIPE_4X8)


def test_container_runs_torchrun_inside_pyxis():
    overrides = [*RECIPE_4X8, "cluster.container_image='nvcr.io#nvidia/nemo:25.02'",
                 "cluster.container_mounts=/data:/data"]
    script = render_sbatch(compose_config(overrides), overrides)
    assert "--container-image='nvcr.io#nvidia/nemo:25.02' " in script
    assert "--container-mounts=/data:/data " in script


def _slurm_cli(args, path_prefix=None, cwd=None):
    env = cli_env()
    if path_prefix:
        env["PATH"] = f"{path_prefix}:{env['PATH']}"
    return subprocess.run([sys.executable, "-m", "autorlhf_nemo.slurm", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def test_cli_dry_run_prints_and_submit_calls_sbatch(tmp_path):
    dry = _slurm_cli(["--dry-run", *RECIPE_4X8])
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("#!/bin/bash") and "#SBATCH --nodes=4" in dry.stdout

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir, "sbatch", f'cp "$1" {tmp_path}/submitted.sbatch; echo "Submitted batch job 4242"\n')
    args = ["--no-plan", *RECIPE_4X8[:2], f"cluster.log_dir={tmp_path}/logs"]
    submitted = _slurm_cli(args, path_prefix=bin_dir)
    assert submitted.returncode == 0, submitted.stderr
    assert "Submitted batch job 4242" in submitted.stdout
    kept = tmp_path / "logs" / "llama3_70b_ppo.sbatch"
    assert kept.read_text() == (tmp_path / "submitted.sbatch").read_text()
    assert f"#SBATCH --output={tmp_path}/logs/%x-%j.out" in kept.read_text()


def test_cli_refuses_a_plan_that_does_not_fit_before_submitting():
    proc = _slurm_cli(["--dry-run", *RECIPE_4X8, "cluster.nodes=1", "cluster.gpus_per_node=2",
                       "parallel.tensor_model_parallel_size=2", "parallel.pipeline_model_parallel_size=1"])
    assert proc.returncode == 2
    assert "GiB per GPU" in proc.stderr and "#SBATCH" not in proc.stdout


def test_hydra_submitit_slurm_launcher_composes_for_multi_node_jobs():
    register_configs()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "recipe=llama3_70b_ppo"],
                      return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (4, 8, 8)
    assert launcher["timeout_min"] == 24 * 60 and launcher["name"] == "llama3_70b_ppo"


def test_split_recipe_launches_every_rank_learners_and_generators_alike():
    """The 70B split recipe: 5 nodes x 8 GPUs, one torchrun per node, world 40 (32 learners, 8 generators);
    Hydra's Slurm launcher asks for the same 40 tasks."""
    overrides = ["recipe=llama3_70b_online_dpo_split", "model.hf_checkpoint=/data/Meta-Llama-3-70B-Instruct"]
    script = render_sbatch(compose_config(overrides), overrides)
    for line in ["#SBATCH --nodes=5", "#SBATCH --gpus-per-node=8", "--kill-on-bad-exit=1", "--nproc-per-node=8",
                 "recipe=llama3_70b_online_dpo_split model.hf_checkpoint=/data/Meta-Llama-3-70B-Instruct "
                 "parallel.world_size=40"]:
        assert line in script, line
    register_configs()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "recipe=llama3_70b_online_dpo_split"],
                      return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert (launcher["nodes"], launcher["tasks_per_node"]) == (5, 8)


def test_cfg_hydra_shows_the_launcher():
    proc = subprocess.run([sys.executable, "-m", "autorlhf_nemo", "hydra/launcher=slurm", "recipe=llama3_8b_ppo",
                           "--cfg", "hydra", "-p", "hydra.launcher"], env=cli_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in proc.stdout
    assert "tasks_per_node: ${cluster.gpus_per_node}" in proc.stdout


def test_submitit_local_executor_runs_a_two_rank_job(tmp_path):
    """hydra/launcher=local: two processes started by submitit find each other through the
    submitit job environment (no torchrun) and run the layout job at TP2 on gloo."""
    proc = subprocess.run([sys.executable, "-m", "autorlhf_nemo", "-m", "hydra/launcher=local",
                           "cluster.gpus_per_node=2", "parallel=tp2", f"hydra.sweep.dir={tmp_path}"],
                          env=cli_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    logs = sorted((tmp_path / ".submitit").rglob("*_log.out"))
    assert len(logs) == 2
    rank0 = next(log.read_text() for log in logs if re.search(r"_0_log\.out$", log.name))
    assert "layout: TP2 x PP1 x DP1 on 2 rank(s), backend gloo" in rank0
    assert "parameters per model replica: 180,800" in rank0
    assert len(list((tmp_path / ".submitit").rglob("*_result.pkl"))) == 2
