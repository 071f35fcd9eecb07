"""Megatron training plumbing shared by every algorithm: DDP, optimizer, one step."""
