"""Llama-family Hugging Face checkpoints <-> Megatron GPTModel shards, any TP/PP.

Llama, Mistral (without a sliding window) and Qwen2 (Llama plus biases on the
query/key/value projections, ``model.add_qkv_bias``).

Name and layout mapping (h = hidden, d = head dim, nq/ng = query/kv heads):

    HF                                   Megatron (local spec; TE names in brackets)
    model.embed_tokens.weight  [V, h]    embedding.word_embeddings.weight [Vpad/tp, h]
    layers.i.input_layernorm             decoder.layers.i.input_layernorm
                                         [self_attention.linear_qkv.layer_norm_weight]
    layers.i.self_attn.{q,k,v}_proj      decoder.layers.i.self_attention.linear_qkv.weight
                                         rows grouped by kv head: [q_g (nq/ng*d); k_g (d); v_g (d)]
    layers.i.self_attn.{q,k,v}_proj.bias ...self_attention.linear_qkv.bias (Qwen2), grouped the same way
    layers.i.self_attn.o_proj            ...self_attention.linear_proj.weight  (split on columns)
    layers.i.post_attention_layernorm    ...pre_mlp_layernorm [mlp.linear_fc1.layer_norm_weight]
    layers.i.mlp.{gate,up}_proj          ...mlp.linear_fc1.weight: per TP rank [gate_r; up_r]
    layers.i.mlp.down_proj               ...mlp.linear_fc2.weight  (split on columns)
    model.norm.weight                    decoder.final_layernorm.weight
    lm_head.weight (absent when tied)    output_layer.weight [Vpad/tp, h]

Vocabulary rows past the real vocab (TP padding) are zero.  Megatron layer
``i`` of a pipeline stage is global layer ``layer_number - 1``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from safetensors.torch import save_file

from autorlhf_nemo.config.schema import ModelConfig
from autorlhf_nemo.convert.reader import CheckpointReader, read_hf_config

# Transformer Engine fuses the norms into the following linear layer.
_TE_TO_LOCAL = {
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight",
}
_LAYER_NAME = re.compile(r"decoder\.layers\.(\d+)\.(.+)")
# Per-layer tensors that map one-to-one (the fused qkv and fc1 are handled apart).
_LAYER_ONE_TO_ONE = {
    "input_layernorm.weight": "input_layernorm.weight",
    "pre_mlp_layernorm.weight": "post_attention_layernorm.weight",
    "self_attention.linear_proj.weight": "self_attn.o_proj.weight",
    "mlp.linear_fc2.weight": "mlp.down_proj.weight",
}


# --------------------------------------------------------------------------- configs
def _unsupported_features(hf: Mapping[str, Any], model_type: str) -> list[str]:
    """What a Llama/Mistral/Qwen2 config.json asks for that the GPTModel built here lacks."""
    problems = []
    if model_type == "qwen2" and hf.get("use_sliding_window"):
        problems.append("use_sliding_window: true (sliding-window attention; the model here attends "
                        "to the whole sequence): use a checkpoint whose config has use_sliding_window: false")
    window = hf.get("sliding_window")
    if model_type == "mistral" and window is not None and window < hf.get("max_position_embeddings", 2048):
        problems.append(f"sliding_window: {window} (attention limited to the last {window} tokens; the "
                        "model here attends to the whole sequence): set sliding_window to null in "
                        f"config.json only if no sequence will be longer than {window} tokens")
    if model_type != "qwen2":
        for key, what in (("attention_bias", "biases on q/k/v and o_proj"),
                          ("mlp_bias", "biases on the MLP projections")):
            if hf.get(key):
                problems.append(f"{key}: true ({what}; only Qwen2's q/k/v biases are supported)")
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act: {hf['hidden_act']!r} (only SwiGLU with silu is supported)")
    return problems


def model_config_from_hf(hf: Mapping[str, Any], name: str = "hf_model") -> dict[str, Any]:
    """ModelConfig fields from a Hugging Face Llama, Mistral or Qwen2 config dict.

    Raises ValueError naming every feature of the config that the model cannot represent.
    """
    model_type = hf.get("model_type", "llama")
    if model_type not in ("llama", "mistral", "qwen2"):
        raise ValueError(f"unsupported model_type {model_type!r}: Llama family only "
                         "(llama, mistral, qwen2)")
    rope = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or rope
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    problems = _unsupported_features(hf, model_type)
    if rope_type not in ("default", "llama3"):
        problems.append(f"rope_scaling type {rope_type!r} (only Llama-3.1 'llama3' scaling is supported)")
    if problems:
        raise ValueError(f"{model_type} checkpoint config not supported:\n  - " + "\n  - ".join(problems))
    rope_theta = hf.get("rope_theta", rope.get("rope_theta", 10000.0))
    heads = hf["num_attention_heads"]
    return {
        "name": name,
        "num_layers": hf["num_hidden_layers"],
        "hidden_size": hf["hidden_size"],
        "ffn_hidden_size": hf["intermediate_size"],
        "num_attention_heads": heads,
        "num_query_groups": hf.get("num_key_value_heads") or heads,
        "vocab_size": hf["vocab_size"],
        "kv_channels": hf.get("head_dim") or hf["hidden_size"] // heads,
        "max_position_embeddings": hf.get("max_position_embeddings", 2048),
        "rotary_base": float(rope_theta),
        "rope_scaling_factor": scaling.get("factor") if rope_type == "llama3" else None,
        "norm_epsilon": hf.get("rms_norm_eps", 1e-5),
        "tie_word_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "add_qkv_bias": model_type == "qwen2",
    }


def hf_config_from_model(m: ModelConfig) -> dict[str, Any]:
    """A config dict that transformers loads, from ModelConfig fields: Qwen2 when the
    model has q/k/v biases (``add_qkv_bias``), Llama otherwise."""
    head_dim = m.kv_channels or m.hidden_size // m.num_attention_heads
    config = {
        "hidden_size": m.hidden_size,
        "intermediate_size": m.ffn_hidden_size,
        "num_hidden_layers": m.num_layers,
        "num_attention_heads": m.num_attention_heads,
        "num_key_value_heads": m.num_query_groups,
        "head_dim": head_dim,
        "vocab_size": m.vocab_size,
        "max_position_embeddings": m.max_position_embeddings,
        "rms_norm_eps": m.norm_epsilon,
        "rope_theta": m.rotary_base,
        "tie_word_embeddings": m.tie_word_embeddings,
        "hidden_act": "silu",
        "torch_dtype": m.params_dtype,
    }
    if m.add_qkv_bias:
        config.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2", use_sliding_window=False,
                      sliding_window=None, max_window_layers=m.num_layers)
    else:
        config.update(architectures=["LlamaForCausalLM"], model_type="llama", attention_bias=False,
                      mlp_bias=False)
    if m.rope_scaling_factor:
        config["rope_scaling"] = {
            "rope_type": "llama3", "factor": m.rope_scaling_factor, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    return config


# --------------------------------------------------------------------------- geometry
class _Geometry:
    """Head/row arithmetic for one TP rank."""

    def __init__(self, m: ModelConfig, tp_rank: int, tp_size: int):
        self.heads, self.groups = m.num_attention_heads, m.num_query_groups
        self.head_dim = m.kv_channels or m.hidden_size // self.heads
        self.heads_per_group = self.heads // self.groups
        self.ffn = m.ffn_hidden_size
        self.vocab = m.vocab_size
        self.tp_rank, self.tp_size = tp_rank, tp_size

    def shard(self, total: int) -> tuple[int, int]:
        size = total // self.tp_size
        return self.tp_rank * size, (self.tp_rank + 1) * size


def _canonical(local_name: str) -> str:
    match = _LAYER_NAME.fullmatch(local_name)
    if match and match.group(2) in _TE_TO_LOCAL:
        return f"decoder.layers.{match.group(1)}.{_TE_TO_LOCAL[match.group(2)]}"
    return local_name


def _global_layer_index(model, local_index: int) -> int:
    return model.decoder.layers[local_index].layer_number - 1


def _model_params(model) -> Iterator[tuple[str, str, torch.nn.Parameter]]:
    """(state-dict name, canonical local name, parameter) for this rank's chunk."""
    for name, param in model.named_parameters():
        yield name, _canonical(name), param


