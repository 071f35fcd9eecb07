"""PPO's tensor-parallel pieces at TP1, TP2 and TP2+SP against unsharded formulas:
the value head v = W2 relu(W1 h) (values and gradients) and vocab-parallel entropy."""

from __future__ import annotations

import pytest
import torch

from helpers import torchrun


@pytest.mark.parametrize("nproc,layout", [(1, "parallel=single"), (2, "parallel=tp2"), (2, "parallel=tp2_sp")])
def test_value_head_and_entropy_match_unsharded_formulas(tmp_path, nproc, layout):
    out = tmp_path / "head.pt"
    torchrun("head_checks.py", nproc, ["--out", str(out), layout])
    r = torch.load(out)
    assert r["values"].shape == (8, 3, 2)
    torch.testing.assert_close(r["values"], r["ref"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(r["grad_w1"], r["ref_w1"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(r["grad_w2"], r["ref_w2"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(r["entropy"], r["ref_entropy"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(r["entropy_grad"], r["ref_entropy_grad"], rtol=1e-5, atol=1e-6)
