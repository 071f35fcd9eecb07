"""Reward functions: the user protocol and built-in scorers."""

from autorlhf_nemo.rewards.reward_fn import RewardFunctionError, score

__all__ = ["RewardFunctionError", "score"]
