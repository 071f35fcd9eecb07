"""Command line: ``python -m autorlhf_nemo key=value ...`` (Hydra).

``--cfg job`` prints the composed config; under torchrun every rank runs the job.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from autorlhf_nemo.config.compose import conf_dir
from autorlhf_nemo.config.schema import register_configs

register_configs()


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from autorlhf_nemo.jobs import run_job

    run_job(cfg)


if __name__ == "__main__":
    main()
