"""SFT and offline DPO (algorithm=sft, algorithm=dpo): the losses by hand, packing, the packed
(THD) parameters Transformer Engine would get, layout invariance of every update (TP1, TP2, PP2,
DP2, TP2+SP, and 4 micro-batches per step instead of 1), the precomputed reference equal to an
online one, and configuration errors. The SmolLM2 command-line runs are in
tests/test_supervised_runs.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from autorlhf_nemo.config.compose import compose_config
from autorlhf_nemo.config.validate import ConfigError, validate_config
from helpers import torchrun
from tiny_model import make_tiny_llama

LAYOUTS = {"tp1": (1, []), "tp1_mb1": (1, ["train.micro_batch_size=8"]), "tp2": (2, ["parallel=tp2"]),
           "pp2": (2, ["parallel=pp2"]), "dp2": (2, ["parallel=dp2"]), "tp2_sp": (2, ["parallel=tp2_sp"])}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("supervised")
    make_tiny_llama(root / "hf")
    results = {}
    for name, (nproc, overrides) in LAYOUTS.items():
        out = root / f"{name}.pt"
        torchrun("supervised_checks.py", nproc, ["--out", str(out), "--hf", str(root / "hf"),
                                                  "--run-dir", str(root / name), *overrides], virtual_gpu=True)
        results[name] = torch.load(out, weights_only=False)
        assert "(virtual GPU: device-discipline check)" in results[name]["runtime"], name
    return results


@pytest.fixture
def single_rank(tmp_path):
    """A one-process gloo group with Megatron's parallel state (TP1) on the CPU compatibility layer."""
    import torch.distributed as dist
    from megatron.core import parallel_state, tensor_parallel

    from autorlhf_nemo.parallel import cpu_compat

    cpu_compat.enable()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    parallel_state.initialize_model_parallel(1, 1)
    tensor_parallel.model_parallel_cuda_manual_seed(0)
    yield
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()
    cpu_compat.disable()


# ---------------------------------------------------------------- losses by hand
def test_sft_loss_by_hand():
    from autorlhf_nemo.algorithms.sft.loss import sft_loss

    logprobs = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    loss, count, _ = sft_loss(logprobs, mask)
    assert loss.item() == pytest.approx(3.5) and count.item() == 3   # Megatron divides by the global 3


def pair_batch():
    """Two pairs; sequence sums: policy c0 -3, r0 -5, c1 -4, r1 -2; reference c0 -4, r0 -4, c1 -4, r1 -4;
    response tokens 2, 1, 4, 2."""
    logprobs = torch.tensor([[-1.0, -2.0, 0, 0], [-5.0, 0, 0, 0], [-1.0, -1.0, -1.0, -1.0], [-1.0, -1.0, 0, 0]])
    mask = torch.tensor([[1.0, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]])
    return logprobs, {"response_mask": mask, "ref_logps": torch.tensor([-4.0, -4.0, -4.0, -4.0])}


def test_dpo_loss_by_hand():
    from autorlhf_nemo.algorithms.dpo.model import dpo_pair_loss

    logprobs, batch = pair_batch()
    beta = 0.5
    # margins: (-3 + 4) - (-5 + 4) = 2; (-4 + 4) - (-2 + 4) = -2
    logsig = lambda x: -math.log1p(math.exp(-x))  # noqa: E731
    loss, count, stats = dpo_pair_loss(logprobs, batch, beta, "sigmoid", 0.0, 0.0, average=False)
    assert count.item() == 2
    assert loss.item() == pytest.approx(-logsig(1.0) - logsig(-1.0), rel=1e-6)
    assert stats["accuracy"][0].item() == 1.0
    assert stats["margin"][0].item() == pytest.approx(beta * 2 + beta * -2, abs=1e-6)
    # cDPO: -(1 - eps) log s(beta m) - eps log s(-beta m)
    eps = 0.1
    loss, _, _ = dpo_pair_loss(logprobs, batch, beta, "sigmoid", eps, 0.0, average=False)
    expected = sum(-(1 - eps) * logsig(beta * m) - eps * logsig(-beta * m) for m in (2.0, -2.0))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # IPO on per-token means: policy -1.5, -5, -1, -1; reference -2, -4, -1, -2
    loss, _, _ = dpo_pair_loss(logprobs, batch, beta, "ipo", 0.0, 0.0, average=True)
    m0 = (-1.5 + 2) - (-5 + 4)
    m1 = (-1 + 1) - (-1 + 2)
    assert loss.item() == pytest.approx((m0 - 1) ** 2 + (m1 - 1) ** 2, rel=1e-6)
    # + sft_weight x the chosen's mean NLL per token: 1.5 and 1
    with_nll, _, stats = dpo_pair_loss(logprobs, batch, beta, "ipo", 0.0, 0.25, average=True)
    assert with_nll.item() == pytest.approx(loss.item() + 0.25 * (1.5 + 1.0), rel=1e-6)
    assert stats["nll_chosen"][0].item() == pytest.approx(2.5)


