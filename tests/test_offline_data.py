"""ILQL's offline dataset: tokens / actions / EOS, bad rows, z-scored rewards, reading rows through
the loader (JSONL lines named, parquet, a datasets.Dataset), collate."""

import json
import math

import pytest
import torch

from autorlhf_nemo.data.offline import (
    REASONS,
    OfflineDataError,
    OfflineRow,
    collate,
    read_rows,
    tokenize_samples,
)

START, EOS, PAD = 2, 3, 0


def encode(text):
    """chars -> code points; "$" is EOS (a sample may end with it already)."""
    return [EOS if c == "$" else ord(c) for c in text]


def tokenize(samples, rewards=None, seq_length=64, **kw):
    rewards = [1.0] * len(samples) if rewards is None else rewards
    return tokenize_samples(samples, rewards, encode, EOS, START, seq_length, **kw)


def only_row(sample):
    (row,) = tokenize([sample], reward_normalization=False).rows
    return row.tokens, row.actions


# --- tokens, actions, EOS ---------------------------------------------------------

def test_string_sample_gets_the_start_token_as_prompt_and_eos_as_last_action():
    assert only_row("ab") == ([START, 97, 98, EOS], [1, 2, 3])


def test_eos_is_not_appended_twice():
    assert only_row("ab$") == ([START, 97, 98, EOS], [1, 2, 3])
    assert only_row(["p", "a$"]) == ([112, 97, EOS], [1, 2])


def test_prompt_output_pair():
    assert only_row(["hi", "yo"]) == ([104, 105, 121, 111, EOS], [2, 3, 4])


def test_dialogue_actions_are_the_outputs_only_and_eos_ends_the_last():
    # prompt "a", output "bc", prompt "d", output "e": no EOS after "bc"
    assert only_row(["a", "bc", "d", "e"]) == ([97, 98, 99, 100, 101, EOS], [1, 2, 4, 5])
    assert only_row(("ab", "c", "de", "fg")) == ([97, 98, 99, 100, 101, 102, 103, EOS], [2, 5, 6, 7])


def test_empty_later_prompt_is_fine():
    assert only_row(["a", "b", "", "c"]) == ([97, 98, 99, EOS], [1, 2, 3])


def test_length_limit_counts_eos():
    assert len(tokenize(["abcdef"], seq_length=8).rows) == 1  # start + 6 + EOS = 8
    with pytest.raises(OfflineDataError, match=r"sample 0: its tokens \(9\) exceed train.seq_length=8"):
        tokenize(["abcdefg"], seq_length=8)


# --- bad rows ---------------------------------------------------------------------

BAD = [
    ("", 1.0, "empty_output", "output segment 0 encodes to no tokens"),
    (["p", "", "q", "r"], 1.0, "empty_output", "output segment 0 encodes to no tokens"),
    (["p", "o", "q", ""], 1.0, "empty_output", "output segment 1 encodes to no tokens"),
    (["", "o"], 1.0, "empty_prompt", "first prompt encodes to no tokens"),
    ("ok", None, "bad_reward", "reward None is not a finite number"),
    ("ok", float("nan"), "bad_reward", "reward nan is not a finite number"),
    ("ok", float("-inf"), "bad_reward", "reward -inf is not a finite number"),
    ("ok", "1.0", "bad_reward", "reward '1.0' is not a finite number"),
    ("ok", True, "bad_reward", "reward True is not a finite number"),
    ("x" * 20, 1.0, "too_long", r"its tokens \(22\) exceed train.seq_length=16: raise train.seq_length"),
]


@pytest.mark.parametrize("sample,reward,reason,message", BAD, ids=[f"{b[2]}-{i}" for i, b in enumerate(BAD)])
def test_bad_row_raises_naming_it_or_is_dropped_and_counted(sample, reward, reason, message):
    samples, rewards = ["good", ["p", "fine"], sample, "also bad"], [0.5, 1.5, reward, float("nan")]
    with pytest.raises(OfflineDataError, match=rf"^sample 2: .*{message}.*drop_bad_rows=true"):
        tokenize(samples, rewards, seq_length=16)
    data = tokenize(samples, rewards, seq_length=16, drop_bad_rows=True, reward_normalization=False)
    assert [r.reward for r in data.rows] == [0.5, 1.5]
    assert data.dropped == {k: int(k == reason) + int(k == "bad_reward") for k in REASONS}


@pytest.mark.parametrize("sample", [["a"], ["a", "b", "c"], [], ["a", 5], 7, None])
def test_malformed_sample_raises_even_when_dropping(sample):
    with pytest.raises(OfflineDataError, match=r"^sample 1: a sample is a string .* even length"):
        tokenize(["ok", sample, "ok"], drop_bad_rows=True)


