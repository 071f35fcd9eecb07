"""Lazy reads of (slices of) tensors from a Hugging Face safetensors checkpoint.

Each rank reads only its own shard: ``read(name, rows=(a, b))`` loads rows
a..b of one tensor without materialising the rest (safetensors slicing).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Optional

import torch
from safetensors import safe_open

Span = Optional[tuple[int, int]]


class CheckpointReader:
    """Tensors by HF name from a directory (single or sharded safetensors) or a dict."""

    def __init__(self, source: str | Path | Mapping[str, torch.Tensor]):
        self._tensors: Mapping[str, torch.Tensor] | None = None
        self._files: dict[str, Path] = {}
        self._handles: dict[Path, object] = {}
        if isinstance(source, Mapping):
            self._tensors = source
            return
        root = Path(source)
        index = root / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            self._files = {name: root / file for name, file in weight_map.items()}
        elif (root / "model.safetensors").exists():
            with safe_open(root / "model.safetensors", framework="pt") as f:
                self._files = {name: root / "model.safetensors" for name in f.keys()}
        else:
            raise FileNotFoundError(
                f"no model.safetensors or model.safetensors.index.json in {root}: point "
                "model.hf_checkpoint at a Hugging Face checkpoint directory saved as safetensors")

    def names(self) -> list[str]:
        return list(self._tensors) if self._tensors is not None else list(self._files)

    def __contains__(self, name: str) -> bool:
        return name in (self._tensors if self._tensors is not None else self._files)

    def read(self, name: str, rows: Span = None, cols: Span = None) -> torch.Tensor:
        """Tensor ``name``, restricted to ``rows`` [a, b) and/or ``cols`` [a, b)."""
        if name not in self:
            raise KeyError(f"tensor {name!r} not found in the Hugging Face checkpoint")
        r = slice(*rows) if rows else slice(None)
        c = slice(*cols) if cols else slice(None)
        if self._tensors is not None:
            t = self._tensors[name]
            return (t[r, c] if t.dim() == 2 else t[r]).clone()
        path = self._files[name]
        if path not in self._handles:
            self._handles[path] = safe_open(path, framework="pt")
        sliced = self._handles[path].get_slice(name)
        return sliced[r, c] if len(sliced.get_shape()) == 2 else sliced[r]


def read_hf_config(path: str | Path) -> dict:
    return json.loads((Path(path) / "config.json").read_text())
