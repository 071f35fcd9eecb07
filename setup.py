"""autorlhf_nemo: RLHF on Megatron-core (PPO, ILQL, online DPO, RLOO)."""

from setuptools import find_packages, setup

# torch is pinned to the CPU wheel by constraints.txt in `make install`; on GPU
# clusters the NVIDIA container's own torch satisfies this range.
INSTALL_REQUIRES = [
    "torch>=2.5,<2.15",
    # Two tested stacks, chosen by the Python version (autorlhf_nemo/versions.py holds the
    # code that differs between them and refuses other releases at start-up):
    #   Python 3.11: megatron-core 0.16.x, nemo-toolkit 2.7.x, transformers 4.57.x
    #                (0.16.1 is the newest megatron-core for 3.11; NeMo 2.7 pins transformers ~=4.57)
    #   Python 3.12: megatron-core 0.19.x, nemo-toolkit 3.0.x, transformers 5.x
    # Releases in between (megatron-core 0.17/0.18) are untested and not admitted. Markers rather
    # than one wide range: on 3.11 a wide range would let pip pair nemo-toolkit 3.0 with
    # transformers 5, an untested mix.
    "megatron-core>=0.16.1,<0.17; python_version < '3.12'",
    "megatron-core>=0.19,<0.20; python_version >= '3.12'",
    "hydra-core>=1.3,<1.4",
    "omegaconf>=2.3,<2.4",
    "transformers>=4.57,<4.58; python_version < '3.12'",
    "transformers>=5,<6; python_version >= '3.12'",
    # Datasets (data/loader.py): 5.0.x is the newest line that accepts transformers 4.57's
    # huggingface-hub < 1.0; 5.2 needs huggingface-hub >= 1.31, which transformers 5 brings.
    "datasets>=5.0,<5.1; python_version < '3.12'",
    "datasets>=5.2,<5.3; python_version >= '3.12'",
    "safetensors>=0.4",
    "gguf>=0.10",
    "accelerate>=0.34",
    "sentencepiece>=0.2",
    "numpy>=1.24",
    # Trainer output: progress bar, TensorBoard event files, the reward/KL plot.
    "tqdm>=4.60",
    "tensorboard>=2.14",
    "matplotlib>=3.7",
    # The sentiment task's reward: the VADER lexicon scorer (pure Python, offline).
    "vaderSentiment>=3.3",
    # The algorithm modules are NeMo ModelPT subclasses (only nemo.core is used; 3.0 dropped
    # the LLM collection but keeps ModelPT). Imported lazily, never by the low-level modules.
    "nemo-toolkit[core]>=2.7,<2.8; python_version < '3.12'",
    "nemo-toolkit[core]>=3.0,<3.1; python_version >= '3.12'",
    # Slurm sweeps from Hydra (hydra/launcher=slurm) and the submitit job environment.
    "hydra-submitit-launcher>=1.2,<1.3",
]

EXTRAS_REQUIRE = {
    # GPU clusters: fused kernels and the Transformer Engine layer spec. NVIDIA's
    # NeMo/PyTorch containers ship both (apex is not on PyPI).
    "gpu": ["transformer-engine[pytorch]>=2.0"],
    "test": ["pytest>=8"],
    # The documentation site (mkdocs.yml; `mkdocs build --strict` runs in the test suite).
    "docs": ["mkdocs>=1.6,<2", "mkdocs-material>=9.5,<10"],
}

setup(
    name="autorlhf_nemo",
    version="0.1.0",
    description="RLHF (PPO, ILQL, online DPO, RLOO) on NVIDIA Megatron-core",
    python_requires=">=3.11,<3.13",  # the two tested stacks (see INSTALL_REQUIRES)
    packages=find_packages(include=["autorlhf_nemo", "autorlhf_nemo.*"]) + ["autorlhf_nemo.conf",
                                                                              "autorlhf_nemo.launch"],
    # The Hydra config tree (conf/) and the Slurm template (launch/) live at the top level
    # and ship inside the package as autorlhf_nemo.conf and autorlhf_nemo.launch, so
    # installed copies (the Docker image) find them too.
    package_dir={"autorlhf_nemo.conf": "conf", "autorlhf_nemo.launch": "launch"},
    package_data={"autorlhf_nemo.conf": ["*.yaml", "*/*.yaml", "*/*/*.yaml"],
                  "autorlhf_nemo.launch": ["*.sbatch"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["autorlhf-nemo=autorlhf_nemo.__main__:main"]},
)
