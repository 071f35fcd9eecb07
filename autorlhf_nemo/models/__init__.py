"""GPTModel construction (TransformerConfig + spec) and model heads."""
