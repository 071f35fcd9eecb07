"""Generation engine: parity with transformers, log-prob agreement with training,
sampling controls, stopping, and layout invariance (tiny Llama, gloo)."""

from __future__ import annotations

import json

import pytest
import torch

from autorlhf_nemo.generation import SamplingParams
from autorlhf_nemo.generation.engine import left_pad
from helpers import torchrun
from tiny_model import make_tiny_llama

PROMPTS = [[5, 17, 99, 3, 44], [42, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9], [200]]
NEW = 24
PAD = 0
SAMPLE = {"max_new_tokens": NEW, "temperature": 0.9, "top_k": 40, "top_p": 0.9}


class Generations:
    def __init__(self, root):
        self.root = root
        self.hf_dir = root / "hf"
        self.hf = make_tiny_llama(self.hf_dir, std=0.15, seed=11)
        (root / "prompts.json").write_text(json.dumps(PROMPTS))
        ids, mask = left_pad(PROMPTS, PAD)
        out = self.hf.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False,
                               pad_token_id=PAD, eos_token_id=None)
        self.hf_greedy = out[:, ids.shape[1]:]
        self.plans = self._plans()
        self._cache = {}

    def _plans(self):
        greedy = self.hf_greedy.tolist()
        # An EOS id that greedy row 0 first emits at step 4 (and not before).
        eos_step = next(i for i in range(3, NEW) if greedy[0][i] not in greedy[0][:i])
        eos = greedy[0][eos_step]
        stop_seq = greedy[1][3:5]
        return {
            "eos_step": eos_step, "eos": eos, "stop_seq": stop_seq,
            "params": [
                {"max_new_tokens": NEW, "greedy": True},
                dict(SAMPLE, seed=1),
                dict(SAMPLE, seed=1),
                dict(SAMPLE, seed=2),
                {"max_new_tokens": NEW, "greedy": True, "eos_token_ids": [eos]},
                {"max_new_tokens": NEW, "greedy": True, "eos_token_ids": [eos],
                 "min_new_tokens": eos_step + 3},
                {"max_new_tokens": NEW, "greedy": True, "stop_token_sequences": [stop_seq]},
                {"max_new_tokens": NEW, "greedy": True, "ban_tokens": [greedy[0][0], greedy[2][0]]},
                dict(SAMPLE, seed=1, row_seeds=list(range(len(PROMPTS)))),
            ],
        }

    def run(self, layout, nproc, *overrides):
        if layout not in self._cache:
            out = self.root / f"{layout}.pt"
            torchrun("generation_checks.py", nproc, [
                "--hf", str(self.hf_dir), "--prompts", str(self.root / "prompts.json"),
                "--params", json.dumps(self.plans["params"]), "--out", str(out), "--pad", str(PAD),
                "train.seq_length=16", *overrides])
            self._cache[layout] = torch.load(out, weights_only=False)
        return self._cache[layout]


LAYOUTS = {"tp1": (1, "parallel=single"), "tp2": (2, "parallel=tp2"), "pp2": (2, "parallel=pp2"),
           "tp2_pp2": (4, "parallel=tp2_pp2"), "tp2_sp": (2, "parallel=tp2_sp"), "dp2": (2, "parallel=dp2")}


@pytest.fixture(scope="session")
def gens(tmp_path_factory):
    return Generations(tmp_path_factory.mktemp("generation"))


def _run(gens, layout):
    nproc, override = LAYOUTS[layout]
    return gens.run(layout, nproc, override)


@pytest.mark.parametrize("layout", ["tp1", "tp2", "pp2", "tp2_pp2", "tp2_sp"])
def test_greedy_matches_transformers(gens, layout):
    result = _run(gens, layout)
    greedy = result["runs"][0]["output"]
    assert len(set(gens.hf_greedy[0].tolist())) > 5  # a non-degenerate continuation
    assert torch.equal(greedy.response_ids, gens.hf_greedy)
    assert greedy.response_mask.all() and greedy.stop_reasons == ["length"] * len(PROMPTS)
    assert all(run["model_parallel_peers_agree"] for run in result["runs"])


@pytest.mark.parametrize("layout", ["tp1", "tp2_pp2", "tp2_sp"])
def test_samples_of_a_prompt_share_one_prefill(gens, layout):
    """3 samples per prompt: the prefill runs on the 4 prompts (not 12 rows), and the samples equal
    those of the prompts repeated 3 times with the same per-row seeds, token for token."""
    check = _run(gens, layout)["shared_prefill"]
    assert check["prefill_rows"] == (len(PROMPTS), 3 * len(PROMPTS))
    assert check["tokens_equal"] and check["samples_differ"]
    assert check["logprob_diff"] <= 1e-5


