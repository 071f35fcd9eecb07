"""KL penalty coefficient controllers (Ziegler et al. 2019, "Fine-Tuning Language
Models from Human Preferences", section 2.2).

Fixed: beta stays at its initial value. Adaptive: after each rollout of
``n_steps`` samples with measured KL(policy || reference) ``kl``,

    e     = clip(kl / target - 1, -0.2, 0.2)
    beta <- beta (1 + e n_steps / horizon)

so beta grows while the policy drifts beyond ``target`` nats and shrinks below.
Both have ``state_dict``/``load_state_dict`` for checkpoints.
"""

from __future__ import annotations

import math


class FixedKLController:
    def __init__(self, init_kl_coef: float):
        if init_kl_coef < 0 or not math.isfinite(init_kl_coef):
            raise ValueError(f"init_kl_coef must be a finite number >= 0, got {init_kl_coef}")
        self.value = float(init_kl_coef)

    def update(self, kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        super().__init__(init_kl_coef)
        if target <= 0 or horizon <= 0:
            raise ValueError(f"adaptive KL needs target > 0 and horizon > 0, got target={target}, "
                             f"horizon={horizon}")
        self.target, self.horizon = float(target), int(horizon)

    def update(self, kl: float, n_steps: int) -> None:
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


def make_kl_controller(init_kl_coef: float, target: float | None, horizon: int) -> FixedKLController:
    """Adaptive when a ``target`` KL is set, fixed otherwise (trlX's convention)."""
    if target is None:
        return FixedKLController(init_kl_coef)
    return AdaptiveKLController(init_kl_coef, target, horizon)
