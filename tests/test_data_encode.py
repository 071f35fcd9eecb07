"""Token ids and loss masks of dataset rows (data/encode.py) with SmolLM2's real tokenizer and
chat template: the response and its EOS are trained, nothing the template renders after the
final EOS is kept, and every assistant turn of a conversation is found."""

import copy

import pytest
from transformers import AutoTokenizer

from autorlhf_nemo.convert.smollm2 import ensure_checkpoint
from autorlhf_nemo.data.encode import encode_messages, encode_prompt_response, encode_text, fit_prompt_responses
from autorlhf_nemo.data.loader import DataError
from autorlhf_nemo.versions import chat_prompt_ids

USER = {"role": "user", "content": "Hi"}
REPLY = {"role": "assistant", "content": "Hello! How can I help?"}


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(ensure_checkpoint())


def _trained(tokenizer, ids, mask):
    return tokenizer.decode([i for i, m in zip(ids, mask) if m])


def test_standard_prompt_and_response_are_encoded_apart_then_eos(tokenizer):
    ids, mask = encode_prompt_response(tokenizer, "Review of Dune:", " A classic.")
    head = tokenizer("Review of Dune:", add_special_tokens=False).input_ids
    assert ids == head + tokenizer(" A classic.", add_special_tokens=False).input_ids + [2]
    assert mask == [0] * len(head) + [1] * (len(ids) - len(head))
    assert _trained(tokenizer, ids, mask) == " A classic.<|im_end|>"


def test_chat_response_is_the_generation_prompt_then_the_reply_then_eos(tokenizer):
    ids, mask = encode_prompt_response(tokenizer, [USER], [REPLY])
    head = chat_prompt_ids(tokenizer, [USER])
    # the identity: prompt with generation prompt + completion + EOS == template(prompt + reply), cut at EOS
    assert ids == head + tokenizer(REPLY["content"], add_special_tokens=False).input_ids + [2]
    assert ids == chat_prompt_ids(tokenizer, [USER, REPLY], add_generation_prompt=False)[:-1]   # the "\n" dropped
    assert _trained(tokenizer, ids, mask) == REPLY["content"] + "<|im_end|>" and mask[: len(head)] == [0] * len(head)


def test_every_assistant_turn_of_a_conversation_is_trained(tokenizer):
    second = {"role": "assistant", "content": "Goodbye."}
    messages = [USER, REPLY, {"role": "user", "content": "Bye"}, second]
    ids, mask = encode_messages(tokenizer, messages)
    assert tokenizer.decode(ids).endswith("Goodbye.<|im_end|>")
    assert _trained(tokenizer, ids, mask) == REPLY["content"] + "<|im_end|>" + "Goodbye.<|im_end|>"
    assert sum(mask) == len(tokenizer(REPLY["content"]).input_ids) + len(tokenizer("Goodbye.").input_ids) + 2
    with pytest.raises(DataError, match="no assistant turn"):
        encode_messages(tokenizer, [USER])


def test_text_trains_every_token_after_the_first(tokenizer):
    ids, mask = encode_text(tokenizer, "The sky is blue.")
    assert ids[-1] == 2 and mask == [0] + [1] * (len(ids) - 1)


