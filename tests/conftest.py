import os
import warnings
from pathlib import Path

import pytest

# Megatron warns at import that apex / Transformer Engine are absent (CPU machine).
warnings.filterwarnings("ignore", message=".*(Apex|Transformer Engine).*")
os.environ.setdefault("OMP_NUM_THREADS", "2")


WALKER = Path(__file__).parent / "fixtures" / "randomwalks_walker"


@pytest.fixture(scope="session")
def pretrained_walker():
    """The randomwalks walker pretrained on the seed-1002 walks, shipped with the tests (see its
    README): a folder whose ``hf/`` is an HF checkpoint. Shipped rather than pretrained per run so
    that every CPU starts its RL runs from the same weights (pretraining's fp32 rounding differs
    between instruction sets and moved the walker's greedy optimality from 0.84 to 0.73)."""
    return WALKER