def test_online_dpo_loss_unchanged_by_label_smoothing_default():
    """The loss online DPO shares is the same with eps 0 as -log sigmoid(beta m)."""
    from autorlhf_nemo.algorithms.online_dpo.loss import dpo_loss

    c, r = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -1.0])
    zero = torch.zeros(2)
    loss, _, _ = dpo_loss(c, r, zero, zero, 0.3)
    assert loss.item() == pytest.approx(-torch.nn.functional.logsigmoid(0.3 * (c - r)).sum().item(), rel=1e-7)


# ---------------------------------------------------------------- packing
def test_best_fit_packing_keeps_every_sequence_within_max_length():
    from autorlhf_nemo.data.supervised import pack_sequences

    seqs = [([i] * n, [0] + [1] * (n - 1)) for i, n in enumerate([7, 5, 4, 3, 3, 2, 9, 1])]
    rows = pack_sequences(seqs, 10)
    assert sorted(s[0][0] for row in rows for s in row) == list(range(8))
    assert all(sum(len(s[0]) for s in row) <= 10 for row in rows)
    assert len(rows) == 4   # 34 tokens: at least 4 rows of 10; best fit reaches it
    assert pack_sequences(seqs, 10) == rows   # deterministic
    with pytest.raises(ValueError, match="does not fit"):
        pack_sequences([([1] * 11, [0] * 11)], 10)


def test_collate_block_mask_and_positions():
    from autorlhf_nemo.data.supervised import collate_sequences

    row = [([5, 6, 7], [0, 1, 1]), ([8, 9], [0, 1])]
    batch = collate_sequences([row], pad_token_id=0, pad_to_multiple_of=3, use_te=False)
    assert batch["tokens"].tolist() == [[5, 6, 7, 8, 9, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0]]
    assert batch["response_index"].tolist() == [[0, 1, 3]] and batch["response_ids"].tolist() == [[6, 7, 9]]
    allowed = ~batch["attention_mask"][0, 0]
    assert allowed[4].tolist() == [False, False, False, True, True, False]   # token 9 sees 8 and itself only
    assert allowed[2].tolist() == [True, True, True, False, False, False]
    te = collate_sequences([row], 0, 3, use_te=True)
    assert te["attention_mask"] is None and te["cu_seqlens"].tolist() == [[0, 3, 5, 6]]
    with pytest.raises(ValueError, match="nothing predicts it"):
        collate_sequences([[([1, 2], [1, 1])]], 0)


def test_packed_seq_params_for_transformer_engine():
    """What a packed row gives TE's thd format (built here; it runs only on a GPU)."""
    from autorlhf_nemo.data.supervised import collate_sequences
    from autorlhf_nemo.models.packing import packed_seq_params

    batch = collate_sequences([[([1, 2, 3, 4], [0, 1, 1, 1]), ([5, 6], [0, 1])]], 0, 4, use_te=True)
    params = packed_seq_params(batch["cu_seqlens"])
    assert params.qkv_format == "thd"
    assert params.cu_seqlens_q.tolist() == [0, 4, 6, 8] and params.cu_seqlens_q.dtype == torch.int32
    assert params.cu_seqlens_kv.tolist() == [0, 4, 6, 8] and params.max_seqlen_q == params.max_seqlen_kv == 4
    two = collate_sequences([[([1, 2], [0, 1]), ([3, 4], [0, 1])]] * 2, 0, use_te=True)
    with pytest.raises(ValueError, match="micro_batch_size=1"):
        packed_seq_params(two["cu_seqlens"])


