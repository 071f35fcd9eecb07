"""trlX's randomwalks benchmark: find short paths to a goal in a random graph.

A directed graph on ``n_nodes`` nodes named 'a', 'b', ...; node 0 ('a') is the
goal. Each ordered pair (i, j), i != j, is an edge with probability
``p_edge`` (redrawn until every node has an out-edge); the goal's only edge is
a self-loop. The dataset is ``n_walks`` uniform random walks of at most
``max_length`` nodes from random non-goal starts, stopping at the goal. A
policy is prompted with a start letter and writes the rest of a walk.

Metric per sample (prompt + output, one letter per node):
    length     = index of the first goal visit + 1; an unknown letter, a step
                 along a missing edge, or never reaching the goal counts as
                 ``max_length``
    optimality = (max_length - length) / (max_length - shortest_length) in [0, 1]
where shortest_length counts the nodes of a shortest path from the start.
The same generator (numpy RandomState) as trlX's gives its graph. trlX's examples
call it with ``config.train.seed`` = 1000 (the benchmark as it ran: its walks score
0.35 optimality); 1002 is only the function's default (an easier graph: 0.79).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

GOAL = 0
EOS = 0  # token id of end-of-walk (also padding); node k is token k + 1


def node_name(node: int) -> str:
    return chr(ord("a") + node)


def encode(walk: str) -> list[int]:
    """Letters -> token ids (node k -> k + 1)."""
    return [ord(c) - ord("a") + 1 for c in walk]


def decode(tokens) -> str:
    """Token ids -> letters, stopping at the first EOS; ids beyond the graph become '?'."""
    letters = []
    for t in tokens:
        if t == EOS:
            break
        letters.append(chr(ord("a") + t - 1) if 1 <= t <= 26 else "?")
    return "".join(letters)


@dataclass
class RandomWalks:
    adjacency: np.ndarray        # [n, n] bool, adjacency[i, j]: edge i -> j
    walks: list[str]             # the dataset, e.g. "kfa"
    shortest: dict[int, int]     # start node -> nodes on a shortest path to the goal
    max_length: int

    @property
    def n_nodes(self) -> int:
        return self.adjacency.shape[0]

    @property
    def prompts(self) -> list[str]:
        """Every non-goal start node that has a path to the goal, as a letter."""
        return [node_name(n) for n in range(1, self.n_nodes) if self.shortest[n] < self.max_length]

    def path_length(self, sample: str) -> int:
        nodes = [ord(c) - ord("a") for c in sample]
        for i, node in enumerate(nodes):
            if not 0 <= node < self.n_nodes or (i > 0 and not self.adjacency[nodes[i - 1], node]):
                return self.max_length
            if node == GOAL:
                return min(i + 1, self.max_length)
        return self.max_length

    def optimality(self, samples: list[str]) -> list[float]:
        scores = []
        for sample in samples:
            start = ord(sample[0]) - ord("a") if sample else -1
            if start not in self.shortest:
                scores.append(0.0)
                continue
            best = self.shortest[start]
            scores.append((self.max_length - self.path_length(sample)) / max(self.max_length - best, 1))
        return scores

    def reward_fn(self, samples, prompts=None, outputs=None, **_):
        """The PPO reward: optimality of each sample."""
        return self.optimality(samples)


def shortest_lengths(adjacency: np.ndarray, max_length: int) -> dict[int, int]:
    """Nodes on a shortest path from each non-goal node to the goal (BFS on the
    reversed graph), capped at ``max_length`` (also for unreachable nodes)."""
    n = adjacency.shape[0]
    distance = {GOAL: 1}
    queue = deque([GOAL])
    while queue:
        node = queue.popleft()
        for previous in np.nonzero(adjacency[:, node])[0].tolist():
            if previous not in distance:
                distance[previous] = distance[node] + 1
                queue.append(previous)
    return {node: min(distance.get(node, max_length), max_length) for node in range(1, n)}


TRLX_SEED = 1000  # what trlX's randomwalks examples pass (config.train.seed)


def make_random_walks(n_nodes: int = 21, max_length: int = 10, n_walks: int = 1000, p_edge: float = 0.1,
                      seed: int = TRLX_SEED) -> RandomWalks:
    if not 2 <= n_nodes <= 26:
        raise ValueError(f"n_nodes must be in [2, 26] (one letter per node), got {n_nodes}")
    rng = np.random.RandomState(seed)
    while True:
        adjacency = rng.rand(n_nodes, n_nodes) > (1 - p_edge)
        np.fill_diagonal(adjacency, False)
        if adjacency.sum(1).all():
            break
    adjacency[GOAL, :] = False
    adjacency[GOAL, GOAL] = True
    walks = []
    for _ in range(n_walks):
        node = GOAL
        while node == GOAL:
            node = rng.randint(n_nodes)
        nodes = [node]
        for _ in range(max_length - 1):
            node = int(rng.choice(np.nonzero(adjacency[node])[0]))
            nodes.append(node)
            if node == GOAL:
                break
        walks.append("".join(node_name(n) for n in nodes))
    return RandomWalks(adjacency, walks, shortest_lengths(adjacency, max_length), max_length)
