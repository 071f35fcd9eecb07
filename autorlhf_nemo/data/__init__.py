"""Tasks: prompts, reward functions and metrics."""
