"""Hugging Face <-> Megatron checkpoint conversion (Llama family)."""

from pathlib import Path


def resolve_hf_checkpoint(name_or_path: str) -> Path:
    """A packaged model name (``smollm2-135m-instruct``) or a checkpoint directory."""
    from autorlhf_nemo.convert import smollm2

    if name_or_path == smollm2.NAME:
        return smollm2.ensure_checkpoint()
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"model.hf_checkpoint={name_or_path!r} is neither a directory nor a packaged model "
            f"({smollm2.NAME!r})")
    return path