def test_count_mismatch_and_nothing_left():
    with pytest.raises(OfflineDataError, match="2 samples but 1 rewards"):
        tokenize(["a", "b"], [1.0])
    with pytest.raises(OfflineDataError, match=r"no sample is left of 2 \(empty_output: 1, bad_reward: 1\)"):
        tokenize(["", "b"], [1.0, None], drop_bad_rows=True)


# --- rewards ----------------------------------------------------------------------

def test_z_scored_rewards_hand_computed():
    # mean 3, unbiased std sqrt((4 + 1 + 0 + 9) / 3); the too-long row (reward 100) is not counted
    data = tokenize(["a", "b", "c", "d", "x" * 20], [1.0, 2.0, 3.0, 6.0, 100.0], seq_length=16, drop_bad_rows=True)
    std = math.sqrt(14 / 3)
    assert data.reward_mean == 3.0
    assert data.reward_std == pytest.approx(std, rel=1e-15)
    expected = [-0.9258200997725514, -0.4629100498862757, 0.0, 1.3887301496588271]
    assert [r.reward for r in data.rows] == pytest.approx(expected, rel=1e-12)
    assert [(r - 3) / std for r in (1, 2, 3, 6)] == pytest.approx(expected, rel=1e-12)


def test_raw_rewards_without_normalization():
    data = tokenize(["a", "b"], [1, -2.5], reward_normalization=False)
    assert [r.reward for r in data.rows] == [1.0, -2.5]
    assert (data.reward_mean, data.reward_std) == (-0.75, pytest.approx(math.sqrt(2 * 1.75 ** 2)))


def test_constant_rewards_and_a_single_row_normalize_to_zero():
    data = tokenize(["a", "b", "c"], [0.1, 0.1, 0.1])  # the float64 mean of 0.1s is not exactly 0.1
    assert [r.reward for r in data.rows] == [0.0, 0.0, 0.0]
    assert data.reward_std == 0.0
    data = tokenize(["a"], [7.0])
    assert (data.rows[0].reward, data.reward_mean, data.reward_std) == (0.0, 7.0, 0.0)


# --- reading rows (data/loader.py) -------------------------------------------------

def write_lines(tmp_path, lines):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_read_rows_and_bad_row_line_numbers(tmp_path):
    path = write_lines(tmp_path, [
        json.dumps({"prompt": "p", "output": " o", "reward": 1, "extra": "ignored"}),
        json.dumps({"prompt": "", "output": "alone", "reward": -0.5}),
        "",
        '{"prompt": "q", "output": "r", "reward": NaN}',
        '{"prompt": "q", "output": "s", "reward": null}',
    ])
    samples, rewards = read_rows(path)
    assert list(samples) == [["p", " o"], "alone", ["q", "r"], ["q", "s"]]
    assert rewards[:2] == [1.0, -0.5] and math.isnan(rewards[2]) and rewards[3] is None
    assert isinstance(rewards[0], float)
    with pytest.raises(OfflineDataError, match=rf"^sample 2 \({path} row 2 \(line 4\)\): its reward nan"):
        tokenize(samples, rewards)
    data = tokenize(samples, rewards, drop_bad_rows=True, reward_normalization=False)
    assert data.dropped["bad_reward"] == 2
    assert [r.tokens for r in data.rows] == [[112, 32, 111, EOS], [START] + encode("alone") + [EOS]]
    # a slice forgets the file: plain indices
    with pytest.raises(OfflineDataError, match=r"^sample 1: its reward nan"):
        tokenize(samples[1:], rewards[1:])


@pytest.mark.parametrize("line,message", [
    ('{"prompt": "p", "output": "o", "reward": 1', "invalid JSON"),
    ('[1, 2]', "a JSON list, not an object"),
    ('{"prompt": 3, "output": "o", "reward": 1}', "'prompt' is a number, but line 1 has a string"),
    ('{"prompt": "p", "output": null, "reward": 1}', '"output" is a NoneType, not a string'),
    ('{"prompt": "p", "reward": 1}', '"output" is a NoneType, not a string'),       # missing: null
    ('{"prompt": "p", "output": "o", "reward": "1"}', "'reward' is a string, but line 1 has a number"),
    ('{"prompt": "p", "output": "o", "reward": false}', "'reward' is a boolean, but line 1 has a number"),
])
def test_read_rows_errors_name_file_row_and_line(tmp_path, line, message):
    path = write_lines(tmp_path, [json.dumps({"prompt": "p", "output": "o", "reward": 0}), "   ", line])
    with pytest.raises(OfflineDataError, match=rf"^{path} row 1 \(line 3\): {message}") as err:
        read_rows(path)
    assert isinstance(err.value, ValueError)


