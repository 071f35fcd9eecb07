"""RL tasks: prompts, a reward function, a text codec and the policy's initial weights.

    randomwalks  trlX's benchmark (data/randomwalks.py): letters in, optimality out;
                 the policy is pretrained here on the walks first
    sentiment    SmolLM2-135M-Instruct asked for movie reviews, VADER reward
                 (data/sentiment.py)
    custom       prompts and reward_fn from the Python API (autorlhf_nemo.train)

A task is built the same way on every rank (no communication), before the
models; ``init_weights(gpt, runtime)`` fills a freshly built policy trunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from autorlhf_nemo.config.schema import OFFLINE_ALGORITHMS, SUPERVISED_ALGORITHMS, RootConfig
from autorlhf_nemo.config.validate import ConfigError
from autorlhf_nemo.versions import chat_prompt_ids


@dataclass
class Task:
    name: str
    prompts: list[str]                 # training prompts (text)
    eval_prompts: list[str]            # held-out prompts for evaluation
    reward_fn: Callable                # reward_fn(samples, prompts, outputs, **metadata) -> list
    encode: Callable[[str], list[int]]
    decode: Callable[[Sequence[int]], str]
    eos_token_ids: list[int]
    pad_token_id: int
    init_weights: Callable             # init_weights(gpt, cfg, runtime) -> None
    # None: the evaluation prompts are the task's own held-out set; otherwise what they are
    # instead, as the report and summary.json name them.
    eval_set: str | None = None
    # What the evaluation's reward measures, for the report (None: the reward function's score).
    eval_note: str | None = None
    # Offline RL (algorithm=ilql): samples (a string, or alternating [prompt, output, ...]
    # segments) and their rewards (data/offline.py); None for online algorithms.
    samples: list | None = None
    rewards: list | None = None
    # Token ids of one segment: prompts may be templated (chat), outputs are plain text.
    encode_output: Callable[[str], list[int]] | None = None
    # The state before the first action of a plain-string sample (its prompt)
    start_token_id: int | None = None
    # The Hugging Face tokenizer of a task with one (datasets are encoded with it: data/encode.py)
    tokenizer: object | None = None


class TokenizerCodec:
    """Text <-> token ids with a Hugging Face tokenizer, optionally in its chat template."""

    def __init__(self, tokenizer, chat_template: bool):
        self.tokenizer, self.chat_template = tokenizer, chat_template

    def encode(self, text) -> list[int]:
        """A prompt's ids: a string (in the chat template as the user's message with task.chat_template),
        or a list of {"role", "content"} messages (always in the chat template, as data/encode.py)."""
        if isinstance(text, (list, tuple)):
            return chat_prompt_ids(self.tokenizer, list(text))
        if self.chat_template:
            return chat_prompt_ids(self.tokenizer, [{"role": "user", "content": text}])
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def encode_output(self, text: str) -> list[int]:
        """A completion's tokens (never templated)."""
        return self.tokenizer.encode(text, add_special_tokens=False)

    def start_token_id(self) -> int:
        """BOS, else EOS: the state before a sample that has no prompt."""
        t = self.tokenizer
        return t.bos_token_id if t.bos_token_id is not None else t.eos_token_id


def _load_hf_weights(gpt, cfg: RootConfig, runtime) -> None:
    from autorlhf_nemo.convert import resolve_hf_checkpoint
    from autorlhf_nemo.convert.hf_llama import load_hf_checkpoint

    load_hf_checkpoint(gpt, resolve_hf_checkpoint(cfg.model.hf_checkpoint), cfg.model)


def _hf_codec(cfg: RootConfig):
    from transformers import AutoTokenizer

    from autorlhf_nemo.convert import resolve_hf_checkpoint

    if not cfg.model.hf_checkpoint:
        raise ConfigError([f"task={cfg.task.name} needs a tokenizer: set model.hf_checkpoint "
                           "(e.g. model=smollm2_135m)"])
    tokenizer = AutoTokenizer.from_pretrained(resolve_hf_checkpoint(cfg.model.hf_checkpoint))
    codec = TokenizerCodec(tokenizer, cfg.task.chat_template)
    eos = [tokenizer.eos_token_id]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    return codec, eos, pad


