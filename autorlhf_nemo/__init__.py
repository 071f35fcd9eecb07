"""autorlhf_nemo: RLHF (PPO, ILQL, online DPO, RLOO) on Megatron-core."""

__version__ = "0.1.0"
