"""Megatron distributed checkpoints (save at one layout, load at another)."""