# --------------------------------------------------------------------------- import
def _read_vocab_rows(reader: CheckpointReader, hf_name: str, rows: tuple[int, int], vocab: int):
    start, end = rows
    real = reader.read(hf_name, rows=(start, min(end, vocab))) if start < vocab else None
    out_rows = end - start
    if real is not None and real.shape[0] == out_rows:
        return real
    hidden = reader.read(hf_name, rows=(0, 1)).shape[1]
    padded = torch.zeros(out_rows, hidden, dtype=real.dtype if real is not None else torch.float32)
    if real is not None:
        padded[: real.shape[0]] = real
    return padded


def _hf_tensor_for(reader: CheckpointReader, canonical: str, layer: int | None,
                   geo: _Geometry, padded_vocab: int, tied: bool) -> torch.Tensor:
    """This TP rank's shard of one Megatron parameter, read from HF tensors."""
    if canonical == "embedding.word_embeddings.weight":
        return _read_vocab_rows(reader, "model.embed_tokens.weight", geo.shard(padded_vocab), geo.vocab)
    if canonical == "output_layer.weight":
        source = "model.embed_tokens.weight" if tied or "lm_head.weight" not in reader else "lm_head.weight"
        return _read_vocab_rows(reader, source, geo.shard(padded_vocab), geo.vocab)
    if canonical == "decoder.final_layernorm.weight":
        return reader.read("model.norm.weight")
    suffix = _LAYER_NAME.fullmatch(canonical).group(2)
    prefix = f"model.layers.{layer}."
    if suffix in ("input_layernorm.weight", "pre_mlp_layernorm.weight"):
        return reader.read(prefix + _LAYER_ONE_TO_ONE[suffix])
    if suffix in ("self_attention.linear_proj.weight", "mlp.linear_fc2.weight"):
        total = geo.heads * geo.head_dim if suffix.startswith("self") else geo.ffn
        return reader.read(prefix + _LAYER_ONE_TO_ONE[suffix], cols=geo.shard(total))
    if suffix in ("self_attention.linear_qkv.weight", "self_attention.linear_qkv.bias"):
        return _fused_qkv(reader, prefix, suffix.rsplit(".", 1)[1], geo)
    if suffix == "mlp.linear_fc1.weight":
        rows = geo.shard(geo.ffn)
        gate = reader.read(prefix + "mlp.gate_proj.weight", rows=rows)
        up = reader.read(prefix + "mlp.up_proj.weight", rows=rows)
        return torch.cat([gate, up], dim=0)
    raise KeyError(f"no Hugging Face source for Megatron parameter {canonical!r}")


