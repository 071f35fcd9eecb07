"""Token ids and loss masks of the loader's rows (data/loader.py), by one rule for every type.

Standard rows (strings) are encoded piece by piece, as the sampler sees them: the prompt
alone (``add_special_tokens=False``, the rule of ``tasks.TokenizerCodec``), then the response,
then EOS. Conversational rows (message lists) go through the tokenizer's chat template, and
every sequence ends at its final EOS: what a template renders after it (SmolLM2's adds a
newline) is dropped. So the prompt rendered with the generation prompt, followed by the
response and EOS, is exactly ``template(prompt + [assistant message])``; a template that
renders a prompt differently once a reply follows is refused (its spans would be wrong).

Each encoding is ``(ids, mask)``: ``mask[i]`` is 1 where token ``ids[i]`` is trained (predicted
from the tokens before it): the response and its EOS; for a ``messages`` row every assistant
turn (found by rendering the conversation turn by turn: SmolLM2's template has no generation
markers); for ``text`` every token after the first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from autorlhf_nemo.data.loader import DataError, extract_prompt
from autorlhf_nemo.versions import chat_prompt_ids


def _eos(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no EOS token: a sequence could not end")
    return tokenizer.eos_token_id


def _through_final_eos(ids: list[int], eos: int, what: str) -> list[int]:
    """``ids`` up to and including their last EOS."""
    if eos not in ids:
        raise DataError(f"the chat template rendered {what} without an EOS token: it cannot end a response")
    return ids[: len(ids) - ids[::-1].index(eos)]


def _render(tokenizer, messages: Sequence[dict], *, reply_follows: bool) -> list[int]:
    """The template's ids of ``messages``: ready for the assistant's reply (generation prompt), or
    ending with the last message's EOS."""
    if reply_follows:
        return chat_prompt_ids(tokenizer, list(messages), add_generation_prompt=True)
    return _through_final_eos(chat_prompt_ids(tokenizer, list(messages), add_generation_prompt=False),
                              _eos(tokenizer), "a conversation")


def encode_prompt(tokenizer, prompt: Any) -> list[int]:
    """The ids a reply follows: a string prompt alone, or a message list with the generation prompt."""
    if isinstance(prompt, str):
        return tokenizer(prompt, add_special_tokens=False).input_ids
    return _render(tokenizer, prompt, reply_follows=True)


def encode_prompt_response(tokenizer, prompt: Any, response: Any) -> tuple[list[int], list[int]]:
    """(ids, mask) of a prompt and its response (a completion, or one side of a pair): strings,
    or message lists (the response being the assistant's turn)."""
    eos = _eos(tokenizer)
    head = encode_prompt(tokenizer, prompt)
    if isinstance(prompt, str):
        tail = tokenizer(response, add_special_tokens=False).input_ids + [eos]
        return head + tail, [0] * len(head) + [1] * len(tail)
    whole = _render(tokenizer, [*prompt, *response], reply_follows=False)
    if whole[: len(head)] != head or len(whole) == len(head):
        raise DataError("the chat template renders the prompt differently once a reply follows: the response's "
                        "tokens cannot be told apart; use a template whose prompt is a prefix of the conversation")
    return whole, [0] * len(head) + [1] * (len(whole) - len(head))


def encode_messages(tokenizer, messages: Sequence[dict]) -> tuple[list[int], list[int]]:
    """(ids, mask) of a conversation: every assistant turn (with its EOS) trained."""
    whole = _render(tokenizer, messages, reply_follows=False)
    mask = [0] * len(whole)
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not turns:
        raise DataError("a 'messages' row has no assistant turn: there is nothing to train on")
    for i in turns:
        start = _render(tokenizer, messages[:i], reply_follows=True) if i else []
        end = _render(tokenizer, messages[: i + 1], reply_follows=False)
        if whole[: len(start)] != start or whole[: len(end)] != end:
            raise DataError(f"the chat template renders turns 0..{i} differently from the whole conversation: "
                            f"assistant turn {i}'s tokens cannot be located")
        mask[len(start): len(end)] = [1] * (len(end) - len(start))
    return whole, mask


def encode_text(tokenizer, text: str) -> tuple[list[int], list[int]]:
    """(ids, mask) of plain text for language modelling: EOS appended, every token after the first trained."""
    ids = tokenizer(text, add_special_tokens=False).input_ids + [_eos(tokenizer)]
    return ids, [0] + [1] * (len(ids) - 1)


# Why a row could not be fitted into data.max_length (counted and reported by the caller).
TOO_LONG = ("response_too_long", "prompt_too_long")


