"""Dry-run planning of a layout: ``python -m autorlhf_nemo.plan`` (see planner.py)."""