def _fused_qkv(reader: CheckpointReader, prefix: str, kind: str, geo: _Geometry) -> torch.Tensor:
    """This TP rank's rows of the fused QKV ``kind`` ("weight" [rows, h] or "bias" [rows]):
    its KV groups, each [q_g; k_g; v_g]."""
    g0, g1 = geo.shard(geo.groups)
    d, hpg = geo.head_dim, geo.heads_per_group
    q = reader.read(f"{prefix}self_attn.q_proj.{kind}", rows=(g0 * hpg * d, g1 * hpg * d))
    k = reader.read(f"{prefix}self_attn.k_proj.{kind}", rows=(g0 * d, g1 * d))
    v = reader.read(f"{prefix}self_attn.v_proj.{kind}", rows=(g0 * d, g1 * d))
    n, rest = g1 - g0, q.shape[1:]
    fused = torch.cat([q.reshape(n, hpg * d, -1), k.reshape(n, d, -1), v.reshape(n, d, -1)], dim=1)
    return fused.reshape(-1, *rest)


_QKV_BIAS = re.compile(r"model\.layers\.\d+\.self_attn\.[qkv]_proj\.bias")


def check_checkpoint_biases(names, model_cfg: ModelConfig) -> None:
    """The checkpoint's bias tensors (HF ``names``) must be exactly those the model holds:
    none, or q/k/v projection biases (Qwen2) when ``model.add_qkv_bias`` is set."""
    biases = [n for n in names if n.endswith(".bias")]
    qkv = [n for n in biases if _QKV_BIAS.fullmatch(n)]
    other = sorted(set(biases) - set(qkv))
    if other:
        raise ValueError(f"the Hugging Face checkpoint has biases the model cannot hold ({', '.join(other[:3])}"
                         f"{', ...' if len(other) > 3 else ''}): only Qwen2's q/k/v projection biases "
                         "are supported")
    if qkv and not model_cfg.add_qkv_bias:
        raise ValueError(f"the Hugging Face checkpoint has q/k/v projection biases ({qkv[0]}, ...; Qwen2) "
                         "but model.add_qkv_bias is false, so they would be dropped: set "
                         "model.add_qkv_bias=true")
    if model_cfg.add_qkv_bias and not qkv:
        raise ValueError("model.add_qkv_bias is true but the Hugging Face checkpoint has no q/k/v "
                         "projection biases: set model.add_qkv_bias=false for a Llama checkpoint")


