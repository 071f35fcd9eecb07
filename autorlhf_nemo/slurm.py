"""``python -m autorlhf_nemo.slurm <overrides> [--dry-run]``: render and submit a Slurm job.

Composes the config from the overrides (as ``python -m autorlhf_nemo`` does),
checks the layout at the allocation's world size (``cluster.nodes x
cluster.gpus_per_node``) and, unless ``--no-plan``, the memory plan
(``autorlhf_nemo.plan``); then fills ``launch/slurm.sbatch`` and submits it
with ``sbatch`` (``--dry-run`` prints it instead). Each node runs one torchrun
with one process per GPU; every process runs ``python -m autorlhf_nemo`` with
the same overrides, shell-quoted so that no override can break or extend the
script.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from autorlhf_nemo.config.schema import RootConfig, typed_config
from autorlhf_nemo.config.validate import ConfigError, validate_config

# Values written unquoted into #SBATCH lines: Slurm reads them up to the end of the line.
_PLAIN_WORD = re.compile(r"^[A-Za-z0-9_.,:+@%=/\-]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FIELD = re.compile(r"\{\{(\w+)\}\}")


def template_path() -> Path:
    """launch/slurm.sbatch of the repository, or the copy packaged with an install."""
    package = Path(__file__).resolve().parent
    for candidate in (package.parent / "launch", package / "launch"):
        if (candidate / "slurm.sbatch").exists():
            return candidate / "slurm.sbatch"
    raise FileNotFoundError("launch/slurm.sbatch not found next to or inside the autorlhf_nemo package")


def job_overrides(overrides: Sequence[str], world_size: int) -> list[str]:
    """The user's overrides, plus the world size so that every rank checks the launch against it."""
    out = list(overrides)
    if not any(o.lstrip("+~").startswith("parallel.world_size=") for o in out):
        out.append(f"parallel.world_size={world_size}")
    return out


def _plain(name: str, value, problems: list[str]) -> str:
    text = str(value)
    if not _PLAIN_WORD.match(text):
        problems.append(f"cluster.{name}={text!r} may only contain letters, digits and _.,:+@%=/- "
                        f"(it is written into an #SBATCH line)")
    return text


def render_sbatch(cfg, overrides: Sequence[str]) -> str:
    """The batch script for ``cfg`` (composed from ``overrides``). Raises ConfigError."""
    cfg = typed_config(cfg)
    c, declared = cfg.cluster, cfg.parallel.world_size
    world_size = c.world_size()
    problems = []
    if c.nodes < 1 or c.gpus_per_node < 1:
        problems.append(f"cluster.nodes={c.nodes} and cluster.gpus_per_node={c.gpus_per_node} must be >= 1")
    if declared and declared != world_size:
        problems.append(f"parallel.world_size={declared} but the allocation has cluster.nodes x "
                        f"cluster.gpus_per_node = {world_size} GPUs: make them agree (or drop parallel.world_size)")
    fields = {name: _plain(name, getattr(c, name), problems) for name in ("job_name", "time", "log_dir")}
    directives = [f"#SBATCH --{flag}={_plain(name, getattr(c, name), problems)}"
                  for name, flag in (("partition", "partition"), ("account", "account"), ("qos", "qos"),
                                     ("cpus_per_task", "cpus-per-task")) if getattr(c, name) is not None]
    bad_env = [k for k in c.env if not _ENV_NAME.match(str(k))]
    if bad_env:
        problems.append(f"cluster.env names {bad_env} are not valid environment variable names")
    if problems:
        raise ConfigError(problems)

    container = ""
    if c.container_image:
        container = f"--container-image={shlex.quote(c.container_image)} --container-workdir=\"$PWD\" "
        if c.container_mounts:
            container += f"--container-mounts={shlex.quote(c.container_mounts)} "
    fields.update(
        nodes=str(c.nodes), gpus_per_node=str(c.gpus_per_node), master_port=str(int(c.master_port)),
        optional_directives="\n".join(directives),
        env_exports="\n".join(f"export {k}={shlex.quote(str(v))}" for k, v in c.env.items()),
        setup="\n".join(c.setup),
        container_args=container,
        python=shlex.quote(c.python),
        overrides=" ".join(shlex.quote(o) for o in job_overrides(overrides, world_size)),
    )
    return _FIELD.sub(lambda match: fields[match.group(1)], template_path().read_text())


def submit(script: str, log_dir: str, job_name: str) -> str:
    """Write the script next to the logs (Slurm does not create log directories) and sbatch it."""
    if shutil.which("sbatch") is None:
        raise RuntimeError("sbatch not found: run this on a Slurm login node, or use --dry-run to print the script")
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    path = Path(log_dir) / f"{job_name}.sbatch"
    path.write_text(script)
    result = subprocess.run(["sbatch", str(path)], capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"sbatch {path} failed ({result.returncode}): {result.stderr.strip()}")
    return f"{result.stdout.strip()} (script {path})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autorlhf_nemo.slurm", description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for python -m autorlhf_nemo")
    parser.add_argument("--dry-run", action="store_true", help="print the batch script, submit nothing")
    parser.add_argument("--no-plan", action="store_true", help="skip the GPU memory plan (layout rules still run)")
    args = parser.parse_args(argv)

    from hydra.errors import HydraException

    from autorlhf_nemo.config.compose import compose_config

    try:
        composed = compose_config(args.overrides)
        cfg = typed_config(composed)
        validate_config(composed, world_size=cfg.cluster.world_size())
        if not args.no_plan:
            from autorlhf_nemo.plan.planner import plan_layout

            problems = plan_layout(cfg).problems()
            if problems:
                raise ConfigError(problems + ["(python -m autorlhf_nemo.plan shows the whole plan; "
                                              "--no-plan submits anyway)"])
        script = render_sbatch(cfg, args.overrides)
    except (ConfigError, HydraException) as error:  # bad overrides, bad layout: no traceback
        print(f"autorlhf_nemo.slurm: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(script, end="")
        return 0
    try:
        print(submit(script, cfg.cluster.log_dir, cfg.cluster.job_name))
    except RuntimeError as error:
        print(f"autorlhf_nemo.slurm: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
