"""Command line: ``python -m autorlhf_nemo key=value ...`` (Hydra).

``--cfg job`` prints the composed config; under torchrun every rank runs the job.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from autorlhf_nemo.config.compose import conf_dir
from autorlhf_nemo.config.validate import ConfigError, foreign_option_problems, validate_config
from autorlhf_nemo.config.schema import register_configs
from autorlhf_nemo.versions import UnsupportedVersionError, check_supported

register_configs()


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    from autorlhf_nemo.jobs import run_job

    try:
        validate_config(cfg)  # in seconds: before torch, megatron or a process group is loaded
        run_job(cfg)
    except ConfigError as error:  # a user error, not a crash: no traceback
        print(f"autorlhf_nemo: {error}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    """The CLI. An option of another algorithm (``algorithm=grpo algorithm.vf_coef=...``) is
    named as such here; Hydra alone would call it an unknown key and suggest adding it.
    An untested megatron-core / nemo-toolkit is refused first, before any work."""
    try:
        check_supported()
    except UnsupportedVersionError as error:
        print(f"autorlhf_nemo: {error}", file=sys.stderr)
        sys.exit(2)
    problems = foreign_option_problems(sys.argv[1:])
    if problems:
        print(f"autorlhf_nemo: {ConfigError(problems)}", file=sys.stderr)
        sys.exit(2)
    hydra_main()


if __name__ == "__main__":
    main()