@torch.no_grad()
def load_hf_checkpoint(model, source, model_cfg: ModelConfig) -> None:
    """Fill this rank's GPTModel chunk from an HF checkpoint (dir or state dict).

    Every parameter of the chunk must be covered, and shapes must match; the
    checkpoint's biases must match ``model.add_qkv_bias``.
    """
    reader = source if isinstance(source, CheckpointReader) else CheckpointReader(source)
    check_checkpoint_biases(reader.names(), model_cfg)
    geo = _Geometry(model_cfg, parallel_state.get_tensor_model_parallel_rank(),
                    parallel_state.get_tensor_model_parallel_world_size())
    padded_vocab = model.vocab_size
    for name, canonical, param in _model_params(model):
        match = _LAYER_NAME.fullmatch(canonical)
        layer = _global_layer_index(model, int(match.group(1))) if match else None
        tensor = _hf_tensor_for(reader, canonical, layer, geo, padded_vocab,
                                model_cfg.tie_word_embeddings)
        if tensor.shape != param.shape:
            raise ValueError(
                f"shape mismatch for {name}: checkpoint gives {tuple(tensor.shape)}, model has "
                f"{tuple(param.shape)}; does model config match the checkpoint's config.json?")
        param.copy_(tensor.to(param.dtype))


# --------------------------------------------------------------------------- export
def _gather_tp(param: torch.Tensor) -> torch.Tensor:
    """Full tensor of a tensor-parallel parameter (concatenated along its partition dim)."""
    tp = parallel_state.get_tensor_model_parallel_world_size()
    if tp == 1 or not getattr(param, "tensor_model_parallel", False):
        return param.detach()
    parts = [torch.empty_like(param) for _ in range(tp)]
    dist.all_gather(parts, param.detach().contiguous(),
                    group=parallel_state.get_tensor_model_parallel_group())
    return torch.cat(parts, dim=param.partition_dim)


