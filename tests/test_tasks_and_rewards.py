"""The randomwalks and custom tasks, the run report, and the reward-function protocol (single process)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autorlhf_nemo.data.randomwalks import make_random_walks, shortest_lengths
from autorlhf_nemo.rewards import RewardFunctionError, score


@pytest.fixture(scope="module")
def walks():
    return make_random_walks(seed=1002)


def test_randomwalks_default_is_trlx_benchmark_graph():
    """trlX's examples pass config.train.seed = 1000: its walks score 0.35 optimality (56% reach the
    goal, 7.7 nodes on average), while the best walk from each start node scores 0.99."""
    walks = make_random_walks()
    assert len(walks.walks) == 1000 and len(walks.prompts) == 20
    assert np.mean(walks.optimality(walks.walks)) == pytest.approx(0.3515, abs=1e-4)
    assert np.mean([w.endswith("a") for w in walks.walks]) == pytest.approx(0.56)
    assert np.mean([len(w) for w in walks.walks]) == pytest.approx(7.735)
    best = {}
    for walk, value in zip(walks.walks, walks.optimality(walks.walks)):
        best[walk[0]] = max(best.get(walk[0], 0.0), value)
    assert np.mean(list(best.values())) == pytest.approx(0.9917, abs=1e-4)


def test_randomwalks_matches_trlx_facts(walks):
    # trlX's generator with seed 1002 (the function's default): 1000 walks scoring ~0.79, 98.5% reach
    # the goal, ~4.9 nodes.
    assert len(walks.walks) == 1000
    assert np.mean(walks.optimality(walks.walks)) == pytest.approx(0.790, abs=0.005)
    assert np.mean([w.endswith("a") for w in walks.walks]) == pytest.approx(0.985)
    assert np.mean([len(w) for w in walks.walks]) == pytest.approx(4.87, abs=0.01)
    assert walks.adjacency[0].tolist() == [True] + [False] * 20  # the goal only loops to itself
    assert walks.adjacency.sum(1).all()


def test_randomwalks_metric_by_hand():
    # a -> goal; b -> c, b -> d; c -> a; d -> c. Shortest from b: b c a (3 nodes).
    adjacency = np.zeros((4, 4), dtype=bool)
    adjacency[0, 0] = adjacency[1, 2] = adjacency[1, 3] = adjacency[2, 0] = adjacency[3, 2] = True
    assert shortest_lengths(adjacency, 10) == {1: 3, 2: 2, 3: 3}
    from autorlhf_nemo.data.randomwalks import RandomWalks
    task = RandomWalks(adjacency, [], shortest_lengths(adjacency, 10), 10)
    samples = ["bca", "bdca", "bda", "bxa", "bcb", "b", "bcaaa"]
    assert [task.path_length(s) for s in samples] == [3, 4, 10, 10, 10, 10, 3]
    assert task.optimality(samples) == pytest.approx([1.0, 6 / 7, 0, 0, 0, 0, 1.0])


def test_reward_scores_floats_and_per_token_lists():
    fn = lambda samples, prompts, outputs, bonus: [len(o) + b for o, b in zip(outputs, bonus)]
    assert score(fn, ["p1o", "p2oo"], ["p1", "p2"], ["o", "oo"], {"bonus": [0.5, 1]}) == [1.5, 3.0]
    dense = lambda samples, prompts, outputs: [[0.0] * len(o) for o in outputs]
    assert score(dense, ["ab", "cde"], ["", ""], ["ab", "cde"], response_lengths=[2, 3]) == [[0.0, 0.0],
                                                                                          [0.0, 0.0, 0.0]]


@pytest.mark.parametrize("fn,message", [
    (lambda samples, **_: [1.0], "returned 1 scores for 2 samples"),
    (lambda samples, **_: 3.0, "must return a list"),
    (lambda samples, **_: [1.0, math.nan], "returned nan for sample 1.*finite.*'bad sample'"),
    (lambda samples, **_: [math.inf, 1.0], "returned inf for sample 0"),
    (lambda samples, **_: [1.0, "x"], "'x' for sample 1, not a number"),
    (lambda samples, **_: [[1.0], [1.0]], "1 per-token scores for sample 1 whose response has 3 tokens"),
])
def test_reward_function_mistakes_are_named(fn, message):
    with pytest.raises(RewardFunctionError, match=message):
        score(fn, ["good", "bad sample"], ["g", "b"], ["ood", "ad sample"], response_lengths=[1, 3])


def test_reward_function_exception_names_the_offending_sample():
    def fn(samples, prompts, outputs):
        return [1.0 / (len(o) - 3) for o in outputs]  # ZeroDivisionError on a 3-letter output

    with pytest.raises(RewardFunctionError, match="ZeroDivisionError.*sample 1: 'p-abc'"):
        score(fn, ["p-ab", "p-abc"], ["p-", "p-"], ["ab", "abc"])


def _custom_task(eval_prompts=None):
    from autorlhf_nemo.config.compose import compose_typed_config
    from autorlhf_nemo.tasks import build_task

    cfg = compose_typed_config(["algorithm=ppo", "task=custom", "model=smollm2_135m", "task.num_eval_prompts=2"])
    return build_task(cfg, prompts=["p0", "p1", "p2"], reward_fn=lambda samples, **_: [0.0] * len(samples),
                      eval_prompts=eval_prompts)


def test_custom_task_without_eval_prompts_says_it_evaluates_on_training_prompts():
    task = _custom_task()
    assert task.eval_prompts == ["p0", "p1"]                 # the first task.num_eval_prompts
    assert task.eval_set == "first 2 training prompts; no eval_prompts given"
    held_out = _custom_task(eval_prompts=["e0", "e1", "e2"])
    assert held_out.eval_prompts == ["e0", "e1", "e2"] and held_out.eval_set is None


def test_report_names_the_evaluation_prompts():
    from autorlhf_nemo.jobs import report

    from autorlhf_nemo.config.compose import compose_typed_config

    cfg = compose_typed_config(["algorithm=ppo", "task=custom", "train.total_steps=2", "run_dir=runs/x"])
    summary = {"before": {"reward": 0.25, "samples": []}, "after": {"reward": 0.5, "samples": []},
               "history": [{"step": 1, "time/step": 3.0}], "wall_seconds": 60.0,
               "eval_prompts": "first 2 training prompts; no eval_prompts given"}
    lines = report(summary, cfg).splitlines()
    assert "eval reward (first 2 training prompts; no eval_prompts given) before: 0.250" in lines
    assert "eval reward (first 2 training prompts; no eval_prompts given) after:  0.500  (change +0.250)" in lines
