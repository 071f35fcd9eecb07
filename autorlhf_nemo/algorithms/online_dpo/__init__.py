"""Online DPO: a loss (loss.py) and a model module (model.py)."""