def _hf_tensors_from(canonical: str, full: torch.Tensor, layer: int | None, geo: _Geometry,
                     tied: bool) -> dict[str, torch.Tensor]:
    """HF tensors from one full (TP-gathered) Megatron parameter."""
    if canonical == "embedding.word_embeddings.weight":
        return {"model.embed_tokens.weight": full[: geo.vocab]}
    if canonical == "output_layer.weight":
        # A tied copy on the last stage duplicates the first stage's embedding.
        return {} if tied else {"lm_head.weight": full[: geo.vocab]}
    if canonical == "decoder.final_layernorm.weight":
        return {"model.norm.weight": full}
    suffix = _LAYER_NAME.fullmatch(canonical).group(2)
    prefix = f"model.layers.{layer}."
    if suffix in _LAYER_ONE_TO_ONE:
        return {prefix + _LAYER_ONE_TO_ONE[suffix]: full}
    if suffix in ("self_attention.linear_qkv.weight", "self_attention.linear_qkv.bias"):
        kind, rest = suffix.rsplit(".", 1)[1], full.shape[1:]  # weight [rows, h], bias [rows]
        grouped = full.reshape(geo.groups, geo.heads_per_group + 2, geo.head_dim, -1)
        return {
            f"{prefix}self_attn.q_proj.{kind}": grouped[:, :-2].reshape(-1, *rest),
            f"{prefix}self_attn.k_proj.{kind}": grouped[:, -2].reshape(-1, *rest),
            f"{prefix}self_attn.v_proj.{kind}": grouped[:, -1].reshape(-1, *rest),
        }
    if suffix == "mlp.linear_fc1.weight":
        per_rank = full.view(geo.tp_size, 2, geo.ffn // geo.tp_size, full.shape[1])
        return {
            prefix + "mlp.gate_proj.weight": per_rank[:, 0].reshape(geo.ffn, -1),
            prefix + "mlp.up_proj.weight": per_rank[:, 1].reshape(geo.ffn, -1),
        }
    raise KeyError(f"no Hugging Face name for Megatron parameter {canonical!r}")


@torch.no_grad()
def hf_state_dict_of_stage(model, model_cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """HF-named full tensors of this pipeline stage, on the host (collective over the TP group)."""
    geo = _Geometry(model_cfg, parallel_state.get_tensor_model_parallel_rank(),
                    parallel_state.get_tensor_model_parallel_world_size())
    out: dict[str, torch.Tensor] = {}
    for _, canonical, param in _model_params(model):
        match = _LAYER_NAME.fullmatch(canonical)
        layer = _global_layer_index(model, int(match.group(1))) if match else None
        full = _gather_tp(param)
        for hf_name, tensor in _hf_tensors_from(canonical, full, layer, geo,
                                                model_cfg.tie_word_embeddings).items():
            out[hf_name] = tensor.to("cpu", copy=True).contiguous()  # files and object collectives
    return out


def _is_stage_writer() -> bool:
    """One rank per pipeline stage holds the stage's tensors for output: DP 0, TP 0."""
    return (parallel_state.get_data_parallel_rank() == 0
            and parallel_state.get_tensor_model_parallel_rank() == 0)


def gather_hf_state_dict(model, model_cfg: ModelConfig) -> dict[str, torch.Tensor] | None:
    """The whole model as an HF state dict on global rank 0 (None elsewhere).

    Collective over all ranks; meant for small models and tests (big models:
    use :func:`export_hf_checkpoint`, which writes one shard per stage).
    """
    stage = hf_state_dict_of_stage(model, model_cfg)
    is_writer = _is_stage_writer()
    stages = [None] * dist.get_world_size()
    dist.all_gather_object(stages, stage if is_writer else None)
    if dist.get_rank() != 0:
        return None
    merged: dict[str, torch.Tensor] = {}
    for part in stages:
        merged.update(part or {})
    return merged


def export_hf_checkpoint(model, model_cfg: ModelConfig, out_dir: str | Path,
                         tokenizer_dir: str | Path | None = None) -> Path | None:
    """Write an HF checkpoint (config.json + safetensors) that transformers loads.

    Collective over all ranks.  Each pipeline stage's (DP 0, TP 0) rank writes
    its own shard ``model-0000k-of-0000N.safetensors``; global rank 0 writes the
    index, config.json and, if given, the tokenizer files.
    """
    out = Path(out_dir)
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    pp_size = parallel_state.get_pipeline_model_parallel_world_size()
    stage = hf_state_dict_of_stage(model, model_cfg)
    is_writer = _is_stage_writer()
    file = "model.safetensors" if pp_size == 1 else f"model-{pp_rank + 1:05d}-of-{pp_size:05d}.safetensors"
    if is_writer:
        out.mkdir(parents=True, exist_ok=True)
        save_file(stage, str(out / file), metadata={"format": "pt"})
    names = [None] * dist.get_world_size()
    listing = {k: (file, t.numel() * t.element_size()) for k, t in stage.items()}
    dist.all_gather_object(names, listing if is_writer else None)
    if dist.get_rank() == 0:
        (out / "config.json").write_text(json.dumps(hf_config_from_model(model_cfg), indent=2))
        if pp_size > 1:
            entries = {k: v for part in names if part for k, v in part.items()}
            weight_map = {k: file_and_size[0] for k, file_and_size in entries.items()}
            total = sum(size for _, size in entries.values())
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        if tokenizer_dir is not None:
            _copy_tokenizer(Path(tokenizer_dir), out)
    dist.barrier()
    return out


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja",
                    "generation_config.json")


def _copy_tokenizer(src: Path, dst: Path) -> None:
    import shutil

    for name in _TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copyfile(src / name, dst / name)


def model_config_from_checkpoint(path: str | Path, name: str = "hf_model") -> dict[str, Any]:
    return model_config_from_hf(read_hf_config(path), name)