def fit_prompt_responses(tokenizer, prompt: Any, responses: Sequence[Any],
                         max_length: int) -> tuple[list[tuple[list[int], list[int]]], bool] | str:
    """The encodings of ``prompt`` with each of ``responses`` (a completion, or a chosen and a
    rejected reply), all within ``max_length`` tokens, and whether the prompt was shortened; or
    the reason (one of TOO_LONG) why they cannot fit.

    Responses are never cut. A string prompt keeps its last tokens; a message-list prompt loses
    whole messages from its start (a system message stays), never starting on an assistant turn.
    """
    encodings = [encode_prompt_response(tokenizer, prompt, r) for r in responses]
    if max(len(ids) for ids, _ in encodings) <= max_length:
        return encodings, False
    longest_reply = max(sum(mask) for _, mask in encodings)
    if isinstance(prompt, str):
        head = len(encodings[0][0]) - sum(encodings[0][1])   # the prompt's tokens, the same in each
        budget = max_length - longest_reply
        if budget < 1:
            return "response_too_long"
        return [(ids[head - budget:], mask[head - budget:]) for ids, mask in encodings], True
    system = list(prompt[:1]) if prompt and prompt[0]["role"] == "system" else []
    turns = list(prompt[len(system):])
    while len(turns) > 1:
        turns = turns[1:]
        while len(turns) > 1 and turns[0]["role"] == "assistant":
            turns = turns[1:]
        encodings = [encode_prompt_response(tokenizer, [*system, *turns], r) for r in responses]
        if max(len(ids) for ids, _ in encodings) <= max_length:
            return encodings, True
    return "response_too_long" if longest_reply >= max_length else "prompt_too_long"


def _fit_messages(tokenizer, messages: Sequence[dict], max_length: int) -> tuple[tuple[list[int], list[int]], bool] | str:
    """A conversation within ``max_length``: whole earliest messages dropped (a system message
    stays, never starting on an assistant turn) while an assistant turn remains; or the reason
    the last exchange does not fit (its assistant turns alone, or with the prompt before them)."""
    encoded = encode_messages(tokenizer, messages)
    if len(encoded[0]) <= max_length:
        return encoded, False
    system = list(messages[:1]) if messages[0]["role"] == "system" else []
    turns = list(messages[len(system):])
    while True:
        turns = turns[1:]
        while turns and turns[0]["role"] == "assistant":
            turns = turns[1:]
        if not any(m["role"] == "assistant" for m in turns):
            break
        encoded = encode_messages(tokenizer, [*system, *turns])
        if len(encoded[0]) <= max_length:
            return encoded, True
    return "response_too_long" if sum(encoded[1]) >= max_length else "prompt_too_long"


@dataclass
class EncodedRows:
    """A split's rows as token ids and loss masks, and what fitting them into max_length did."""

    rows: list[dict]            # per row: {"prompt": ids} (prompt_only), {"sequence": (ids, mask)}
                                # (completion, chat, text) or {"chosen": (ids, mask), "rejected": (ids, mask)}
    counts: dict[str, int]      # kept, prompt_truncated, and each reason of TOO_LONG


def encode_rows(tokenizer, table: Any, kind: str, max_length: int) -> EncodedRows:
    """Encode every row of a loaded split (``loader.Splits.train`` or ``.eval``) of type ``kind``."""
    rows, counts = [], {"kept": 0, "prompt_truncated": 0, **{reason: 0 for reason in TOO_LONG}}
    for row in table:
        if kind == "prompt_only":
            ids = encode_prompt(tokenizer, row["prompt"])
            fitted = ({"prompt": ids}, False) if len(ids) < max_length else "prompt_too_long"
        elif kind == "chat":
            fitted = _fit_messages(tokenizer, row["messages"], max_length)
            fitted = fitted if isinstance(fitted, str) else ({"sequence": fitted[0]}, fitted[1])
        elif kind == "language_modeling":
            encoded = encode_text(tokenizer, row["text"])
            fitted = ({"sequence": encoded}, False) if len(encoded[0]) <= max_length else "response_too_long"
        else:
            if kind == "implicit_preference":
                prompt, chosen, rejected = extract_prompt(row["chosen"], row["rejected"])
                responses = [chosen, rejected]
            elif kind == "preference":
                prompt, responses = row["prompt"], [row["chosen"], row["rejected"]]
            else:
                prompt, responses = row["prompt"], [row["completion"]]
            fitted = fit_prompt_responses(tokenizer, prompt, responses, max_length)
            if not isinstance(fitted, str):
                encodings, cut = fitted
                names = ("chosen", "rejected") if len(encodings) == 2 else ("sequence",)
                fitted = (dict(zip(names, encodings)), cut)
        if isinstance(fitted, str):
            counts[fitted] += 1
            continue
        rows.append(fitted[0])
        counts["kept"] += 1
        counts["prompt_truncated"] += int(fitted[1])
    return EncodedRows(rows, counts)
