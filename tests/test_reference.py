"""The reference model shares the policy's frozen trunk (trlX's hydra layout):
with num_layers_unfrozen=k only the top k layers, final norm and output layer
are trained and copied; the embedding and the layers below are the very same
tensors in both models. With k=-1 the reference is a full frozen copy."""

from __future__ import annotations

import torch

from helpers import torchrun


def run(tmp_path, nproc, unfrozen, *overrides):
    out = tmp_path / "reference.pt"
    torchrun("reference_checks.py", nproc, ["--out", str(out), "--unfrozen", str(unfrozen), *overrides])
    return torch.load(out)


def test_shared_trunk_single_stage(tmp_path):
    (r,) = run(tmp_path, 1, 1)   # tiny_llama: 4 layers, the top one trains
    assert _layers(r["shared"]) == {0, 1, 2} and "embedding.word_embeddings.weight" in r["shared"]
    assert not any(n.startswith(("decoder.final_layernorm", "output_layer")) for n in r["shared"])
    assert all(n.startswith(("decoder.layers.3.", "decoder.final_layernorm", "output_layer"))
               for n in r["trainable"]) and r["trainable"]
    assert r["policy_moved"] == r["trainable"]      # the step trained exactly the unfrozen part
    assert r["reference_moved"] == []                # and the reference did not move
    assert not r["offload"]                          # a shared trunk is never offloaded


def test_shared_trunk_per_pipeline_stage(tmp_path):
    first, last = run(tmp_path, 2, 1, "parallel=pp2")  # stage 0: layers 0-1, stage 1: layers 2-3
    assert first["trainable"] == [] and first["reference_moved"] == []
    assert first["shared_numel"] == first["reference_params"]         # stage 0 is all trunk
    assert _layers(last["shared"]) == {0}        # local layer 0 is global layer 2 (frozen); 1 trains
    assert last["reference_moved"] == [] and last["policy_moved"] == last["trainable"]


def test_full_copy_when_all_layers_train(tmp_path):
    (r,) = run(tmp_path, 1, -1)
    assert r["shared"] == [] and r["shared_numel"] == 0
    assert r["reference_moved"] == [] and len(r["policy_moved"]) == len(r["trainable"]) > 0
    assert r["offload"] and r["reference_device"] == "cpu"


def _layers(names) -> set[int]:
    return {int(n.split(".")[2]) for n in names if n.startswith("decoder.layers.")}