def test_packed_loss_equals_unpacked_and_needs_the_block_mask(single_rank, tmp_path):
    """A tiny model's summed NLL of 6 sequences: unpacked vs packed into 2 rows, within 1e-5; with a
    plain causal mask over the packed rows (samples attending to each other) it differs by more
    than 10 times that (a random tiny model attends nearly uniformly, so the difference is small)."""
    from autorlhf_nemo.algorithms.sft.loss import sft_loss
    from autorlhf_nemo.config.compose import compose_typed_config
    from autorlhf_nemo.data.supervised import collate_sequences, pack_sequences
    from autorlhf_nemo.models.gpt import build_model
    from autorlhf_nemo.models.response_logits import response_logits
    from autorlhf_nemo.ops.vocab_parallel import token_log_probs

    torch.manual_seed(0)
    cfg = compose_typed_config(["model=tiny_llama"])
    gpt = build_model(cfg, use_te=False).eval()
    g = torch.Generator().manual_seed(1)
    seqs = []
    for n in (9, 4, 7, 5, 3, 8):
        ids = torch.randint(3, 250, (n,), generator=g).tolist()
        seqs.append((ids, [0, 0] + [1] * (n - 2)))

    def nll(rows, blocked=True):
        batch = collate_sequences(rows, 0, use_te=False)
        if not blocked:
            s = batch["tokens"].shape[1]
            batch["attention_mask"] = ~torch.ones(s, s, dtype=torch.bool).tril()[None, None]
        with torch.no_grad(), response_logits(gpt, batch["response_index"]):
            logits = gpt(batch["tokens"], batch["position_ids"], batch["attention_mask"])
        logprobs = token_log_probs(logits, batch["response_ids"], 250) * batch["response_mask"]
        return sft_loss(logprobs, batch["response_mask"])[0].item()

    packed = pack_sequences(seqs, 20)
    assert len(packed) == 2
    unpacked = nll([[s] for s in seqs])
    assert abs(nll(packed) - unpacked) <= 1e-5 * abs(unpacked)
    assert abs(nll(packed, blocked=False) - unpacked) > 1e-4 * abs(unpacked)   # measured 7e-4


# ---------------------------------------------------------------- layouts
@pytest.mark.parametrize("layout", [name for name in LAYOUTS if name != "tp1"])
def test_updates_are_layout_invariant(layouts, layout):
    """SFT and DPO (precomputed reference, online reference, IPO + NLL): each of 2 updates' loss,
    reports and grad norm within rel 1e-4 of TP1 (abs 1e-6 near 0). The preference accuracy, a step
    function of the margins (compared), is left out: at the reference every margin is 0 up to
    rounding, and its sign is noise."""
    for run in ("sft", "dpo", "dpo_online", "dpo_ipo"):
        base, other = layouts["tp1"][run], layouts[layout][run]
        assert len(base) == len(other) == 2
        for step, (a, b) in enumerate(zip(base, other)):
            for key in a:
                if key in ("lr", "accuracy"):
                    continue
                assert abs(a[key] - b[key]) <= 1e-4 * abs(a[key]) + 1e-6, (layout, run, step, key, a[key], b[key])


def test_sft_learns_and_packed_heldout_loss_equals_unpacked(layouts):
    for name, result in layouts.items():
        sft = result["sft"]
        assert sft[1]["loss"] < sft[0]["loss"], name
        unpacked, packed = result["sft_heldout"]["loss"], result["sft_heldout_packed"]["loss"]
        assert abs(packed - unpacked) <= 1e-5 * unpacked, (name, packed, unpacked)
        assert result["sft_heldout"]["perplexity"] == pytest.approx(math.exp(unpacked))


def test_precomputed_reference_equals_online_reference(layouts):
    """The first update starts at the reference: loss log 2, margin 0, either way; both runs'
    updates agree within 1e-5."""
    for name, result in layouts.items():
        pre, online = result["dpo"], result["dpo_online"]
        assert pre[0]["loss"] == pytest.approx(math.log(2), abs=1e-6), name
        assert abs(pre[0]["margin"]) <= 1e-6, name
        for a, b in zip(pre, online):
            for key in ("loss", "margin", "grad_norm", "rewards_chosen"):
                assert abs(a[key] - b[key]) <= 1e-5 * abs(a[key]) + 1e-6, (name, key, a[key], b[key])
        assert result["dpo_heldout"]["loss"] == pytest.approx(result["dpo_online_heldout"]["loss"], rel=1e-5)


def test_reference_logps_are_the_same_at_every_layout(layouts):
    base = torch.tensor(layouts["tp1"]["dpo_reference"])
    for name, result in layouts.items():
        other = torch.tensor(result["dpo_reference"])
        assert torch.allclose(base, other, rtol=1e-5, atol=1e-5), name


# ---------------------------------------------------------------- configuration
BAD = [
    (["algorithm=dpo", "train.micro_batch_size=3"], "must be even"),
    (["algorithm=dpo", "algorithm.loss_type=ipo", "algorithm.label_smoothing=0.1"], "label_smoothing"),
    (["algorithm=dpo", "algorithm.label_smoothing=0.5"], "label_smoothing=0.5 is out of range"),
    (["algorithm=dpo", "data.pack=true"], "data.pack=true applies to algorithm=sft"),
    (["algorithm=ppo", "data.pack=true"], "data.pack=true applies to algorithm=sft"),
    (["algorithm=dpo", "algorithm.offload_reference=true"], "offload_reference=true applies with algorithm.reference=online"),
    (["algorithm=sft", "algorithm.epochs=2"], "does not apply to algorithm=sft"),
    (["algorithm=sft", "data.eval_fraction=1.0"], "data.eval_fraction=1.0 is out of range"),
    (["algorithm=sft", "algorithm.num_epochs=0"], "num_epochs=0.0 is out of range"),
    (["algorithm=dpo", "algorithm.reference=frozen"], "algorithm.reference='frozen'"),
    (["algorithm=sft", "data.max_length=256", "train.seq_length=128"], "data.max_length=256 is out of range"),
    (["algorithm=ilql", "task=randomwalks", "data.path=x.jsonl"], "does not feed algorithm=ilql"),
    (["algorithm=sft", "rollout.placement=split", "rollout.generator_ranks=1"], "does not apply to algorithm=sft"),
]


