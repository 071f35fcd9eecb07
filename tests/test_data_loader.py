"""The dataset loader (data/loader.py): local files of every kind through Hugging Face datasets,
TRL's dataset types by their columns, renames, limits, held-out splits, and bad rows named with
their source and row before anything expensive starts."""

import json

import datasets
import pytest

from autorlhf_nemo.data.loader import DataError, detect_type, extract_prompt, load_splits


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _load(path, **kwargs):
    return load_splits(path, cache_dir=str(path.parent / "cache"), **kwargs)


PAIRS = [{"prompt": f"Review {i}:", "chosen": " great.", "rejected": " bad."} for i in range(10)]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".csv"])
def test_each_file_kind_loads_the_same_rows(tmp_path, suffix):
    path = tmp_path / f"pairs{suffix}"
    table = datasets.Dataset.from_list(PAIRS)
    {".jsonl": table.to_json, ".json": table.to_json, ".parquet": table.to_parquet,
     ".csv": lambda p: table.to_csv(p, index=False)}[suffix](str(path))
    loaded = _load(path)
    assert (loaded.type, loaded.conversational, len(loaded.train), loaded.eval) == ("preference", False, 10, None)
    assert loaded.train[3] == PAIRS[3]


@pytest.mark.parametrize("columns,expected", [
    (["prompt", "chosen", "rejected", "score"], "preference"), (["chosen", "rejected"], "implicit_preference"),
    (["prompt", "completion"], "prompt_completion"), (["messages"], "chat"), (["text"], "language_modeling"),
    (["prompt"], "prompt_only"), (["question", "answer"], None)])
def test_type_by_columns(columns, expected):
    assert detect_type(columns) == expected


def test_renames_limit_and_a_seeded_held_out_fraction(tmp_path):
    rows = [{"question": f"q{i}", "answer": f" a{i}"} for i in range(40)]
    path = _jsonl(tmp_path / "qa.jsonl", rows)
    one = _load(path, columns={"prompt": "question", "completion": "answer"}, limit=30, eval_fraction=0.2, seed=3)
    two = _load(path, columns={"prompt": "question", "completion": "answer"}, limit=30, eval_fraction=0.2, seed=3)
    assert one.type == "prompt_completion" and (len(one.train), len(one.eval)) == (24, 6)
    assert one.eval["prompt"] == two.eval["prompt"]                       # seeded
    assert set(one.train["prompt"]) | set(one.eval["prompt"]) == {f"q{i}" for i in range(30)}   # the first 30
    other = _load(path, columns={"prompt": "question", "completion": "answer"}, limit=30, eval_fraction=0.2, seed=4)
    assert other.eval["prompt"] != one.eval["prompt"]


def test_in_memory_dataset_and_conversational_rows(tmp_path):
    chat = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}] * 3
    loaded = load_splits(datasets.Dataset.from_list(chat))
    assert (loaded.type, loaded.conversational, loaded.source) == ("chat", True, "<datasets.Dataset>")


def test_the_run_names_the_types_it_takes(tmp_path):
    path = _jsonl(tmp_path / "text.jsonl", [{"text": "a b c"}])
    with pytest.raises(DataError, match=r"text.jsonl: columns \['text'\] are language_modeling: this run needs "
                                        r"preference \(prompt, chosen, rejected\) or implicit_preference"):
        _load(path, allowed=("preference", "implicit_preference"))
    with pytest.raises(DataError, match=r"data.columns names \['answer'\], which the dataset does not have"):
        _load(path, columns={"completion": "answer"})


@pytest.mark.parametrize("rows,message", [
    ([{"prompt": "p", "chosen": " a", "rejected": " b"}, {"prompt": "p", "chosen": " a"}],
     r"row 1 \(line 2\): 'rejected' is missing \(null\)"),
    ([{"prompt": "p", "chosen": " a", "rejected": " a"}], r"row 0 \(line 1\): 'chosen' and 'rejected' are identical"),
    ([{"prompt": "p", "completion": "ok"}, {"prompt": "p", "completion": "  "}],
     r"row 1 \(line 2\): 'completion' is empty"),
    ([{"prompt": "p", "completion": 3}], r"row 0 \(line 1\): 'completion' is a int, not a string or a list of"),
    ([{"prompt": "p", "completion": " ok"}, {"prompt": [{"role": "user", "content": "p"}],
                                             "completion": [{"role": "assistant", "content": "ok"}]}],
     r"row 1 \(line 2\): 'prompt' is a list, but line 1 has a string: one kind of value per column"),
    ([{"prompt": "p", "completion": " ok"}, "not an object"], r"row 1 \(line 2\): a JSON string, not an object"),
])
def test_bad_rows_are_named_with_file_and_row(tmp_path, rows, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"bad.jsonl " + message):
        _load(path)


def test_unknown_source_and_file_kind_are_named(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"data.path=.*nowhere.jsonl: neither a local file nor a directory"):
        load_splits(str(tmp_path / "nowhere.jsonl"), cache_dir=str(tmp_path / "cache"))
    (tmp_path / "rows.txt").write_text("x\n")
    with pytest.raises(DataError, match=r"unknown file type '.txt'"):
        _load(tmp_path / "rows.txt")
    with pytest.raises(DataError, match="both set"):
        _load(tmp_path / "rows.txt", eval_split="test", eval_fraction=0.1)


def test_implicit_prompt_by_trl_rule():
    assert extract_prompt("The sky is blue.", "The sky is green.") == ("The sky is", " blue.", " green.")
    user = {"role": "user", "content": "Sky?"}
    chosen = [user, {"role": "assistant", "content": "Blue."}]
    rejected = [user, {"role": "assistant", "content": "Green."}]
    assert extract_prompt(chosen, rejected) == ([user], chosen[1:], rejected[1:])
    # the shared assistant turn of a multi-turn pair stays in the prompt; the last one differs
    turn = {"role": "assistant", "content": "Hello."}
    c2, r2 = [user, turn, user, chosen[1]], [user, turn, user, rejected[1]]
    assert extract_prompt(c2, r2) == ([user, turn, user], [chosen[1]], [rejected[1]])
    # the common start of whole messages, whatever role it ends with (TRL's rule)
    same_start = [user, {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Sure?"}]
    other = [user, {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Why?"}]
    assert extract_prompt(same_start, other)[0] == [user, same_start[1]]