def dataset_path(path: str) -> str:
    """``path`` as given when it exists (absolute, or from the working directory), else from the
    repository root (the shipped datasets under data/)."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / path
    return path if Path(path).exists() or not root.exists() else str(root)


def _offline_fields(cfg: RootConfig, codec, samples=None, rewards=None) -> dict:
    """Task fields of an offline (ILQL) run: the samples and rewards given, else those of the
    JSONL file task.dataset; {} for online algorithms."""
    if cfg.algorithm is None or cfg.algorithm.name != "ilql":
        return {}
    if samples is None:
        if not cfg.task.dataset:
            raise ConfigError([f"algorithm=ilql on task={cfg.task.name} needs offline data: set task.dataset="
                               "<file or dataset> ({\"prompt\", \"output\", \"reward\"} rows) or pass "
                               "autorlhf_nemo.train(samples=..., rewards=...)"])
        from autorlhf_nemo.data.offline import read_rows

        samples, rewards = read_rows(dataset_path(cfg.task.dataset))
    # the samples as given: read_rows' keep their source's rows and lines for error messages
    return {"samples": samples, "rewards": list(rewards), "encode_output": codec.encode_output,
            "start_token_id": codec.start_token_id()}


def _randomwalks(cfg: RootConfig) -> Task:
    from autorlhf_nemo.data import randomwalks
    from autorlhf_nemo.data.randomwalks_pretrain import pretrain

    task_cfg = cfg.task
    walks = randomwalks.make_random_walks(seed=task_cfg.graph_seed)

    def init_weights(gpt, cfg: RootConfig, runtime):
        if cfg.model.hf_checkpoint:  # a walker trained before (e.g. an hf_export)
            _load_hf_weights(gpt, cfg, runtime)
        elif task_cfg.pretrain_steps > 0:
            trained, _ = pretrain(cfg, runtime, walks, steps=task_cfg.pretrain_steps,
                                  batch_size=task_cfg.pretrain_batch_size, lr=task_cfg.pretrain_lr)
            gpt.load_state_dict(trained.module.state_dict())

    starts = list(walks.prompts)
    offline = {}
    if cfg.algorithm is not None and cfg.algorithm.name == "ilql":
        # trlX's offline data: the 1000 walks, rewarded by their optimality; the start node is
        # the prompt (the policy does not choose it), the rest of the walk the output
        offline = {"samples": [[w[0], w[1:]] for w in walks.walks], "rewards": walks.optimality(walks.walks),
                   "encode_output": randomwalks.encode, "start_token_id": randomwalks.EOS}
    initial = "the pretrained walker's" if task_cfg.pretrain_steps and not offline else "the initial policy's"
    return Task("randomwalks", starts, starts[:task_cfg.num_eval_prompts], walks.reward_fn,
                randomwalks.encode, randomwalks.decode, [randomwalks.EOS], randomwalks.EOS, init_weights,
                eval_note=f"optimality of greedy walks from the {len(starts)} start nodes (the dataset's walks of "
                          f"graph seed {task_cfg.graph_seed} score {sum(walks.optimality(walks.walks)) / len(walks.walks):.2f}; "
                          f"'before' is {initial})", **offline)


def _sentiment(cfg: RootConfig) -> Task:
    from autorlhf_nemo.data.sentiment import VaderReward, review_prompts

    codec, eos, pad = _hf_codec(cfg)
    train, held_out = review_prompts(cfg.task.num_eval_prompts)
    return Task("sentiment", train, held_out, VaderReward(), codec.encode, codec.decode, eos, pad,
                _load_hf_weights, tokenizer=codec.tokenizer, **_offline_fields(cfg, codec))


def no_reward(samples, prompts=None, outputs=None, **_):
    return [0.0] * len(samples)


def _custom(cfg: RootConfig, prompts: Sequence[str] | None, reward_fn: Callable | None,
            eval_prompts: Sequence[str] | None, samples=None, rewards=None) -> Task:
    """The caller's prompts and reward (online), or samples and rewards (offline, algorithm=ilql:
    given, or task.dataset's JSONL rows; the prompts default to the samples' first segments).
    Without ``eval_prompts`` the evaluations use the first ``task.num_eval_prompts`` training
    prompts, and the task says so (``eval_set``). SFT and DPO (data from the data group) need
    neither: their evaluations decode ``eval_prompts`` or the held-out rows' prompts (jobs.py)."""
    name = cfg.algorithm.name if cfg.algorithm is not None else None
    offline = name == "ilql"
    if name in SUPERVISED_ALGORITHMS:
        if samples is not None:
            raise ConfigError([f"algorithm={name} trains on a dataset (data.path=, or train(dataset=...)), not on "
                               "samples and rewards (algorithm=ilql)"])
        codec, eos, pad = _hf_codec(cfg)
        return Task("custom", list(prompts or []), list(eval_prompts or []), reward_fn or no_reward, codec.encode,
                    codec.decode, eos, pad, _load_hf_weights, tokenizer=codec.tokenizer)
    if not offline and _reads_prompt_dataset(cfg):
        prompts = prompts if prompts is not None else []  # replaced by data.path's (build_task)
    if not offline and (prompts is None or reward_fn is None):
        raise ConfigError(["task=custom needs prompts and a reward_fn: pass them to "
                           "autorlhf_nemo.train(prompts=..., reward_fn=...) (or prompts from data.path=...) "
                           "or pick task=randomwalks|sentiment"])
    if (samples is None) != (rewards is None):
        raise ConfigError(["offline data needs both samples and rewards: autorlhf_nemo.train(samples=..., rewards=...)"])
    codec, eos, pad = _hf_codec(cfg)
    fields = _offline_fields(cfg, codec, samples, rewards)
    if offline and prompts is None:
        prompts = [s[0] for s in fields["samples"] if not isinstance(s, str)]
        if not prompts and not eval_prompts:
            raise ConfigError(["algorithm=ilql with samples that have no prompt needs eval_prompts: "
                               "autorlhf_nemo.train(samples=..., rewards=..., eval_prompts=[...])"])
    eval_set = None
    if not eval_prompts:
        eval_prompts = prompts[:cfg.task.num_eval_prompts]
        eval_set = f"first {len(eval_prompts)} training prompts; no eval_prompts given"
    eval_note = "no reward_fn was given: evaluation rewards are 0 (see the samples)" if reward_fn is None else None
    return Task("custom", list(prompts), list(eval_prompts), reward_fn or no_reward, codec.encode, codec.decode,
                eos, pad, _load_hf_weights, eval_set=eval_set, eval_note=eval_note, tokenizer=codec.tokenizer,
                **fields)