@pytest.mark.parametrize("layout", ["tp1", "tp2_pp2", "tp2_sp"])
def test_logprobs_equal_training_forward(gens, layout):
    for run in _run(gens, layout)["runs"]:
        out = run["output"]
        assert (out.logprobs - run["train_logprobs"]).abs().max().item() <= 1e-4
        assert (out.logprobs[out.response_mask == 0] == 0).all()


@pytest.mark.parametrize("layout", ["tp1", "tp2_pp2"])
def test_both_matmul_forms_generate_alike(gens, layout):
    """CPU decodes with (W x^T)^T, GPUs with F.linear: same tokens, log-probs to rounding."""
    result = _run(gens, layout)
    assert result["default_weight_first"]  # this machine is CPU-only
    for run, other in zip(result["runs"][:2], result["other_form"]):
        assert torch.equal(other.response_ids, run["output"].response_ids)
        assert (other.logprobs - run["output"].logprobs).abs().max().item() <= 1e-5
    assert not result["inference_tensors"]  # outputs are ordinary tensors, usable in autograd


@pytest.mark.parametrize("layout", ["tp1", "tp2_pp2"])
def test_packed_weights_generate_alike_and_follow_updates(gens, layout):
    """oneDNN-packed weight copies: same tokens and log-probs (to rounding) as the default
    form; after an update they are stale until weights_changed(), then equal a fresh engine."""
    result = _run(gens, layout)
    packing = result["packing"]
    assert packing["copies_made"] > 0
    for run, packed in zip(result["runs"][:2], packing["packed_form"]):
        assert torch.equal(packed.response_ids, run["output"].response_ids)
        assert (packed.logprobs - run["output"].logprobs).abs().max().item() <= 1e-5
        assert (packed.logprobs - run["train_logprobs"]).abs().max().item() <= 1e-4
    fresh = packing["unpacked_after_update"]
    assert (packing["stale"].logprobs - fresh.logprobs).abs().max().item() > 1e-3   # the contract matters
    assert torch.equal(packing["refreshed"].response_ids, fresh.response_ids)
    assert (packing["refreshed"].logprobs - fresh.logprobs).abs().max().item() <= 1e-5


def test_packed_linear_equals_f_linear_and_is_remade_after_invalidate():
    from autorlhf_nemo.generation import matmul

    torch.manual_seed(0)
    weight, packed = torch.randn(96, 40), matmul.PackedWeights()
    for shape in [(1, 8, 40), (3, 5, 40), (200, 40)]:
        x = torch.randn(shape)
        torch.testing.assert_close(matmul.linear(x, weight, True, packed), torch.nn.functional.linear(x, weight),
                                   rtol=1e-5, atol=1e-5)
    x = torch.randn(8, 40)
    before = matmul.linear(x, weight, True, packed)
    weight.mul_(2.0)
    torch.testing.assert_close(matmul.linear(x, weight, True, packed), before)   # the copy, until told
    packed.invalidate([weight])
    torch.testing.assert_close(matmul.linear(x, weight, True, packed), 2.0 * before, rtol=1e-5, atol=1e-5)


def test_packed_linear_in_bf16_equals_an_fp32_product_rounded_to_bf16():
    """bf16 weights are packed as fp32 copies (the fast path on CPUs without native
    bf16 GEMM): the result is the fp32 product rounded once to bf16, in bf16."""
    from autorlhf_nemo.generation import matmul

    torch.manual_seed(0)
    weight, packed = torch.randn(96, 40).bfloat16(), matmul.PackedWeights()
    x = torch.randn(8, 40).bfloat16()
    out = matmul.linear(x, weight, True, packed)
    assert out.dtype == torch.bfloat16
    exact = (x.double() @ weight.double().t())
    torch.testing.assert_close(out, exact.bfloat16(), rtol=1e-2, atol=1e-2)   # one bf16 rounding
    assert (out.double() - exact).abs().max() <= (exact.abs().max() * 2 ** -8).item()
    torch.testing.assert_close(out, torch.nn.functional.linear(x, weight), rtol=2e-2, atol=2e-2)
    assert matmul.packing_available(torch.device("cpu"), torch.float32)
    assert matmul.packing_available(torch.device("cpu"), torch.bfloat16) == (not matmul.native_bf16_gemm())
    assert not matmul.packing_available(torch.device("meta"), torch.float32)


def test_linear_on_a_transposed_view_equals_f_linear():
    """A weight-first result is a transposed view; feeding it on must give the same product."""
    from autorlhf_nemo.generation import matmul

    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        weight, x = torch.randn(64, 40, dtype=dtype), torch.randn(40, 8, dtype=dtype).t()
        assert not x.is_contiguous()
        torch.testing.assert_close(matmul.linear(x, weight, True), torch.nn.functional.linear(x.contiguous(), weight))


