"""Process groups, Megatron parallel state and RNG from config; the CPU layer."""