@pytest.mark.parametrize("overrides,message", BAD)
def test_bad_configs_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_config(compose_config(overrides), world_size=2)


def test_epochs_set_the_steps_and_a_warmup_longer_than_them_is_refused_before_the_model():
    """Validation leaves the warm-up rule to the data's row count with num_epochs; jobs.with_epochs
    applies it then (Megatron's scheduler would assert after the model is built)."""
    from autorlhf_nemo.config.schema import typed_config
    from autorlhf_nemo.jobs import with_epochs

    overrides = ["algorithm=sft", "algorithm.num_epochs=2", "train.global_batch_size=16", "train.lr_warmup_steps=10",
                 "train.total_steps=5"]
    validate_config(compose_config(overrides), world_size=1)   # 5 placeholder steps do not count
    cfg = typed_config(compose_config(overrides))
    assert with_epochs(cfg, 100).train.total_steps == 13        # ceil(2 x 100 / 16)
    with pytest.raises(ConfigError, match=r"lr_warmup_steps=10 must be below the run's 4 optimizer steps"):
        with_epochs(cfg, 30)


def test_packing_under_transformer_engine_needs_one_row_per_micro_batch(monkeypatch):
    from autorlhf_nemo.config.schema import typed_config
    from autorlhf_nemo.jobs import supervised_data
    from autorlhf_nemo.models import gpt

    monkeypatch.setattr(gpt, "transformer_engine_available", lambda: True)
    cfg = typed_config(compose_config(["algorithm=sft", "data.pack=true", "train.micro_batch_size=2",
                                       "data.path=never_read.jsonl"]))
    task = type("Task", (), {"tokenizer": object(), "name": "custom"})()
    with pytest.raises(ConfigError, match="set train.micro_batch_size=1"):
        supervised_data(cfg, task)


def test_defaults_train_smollm2():
    cfg = compose_config(["algorithm=sft"])
    assert cfg.model.name == "smollm2_135m" and cfg.data.eval_fraction == 0.05
    assert compose_config(["algorithm=dpo", "model=tiny_llama"]).model.name == "tiny_llama"


# ---------------------------------------------------------------- RL prompts from a dataset
def test_rl_prompts_from_data_path_replace_the_tasks(tmp_path):
    """task=sentiment keeps its reward and takes data.path's prompt column, the held-out rows as its
    evaluation prompts; message-list prompts go through the chat template; a bad row is named."""
    import json

    from autorlhf_nemo.config.schema import typed_config
    from autorlhf_nemo.tasks import build_task
    from autorlhf_nemo.versions import chat_prompt_ids

    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Review film number {i}.", "completion": " ok"}) + "\n"
                            for i in range(20)))
    cfg = typed_config(compose_config(["algorithm=ppo", "task=sentiment", f"data.path={path}", "data.eval_fraction=0.2"]))
    task = build_task(cfg)
    assert len(task.prompts) == 16 and len(task.eval_prompts) == 4
    assert sorted(task.prompts + task.eval_prompts) == sorted(f"Review film number {i}." for i in range(20))
    assert task.eval_set == f"4 held-out rows of {path}" and task.reward_fn.__class__.__name__ == "VaderReward"
    messages = [{"role": "user", "content": "Hi"}]
    assert task.encode(messages) == chat_prompt_ids(task.tokenizer, messages)

    chat = tmp_path / "chat_prompts.jsonl"
    chat.write_text(json.dumps({"prompt": messages}) + "\n" + json.dumps({"prompt": None}) + "\n")
    from autorlhf_nemo.data.loader import DataError

    with pytest.raises(DataError, match=r"row 1 \(line 2\): 'prompt' is missing"):
        build_task(typed_config(compose_config(["algorithm=grpo", "task=sentiment", f"data.path={chat}"])))
    with pytest.raises(ConfigError, match="not both"):
        build_task(typed_config(compose_config(["algorithm=ppo", f"data.path={path}"])), prompts=["x"],
                   reward_fn=lambda samples, **_: [0.0] * len(samples))