def test_a_template_that_renders_the_prompt_differently_once_a_reply_follows_is_refused(tokenizer):
    odd = copy.deepcopy(tokenizer)
    odd.chat_template = ("{% for m in messages %}{% if loop.last and m.role == 'assistant' %}<|im_start|>final\n"
                         "{% else %}<|im_start|>{{ m.role }}\n{% endif %}{{ m.content }}<|im_end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(DataError, match="renders the prompt differently once a reply follows"):
        encode_prompt_response(odd, [USER], [REPLY])
    with pytest.raises(DataError, match="assistant turn 1's tokens cannot be located"):
        encode_messages(odd, [USER, REPLY, USER, REPLY])


def test_long_prompts_lose_their_start_and_responses_are_never_cut(tokenizer):
    prompt, chosen, rejected = "one two three four five six seven eight nine ten", " yes.", " no thanks."
    whole = [encode_prompt_response(tokenizer, prompt, r) for r in (chosen, rejected)]
    longest = max(len(ids) for ids, _ in whole)
    assert fit_prompt_responses(tokenizer, prompt, [chosen, rejected], longest) == (whole, False)
    fitted, cut = fit_prompt_responses(tokenizer, prompt, [chosen, rejected], longest - 3)
    assert cut and max(len(ids) for ids, _ in fitted) == longest - 3
    for (ids, mask), (full, full_mask) in zip(fitted, whole):
        assert full[-len(ids):] == ids and full_mask[-len(mask):] == mask      # the prompt's start went
        assert sum(mask) == sum(full_mask)                                     # the responses are whole
    reply = sum(whole[1][1])
    assert fit_prompt_responses(tokenizer, prompt, [chosen, rejected], reply) == "response_too_long"
    assert fit_prompt_responses(tokenizer, prompt, [chosen, rejected], reply + 1)[1] is True


def test_long_conversations_lose_whole_earliest_turns(tokenizer):
    system = {"role": "system", "content": "Be brief."}
    old = [{"role": "user", "content": "Tell me a long story about the sea. " * 5},
           {"role": "assistant", "content": "Once upon a time, the sea was calm. " * 5}]
    prompt = [system, *old, USER]
    full = encode_prompt_response(tokenizer, prompt, [REPLY])
    short = encode_prompt_response(tokenizer, [system, USER], [REPLY])
    fitted, cut = fit_prompt_responses(tokenizer, prompt, [[REPLY]], len(short[0]))
    assert cut and fitted == [short] and len(full[0]) > len(short[0])      # both old turns went, system kept
    assert fit_prompt_responses(tokenizer, prompt, [[REPLY]], len(short[0]) - 1) == "prompt_too_long"
    assert fit_prompt_responses(tokenizer, prompt, [[REPLY]], sum(short[1])) == "response_too_long"


def test_rows_of_every_type_are_encoded_and_the_misfits_counted(tokenizer):
    import datasets

    from autorlhf_nemo.data.encode import encode_rows

    long = " and".join(["a very long answer"] * 40)
    pairs = datasets.Dataset.from_list([{"prompt": "Q:", "chosen": " yes.", "rejected": " no."},
                                        {"prompt": "Q:", "chosen": long, "rejected": " no."}])
    out = encode_rows(tokenizer, pairs, "preference", 64)
    assert out.counts == {"kept": 1, "prompt_truncated": 0, "response_too_long": 1, "prompt_too_long": 0}
    assert _trained(tokenizer, *out.rows[0]["chosen"]) == " yes.<|im_end|>"
    assert _trained(tokenizer, *out.rows[0]["rejected"]) == " no.<|im_end|>"

    implicit = datasets.Dataset.from_list([{"chosen": "The sky is blue.", "rejected": "The sky is green."}])
    row = encode_rows(tokenizer, implicit, "implicit_preference", 64).rows[0]
    assert tokenizer.decode(row["chosen"][0]) == "The sky is blue.<|im_end|>"
    assert _trained(tokenizer, *row["rejected"]) == " green.<|im_end|>"

    chats = datasets.Dataset.from_list([{"messages": [USER, REPLY]}] * 2)
    out = encode_rows(tokenizer, chats, "chat", 128)
    assert out.counts["kept"] == 2 and _trained(tokenizer, *out.rows[1]["sequence"]) == REPLY["content"] + "<|im_end|>"

    prompts = datasets.Dataset.from_list([{"prompt": "Write a review:"}, {"prompt": long}])
    out = encode_rows(tokenizer, prompts, "prompt_only", 32)
    assert out.counts["prompt_too_long"] == 1 and out.rows == [{"prompt": tokenizer("Write a review:").input_ids}]

    texts = datasets.Dataset.from_list([{"text": "short."}, {"text": long}])
    assert encode_rows(tokenizer, texts, "language_modeling", 32).counts["response_too_long"] == 1


def test_a_long_conversation_keeps_its_system_message_and_last_exchange(tokenizer):
    import datasets

    from autorlhf_nemo.data.encode import encode_rows

    system = {"role": "system", "content": "Be brief."}
    old = [{"role": "user", "content": "Tell me about the sea. " * 5},
           {"role": "assistant", "content": "The sea is wide. " * 5}]
    short = encode_messages(tokenizer, [system, USER, REPLY])
    table = datasets.Dataset.from_list([{"messages": [system, *old, USER, REPLY]}])
    out = encode_rows(tokenizer, table, "chat", len(short[0]))
    assert out.rows == [{"sequence": short}] and out.counts["prompt_truncated"] == 1
    out = encode_rows(tokenizer, table, "chat", len(short[0]) - 1)     # never the reply without its question
    assert out.rows == [] and out.counts["prompt_too_long"] == 1
    assert encode_rows(tokenizer, table, "chat", sum(short[1])).counts["response_too_long"] == 1
