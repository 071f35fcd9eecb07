"""Supervised fine-tuning: a loss (loss.py) and a model module (model.py)."""