def test_weight_first_linear_equals_f_linear():
    from autorlhf_nemo.generation import matmul

    torch.manual_seed(0)
    weight = torch.randn(96, 40)
    for shape in [(1, 8, 40), (3, 5, 40), (200, 40)]:  # decode-sized and prefill-sized inputs
        x = torch.randn(shape)
        out = matmul.linear(x, weight, weight_first=True)
        assert out.shape == (*shape[:-1], 96)
        torch.testing.assert_close(out, torch.nn.functional.linear(x, weight), rtol=1e-5, atol=1e-5)


def test_processed_logprobs_describe_the_sampled_distribution(gens):
    sampled = _run(gens, "tp1")["runs"][1]["output"]
    greedy = _run(gens, "tp1")["runs"][0]["output"]
    # Temperature < 1 with top-k/top-p sharpen the distribution: processed >= raw log-prob.
    assert (sampled.processed_logprobs >= sampled.logprobs - 1e-5).all()
    assert torch.equal(greedy.processed_logprobs, greedy.logprobs)  # greedy: nothing processed


def test_sampling_is_seeded_and_layout_invariant(gens):
    tp1 = _run(gens, "tp1")["runs"]
    assert torch.equal(tp1[1]["output"].response_ids, tp1[2]["output"].response_ids)   # same seed
    assert not torch.equal(tp1[1]["output"].response_ids, tp1[3]["output"].response_ids)  # new seed
    assert not torch.equal(tp1[1]["output"].response_ids, gens.hf_greedy)
    for layout in ("tp2", "pp2", "tp2_pp2", "tp2_sp"):
        assert torch.equal(_run(gens, layout)["runs"][1]["output"].response_ids,
                           tp1[1]["output"].response_ids), layout


def test_data_parallel_replicas_draw_different_samples(gens):
    dp = _run(gens, "dp2")["runs"]
    greedy = dp[0]["dp_responses"]
    assert torch.equal(greedy[0], greedy[1]) and torch.equal(greedy[0], gens.hf_greedy)
    sampled = dp[1]["dp_responses"]
    assert not torch.equal(sampled[0], sampled[1])
    assert torch.equal(sampled[0], _run(gens, "tp1")["runs"][1]["output"].response_ids)


def test_row_seeds_make_samples_independent_of_data_parallel_size(gens):
    """With one seed per prompt row, a row's sample depends only on its seed:
    both DP replicas (same prompts) and the TP1 run draw the same tokens."""
    by_row = _run(gens, "dp2")["runs"][8]["dp_responses"]
    tp1 = _run(gens, "tp1")["runs"]
    assert torch.equal(by_row[0], by_row[1])
    assert torch.equal(by_row[0], tp1[8]["output"].response_ids)
    assert not torch.equal(by_row[0], tp1[1]["output"].response_ids)  # not the per-rank stream


@pytest.mark.parametrize("layout", ["tp1", "tp2", "pp2", "tp2_pp2"])
def test_padded_rows_equal_unpadded_rows(gens, layout):
    """Local spec: a prompt's logits and log-probs are those of the prompt alone, whether
    its batch pads it on the left (generation's layout) or on the right (training's)."""
    diffs = _run(gens, layout)["padding"]
    assert max(diffs.values()) <= 1e-5, diffs


def test_vocab_parallel_sampling_primitives(gens):
    for layout in ("tp1", "tp2", "tp2_pp2"):
        checks = _run(gens, layout)["sampling"]
        assert checks["top_p_match"] and checks["top_k_match"] and checks["argmax_match"], layout
        assert checks["top_p_wide_match"], layout     # a nucleus of more than 64 tokens (rounds)
        assert checks["log_softmax_err"] < 1e-5


def test_sequence_parallel_restored_after_generation(gens):
    assert _run(gens, "tp2_sp")["sp_flags_true"]
    assert not _run(gens, "tp2")["sp_flags_true"]


def test_eos_stops_and_pads(gens):
    out = _run(gens, "tp2")["runs"][4]["output"]
    step, eos = gens.plans["eos_step"], gens.plans["eos"]
    assert out.stop_reasons[0] == "eos"
    assert out.response_mask[0].sum().item() == step + 1          # up to and including EOS
    assert out.response_ids[0, step].item() == eos
    assert (out.response_ids[0, step + 1:] == PAD).all()
    for row in range(len(PROMPTS)):
        n = int(out.response_mask[row].sum())
        assert out.response_ids[row, :n].tolist() == gens.hf_greedy[row, :n].tolist()


def test_min_new_tokens_suppresses_eos(gens):
    out = _run(gens, "tp1")["runs"][5]["output"]
    minimum = gens.plans["eos_step"] + 3
    for row in range(len(PROMPTS)):
        n = int(out.response_mask[row].sum())
        assert n >= minimum
        assert gens.plans["eos"] not in out.response_ids[row, :minimum].tolist()


