import os
import warnings

import pytest

# Megatron warns at import that apex / Transformer Engine are absent (CPU machine).
warnings.filterwarnings("ignore", message=".*(Apex|Transformer Engine).*")
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def pretrained_walker(tmp_path_factory):
    """The randomwalks walker pretrained once at TP1 (300 steps): a folder with
    ``result.pt`` (losses, optimality figures) and ``hf/`` (the weights as an HF checkpoint)."""
    from helpers import torchrun

    root = tmp_path_factory.mktemp("walker")
    torchrun("randomwalks_pretrain_checks.py", 1, [
        "--out", str(root / "result.pt"), "--export", str(root / "hf"), "--steps", "300", "train.lr=3e-3",
        "train.micro_batch_size=100", "train.global_batch_size=100"])
    return root
