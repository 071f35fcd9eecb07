"""Offline DPO: a model module (model.py) on online DPO's loss (algorithms/online_dpo/loss.py)."""
