"""Pure tensor functions (vocab-parallel log-probs, masks); no global state."""
