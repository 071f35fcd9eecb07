"""RLHF algorithms: each a config, a loss and a model module."""