# The loader's types with a prompt column: an RL run's prompt dataset gives it only that column.
PROMPT_TYPES = ("prompt_only", "prompt_completion", "preference")


def _reads_prompt_dataset(cfg: RootConfig) -> bool:
    """Whether data.path gives an online algorithm its prompts (instead of the task's own)."""
    return cfg.algorithm is not None and cfg.algorithm.name not in OFFLINE_ALGORITHMS and cfg.data.path is not None


def _with_prompt_dataset(cfg: RootConfig, task: Task) -> Task:
    """``task`` with the ``prompt`` column of data.path (data/loader.py) as its training prompts, and
    the held-out rows' prompts (data.eval_split or data.eval_fraction; at most task.num_eval_prompts)
    as its evaluation prompts; with nothing held out, the first task.num_eval_prompts training prompts,
    which the report names."""
    from autorlhf_nemo.data.loader import load_data_splits

    if task.tokenizer is None:
        raise ConfigError([f"data.path gives prompts as text, and task={task.name} has no tokenizer: use "
                           f"task=custom or task=sentiment"])
    splits = load_data_splits(cfg.data, dataset_path(cfg.data.path), cfg.train.seed, PROMPT_TYPES)
    task.prompts = list(splits.train["prompt"])
    n = cfg.task.num_eval_prompts
    if splits.eval is not None and len(splits.eval):
        task.eval_prompts = list(splits.eval["prompt"])[:n]
        task.eval_set = f"{len(task.eval_prompts)} held-out rows of {splits.source}"
    else:
        task.eval_prompts = task.prompts[:n]
        task.eval_set = f"first {len(task.eval_prompts)} training prompts of {splits.source}; none held out"
    return task


def build_task(cfg: RootConfig, prompts: Sequence[str] | None = None, reward_fn: Callable | None = None,
               eval_prompts: Sequence[str] | None = None, samples=None, rewards=None) -> Task:
    """The task ``cfg.task.name`` names; ``custom`` takes prompts and reward_fn (or offline
    samples and rewards) from the caller. An online algorithm with data.path takes its prompts
    from that dataset instead (``_with_prompt_dataset``)."""
    name = cfg.task.name
    if _reads_prompt_dataset(cfg) and (prompts is not None or eval_prompts is not None):
        raise ConfigError(["prompts come from data.path or from train(prompts=...), not both: drop one"])
    if name == "custom":
        task = _custom(cfg, prompts, reward_fn, eval_prompts, samples, rewards)
    elif prompts is not None or reward_fn is not None or samples is not None:
        raise ConfigError([f"task={name} brings its own prompts and reward: use task=custom to pass yours"])
    else:
        builders = {"randomwalks": _randomwalks, "sentiment": _sentiment}
        if name not in builders:
            raise ConfigError([f"task.name={name!r} is unknown: use one of {sorted(builders) + ['custom']}"])
        task = builders[name](cfg)
    return _with_prompt_dataset(cfg, task) if _reads_prompt_dataset(cfg) else task