def test_stop_token_sequence(gens):
    out = _run(gens, "pp2")["runs"][6]["output"]
    assert out.stop_reasons[1] == "stop"
    assert out.response_ids[1, :5].tolist() == gens.hf_greedy[1, :5].tolist()
    assert out.response_mask[1].sum().item() == 5
    assert out.responses()[1][-2:] == gens.plans["stop_seq"]


def test_logits_processor_runs_on_vocab_parallel_logits(gens):
    banned = [gens.hf_greedy[0, 0].item(), gens.hf_greedy[2, 0].item()]
    for layout in ("tp1", "tp2"):
        run = _run(gens, layout)["runs"][7]
        out = run["output"]
        assert not any(t in banned for t in out.response_ids.flatten().tolist()), layout
        assert out.response_ids[0, 0].item() != banned[0]
        # The processed distribution excludes the banned tokens; the raw policy log-probs
        # still equal the training forward pass.
        assert (out.logprobs - run["train_logprobs"]).abs().max().item() <= 1e-4
    assert torch.equal(_run(gens, "tp1")["runs"][7]["output"].response_ids,
                       _run(gens, "tp2")["runs"][7]["output"].response_ids)


@pytest.mark.parametrize("fields,message", [
    ({"top_p": 0.0}, "top_p=0.0 must be in (0, 1]"),
    ({"top_p": 1.5}, "top_p=1.5"),
    ({"temperature": -0.5}, "temperature=-0.5 must be >= 0"),
    ({"max_new_tokens": 300}, "exceeds the model's 256 positions: use max_new_tokens <= 246"),
    ({"max_new_tokens": 0}, "max_new_tokens=0 must be >= 1"),
    ({"min_new_tokens": 40}, "min_new_tokens=40"),
    ({"top_k": -1}, "top_k=-1"),
    ({"eos_token_ids": [999]}, "eos_token_ids [999] are outside the vocabulary"),
    ({"stop_strings": [""]}, "stop sequences must not be empty"),
    ({"row_seeds": [1, 2, 3]}, "row_seeds has 3 entries for 2 prompts"),
])
def test_bad_sampling_parameters_rejected(fields, message):
    with pytest.raises(ValueError, match=__import__("re").escape(message)):
        SamplingParams(**fields).validate(prompt_length=10, max_positions=256, vocab_size=250, batch_size=2)


def test_empty_prompt_rejected():
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        left_pad([[1, 2], []], 0)


def test_left_padding():
    ids, mask = left_pad([[7, 8, 9], [5]], 0)
    assert ids.tolist() == [[7, 8, 9], [0, 0, 5]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


@pytest.mark.parametrize("text,stop", [
    ("Hello world, and more words.", " world"),       # whole tokens
    ("Hello world, and more words.", "lo wor"),       # across a token boundary, inside both tokens
    ("The answer is 42.\n\nNext question", "\n\n"),
    ("no stop string in here", "xyz"),
])
def test_stop_strings_fire_where_the_text_first_contains_them(text, stop):
    """Batched stop-string check (transformers' StopStringCriteria) against decoding the
    response at every step: it fires at the first step whose text contains the string."""
    from transformers import AutoTokenizer

    from autorlhf_nemo.convert.smollm2 import ensure_checkpoint
    from autorlhf_nemo.generation.stopping import StopCriteria

    tokenizer = AutoTokenizer.from_pretrained(ensure_checkpoint())
    ids = tokenizer.encode(text, add_special_tokens=False)
    criteria = StopCriteria(SamplingParams(stop_strings=[stop]), tokenizer, torch.device("cpu"))
    response = torch.tensor([ids])
    fired = [bool(criteria(response, t)[1]) for t in range(len(ids))]
    expected = [stop in tokenizer.decode(ids[:t + 1]) for t in range(len(ids))]
    first = expected.index(True) if True in expected else None
    assert (fired.index(True) if True in fired else None) == first, (fired, expected)


def test_stop_criteria_eos_sequences_and_min_tokens():
    from autorlhf_nemo.generation.stopping import StopCriteria

    params = SamplingParams(eos_token_ids=[2], stop_token_sequences=[[7, 8]], min_new_tokens=2)
    criteria = StopCriteria(params, None, torch.device("cpu"))
    response = torch.tensor([[5, 2, 0], [7, 8, 0], [8, 7, 8], [1, 7, 2]])
    assert not criteria.applies(0) and criteria.applies(1)           # min_new_tokens=2
    eos, stop = criteria(response, 1)
    assert eos.tolist() == [True, False, False, False] and stop.tolist() == [False, True, False, False]
    eos, stop = criteria(response, 2)
    assert eos.tolist() == [False, False, False, True] and stop.tolist() == [False, False, True, False]
