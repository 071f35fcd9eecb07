"""The sentiment task: make a small chat model write positive movie reviews.

trlX's flagship example (GPT-2 on IMDB with a sentiment classifier as
reward), rebuilt offline: prompts are templated review requests about
invented film titles, and the reward is VADER's compound score of the
model's reply (a lexicon scorer, -1 very negative .. +1 very positive).

Titles are "The <Adjective> <Noun>" over fixed word lists; the held-out
titles (evaluation) share no title with the training prompts.
"""

from __future__ import annotations

import random

_ADJECTIVES = (
    "Silent Broken Hidden Last Crimson Frozen Distant Golden Hollow Iron Lost Midnight Northern Pale "
    "Quiet Restless Scarlet Secret Shattered Silver Stolen Sunken Tangled Twisted Velvet Wandering "
    "Wild Winter Wooden Forgotten Burning Electric Endless Falling Glass Haunted Lonely Paper Rusty").split()
_NOUNS = (
    "Harbor Garden Mirror Kingdom River Signal Lantern Orchard Voyage Machine Island Letter Empire "
    "Carnival Tower Forest Witness Highway Echo Compass Frontier Station Circus Fortress Canyon Bridge "
    "Shadow Melody Archive Summer Lighthouse Detective Village Planet Desert Promise").split()
_TEMPLATES = (
    'Write a short review of the movie "{title}".',
    'What did you think of the film "{title}"? Answer in two sentences.',
    'Give me your opinion of the movie "{title}" in a few sentences.',
    'Describe how you felt after watching "{title}".',
)


def movie_titles() -> list[str]:
    """All titles, in a fixed shuffled order."""
    titles = [f"The {a} {n}" for a in _ADJECTIVES for n in _NOUNS]
    random.Random(0).shuffle(titles)
    return titles


def review_prompts(num_eval: int) -> tuple[list[str], list[str]]:
    """(training requests, held-out requests); held-out titles are unseen in training."""
    titles = movie_titles()
    if not 0 < num_eval < len(titles) // 2:
        raise ValueError(f"num_eval_prompts={num_eval} must be in [1, {len(titles) // 2 - 1}]")
    held_out, train = titles[:num_eval], titles[num_eval:]
    request = [_TEMPLATES[i % len(_TEMPLATES)].format(title=t) for i, t in enumerate(train)]
    evaluation = [_TEMPLATES[i % len(_TEMPLATES)].format(title=t) for i, t in enumerate(held_out)]
    return request, evaluation


class VaderReward:
    """reward_fn: VADER compound sentiment of each output, in [-1, 1]."""

    def __init__(self):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.analyzer = SentimentIntensityAnalyzer()

    def __call__(self, samples, prompts, outputs, **metadata) -> list[float]:
        return [self.analyzer.polarity_scores(text)["compound"] for text in outputs]
