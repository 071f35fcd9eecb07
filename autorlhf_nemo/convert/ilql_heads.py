"""ILQL's heads beside the exported policy: ``<export>/ilql_heads.safetensors`` and ``ilql_heads.json``.

The HF export (hf_llama.py) holds the trunk and LM head only: a plain transformers model,
which samples as beta = 0. Q-guided decoding also needs the heads, saved here as full
(TP-gathered) fp32 tensors without vocabulary padding:

    v_head.fc1.weight [w, H], v_head.fc1.bias [w], v_head.fc2.weight [1, w], v_head.fc2.bias [1]
    q_heads.<i>.fc1.weight [w, H], .fc1.bias [w], .fc2.weight [V, w], .fc2.bias [V]        i = 0 (, 1)
    target_q_heads.<i>.…   the same shapes (the heads decoding reads)

    v(h) = fc2(relu(fc1 h)),  q_i(h) = fc2(relu(fc1 h)),  score = log_softmax(logits) + beta (min_i target_q_i - v)

``ilql_heads.json``: {"width", "two_qs", "vocab_size", "hidden_size"}. ``load_heads`` puts
them into an ILQLModel at any TP layout (``python -m autorlhf_nemo.generate``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from safetensors.torch import load_file, save_file

from autorlhf_nemo.convert.hf_llama import _gather_tp, _is_stage_writer

HEADS_FILE, HEADS_CONFIG = "ilql_heads.safetensors", "ilql_heads.json"


def _vocab_rows(name: str) -> bool:
    """Whether the tensor's first dimension is the (padded) vocabulary."""
    return "q_heads" in name and ".fc2." in name


def export_heads(model, cfg, out_dir: str | Path) -> None:
    """Collective over all ranks; the last stage's (DP 0, TP 0) rank writes."""
    heads = model.heads
    if heads is not None and parallel_state.get_data_parallel_rank() == 0:  # the TP ranks of one replica gather
        full, writer = {}, _is_stage_writer()
        for name, param in heads.state_dict(keep_vars=True).items():
            if name.endswith("_extra_state"):
                continue
            tensor = _gather_tp(param)     # one full tensor at a time; only the writer keeps it
            if writer:
                tensor = tensor.float().cpu()
                full[name] = tensor[:cfg.model.vocab_size].contiguous() if _vocab_rows(name) else tensor.contiguous()
        if writer:
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            save_file(full, str(out / HEADS_FILE), metadata={"format": "pt"})
            a = cfg.algorithm
            (out / HEADS_CONFIG).write_text(json.dumps({"width": a.width(cfg.model.hidden_size), "two_qs": a.two_qs,
                                                        "vocab_size": cfg.model.vocab_size,
                                                        "hidden_size": cfg.model.hidden_size}, indent=1))
    dist.barrier()


@torch.no_grad()
def load_heads(model, source: str | Path) -> None:
    """Fill ``model.heads`` (this rank's shards) from an export's full tensors."""
    heads = model.heads
    if heads is None:
        return
    saved = json.loads((Path(source) / HEADS_CONFIG).read_text())
    m = model.run_cfg.model
    if (saved["vocab_size"], saved["hidden_size"]) != (m.vocab_size, m.hidden_size):
        raise ValueError(f"{source}: heads for vocabulary {saved['vocab_size']} and hidden size {saved['hidden_size']}, "
                         f"but the model has {m.vocab_size} and {m.hidden_size}: load them with the model they were "
                         "trained with")
    tensors = load_file(str(Path(source) / HEADS_FILE))
    tp = parallel_state.get_tensor_model_parallel_world_size()
    rank = parallel_state.get_tensor_model_parallel_rank()
    params = {k: v for k, v in heads.state_dict(keep_vars=True).items() if not k.endswith("_extra_state")}
    if set(params) != set(tensors):
        raise ValueError(f"{source}/{HEADS_FILE} does not match the configured heads (algorithm.two_qs, "
                         f"head_width): missing {sorted(set(params) - set(tensors))}, "
                         f"unexpected {sorted(set(tensors) - set(params))}")
    for name, param in params.items():
        full = tensors[name]
        if getattr(param, "tensor_model_parallel", False):
            dim = param.partition_dim
            if _vocab_rows(name):
                padded = full.new_zeros((param.shape[0] * tp, *full.shape[1:]))
                padded[:full.shape[0]] = full
                full = padded
            full = full.chunk(tp, dim=dim)[rank]
        if full.shape != param.shape:
            raise ValueError(f"{name}: the export's shard {tuple(full.shape)} does not fit {tuple(param.shape)}: "
                             "the export was made with another head_width or model")
        param.copy_(full)