def test_read_rows_needs_the_columns_and_a_row(tmp_path):
    with pytest.raises(OfflineDataError, match="no rows"):
        read_rows(write_lines(tmp_path, ["", "  "]))
    with pytest.raises(OfflineDataError, match=r"no 'reward' column \(has \['prompt', 'output'\]\)"):
        read_rows(write_lines(tmp_path, [json.dumps({"prompt": "p", "output": "o"})]))
    with pytest.raises(OfflineDataError, match=r'row 0: "reward" is True, not a number'):
        import datasets

        read_rows(datasets.Dataset.from_dict({"prompt": ["p"], "output": ["o"], "reward": [True]}))


def test_read_rows_from_parquet_and_a_dataset_equal_the_jsonl(tmp_path):
    import datasets

    rows = {"prompt": ["p", ""], "output": [" o", "alone"], "reward": [1.0, None]}
    jsonl = write_lines(tmp_path, [json.dumps({k: v[i] for k, v in rows.items()}) for i in range(2)])
    table = datasets.Dataset.from_dict(rows)
    table.to_parquet(str(tmp_path / "rows.parquet"))
    expected = read_rows(jsonl)
    assert read_rows(tmp_path / "rows.parquet") == expected == read_rows(table)
    with pytest.raises(OfflineDataError, match=r"sample 1 \(<datasets.Dataset> row 1\): its reward None"):
        tokenize(*read_rows(table))


# --- collate ----------------------------------------------------------------------

def batch_rows():
    data = tokenize(["ab", ["a", "bc", "d", "e"]], [1.0, -2.0], reward_normalization=False)
    return data.rows  # [2, a, b, EOS] actions 1..3; [a, b, c, d, e, EOS] actions 1, 2, 4, 5


@pytest.mark.parametrize("use_te", [False, True])
def test_collate_exact_tensors(use_te):
    batch = collate(batch_rows(), PAD, pad_to_multiple_of=4, use_te=use_te)  # L = 6 -> S = 8, A = 4
    assert batch["tokens"].tolist() == [[START, 97, 98, EOS, PAD, PAD, PAD, PAD],
                                        [97, 98, 99, 100, 101, EOS, PAD, PAD]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 3, 3, 3, 3], [0, 1, 2, 3, 4, 5, 5, 5]]
    assert batch["action_index"].tolist() == [[0, 1, 2, 0], [0, 1, 3, 4]]
    assert batch["action_ids"].tolist() == [[97, 98, EOS, PAD], [98, 99, 101, EOS]]
    assert batch["action_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch["rewards"].tolist() == [[0, 0, 1, 0], [0, 0, 0, -2]]
    assert batch["nonterminal_next"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 0]]
    for key, dtype in [("tokens", torch.long), ("position_ids", torch.long), ("action_index", torch.long),
                       ("action_ids", torch.long), ("action_mask", torch.float32), ("rewards", torch.float32),
                       ("nonterminal_next", torch.float32)]:
        assert batch[key].dtype == dtype, key
    lengths = [4, 6]
    mask = batch["attention_mask"]
    if use_te:  # True on padding
        assert mask.tolist() == [[[[j >= n for j in range(8)]]] for n in lengths]
    else:  # blocked unless j <= i and j real
        assert mask.tolist() == [[[[not (j <= i and j < n) for j in range(8)] for i in range(8)]] for n in lengths]
    # each action is the next token of its input position
    real = batch["action_mask"].bool()
    predicted = batch["tokens"].gather(1, batch["action_index"] + 1)
    assert torch.equal(predicted[real], batch["action_ids"][real])


def test_collate_without_rounding_and_a_hand_built_row():
    batch = collate(batch_rows(), PAD, use_te=False)
    assert batch["tokens"].shape == (2, 6) and batch["attention_mask"].shape == (2, 1, 6, 6)
    batch = collate([OfflineRow([5, 6, 7], [2], 0.25)], pad_token_id=9, pad_to_multiple_of=2, use_te=False)
    assert batch["tokens"].tolist() == [[5, 6, 7, 9]]
    assert (batch["action_index"].tolist(), batch["action_ids"].tolist()) == ([[1]], [[7]])
    assert (batch["rewards"].tolist(), batch["nonterminal_next"].tolist()) == ([[0.25]], [[0.0]])
    with pytest.raises(ValueError, match="row 0: actions"):
        collate([OfflineRow([5, 6], [0, 1], 1.0)], PAD)
