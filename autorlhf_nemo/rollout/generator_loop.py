"""A generator rank's whole run (rollout.placement=split): sample every step's prompts with
the newest policy version the staleness bound allows, and send the samples to the learner.

    build      the policy trunk at the generator layout (placement.role_config), no optimizer
    start      learner rank 0 says which step the run starts at (0, or the resumed step)
               and sends that version's weights
    per step t sync (when steps.generators_receive_before), generate this replica's share
               of step t's prompts, queue the batch for learner rank 0 (non-blocking: the
               replica goes on to step t + 1, or waits for its weights)
    end        wait until the learner has every batch, and return: the generators take no part
               in the learners' last evaluation, save and export
"""

from __future__ import annotations

import time

import torch.distributed as dist
from megatron.core import parallel_state

from autorlhf_nemo.generation import Generator, matmul
from autorlhf_nemo.models.gpt import build_model
from autorlhf_nemo.parallel.placement import GENERATOR, role_config
from autorlhf_nemo.rollout import steps, transport
from autorlhf_nemo.rollout.weight_sync import WeightSync

LEARNER_ZERO = 0  # the learner rank that starts the generators and receives their batches


def exchange_roles(links) -> list[tuple[int, int, int]]:
    """Collective over ``links.link`` (learner rank 0 and the generators): (rank, replica,
    TP rank) of every generator rank, in rank order."""
    mine = None
    if dist.get_rank() != LEARNER_ZERO:
        mine = (dist.get_rank(), parallel_state.get_data_parallel_rank(),
                parallel_state.get_tensor_model_parallel_rank())
    everyone = [None] * dist.get_world_size(links.link)
    dist.all_gather_object(everyone, mine, group=links.link)
    return [entry for entry in everyone if entry is not None]


def message_widths(cfg, prompt_ids) -> tuple[int, int]:
    """The widths batches are padded to on the way (transport.py): the task's longest prompt, max_new_tokens."""
    return max(len(p) for p in prompt_ids), cfg.task.sampling.max_new_tokens


def run_generator(cfg, runtime, task) -> None:
    a, r = cfg.algorithm, cfg.rollout
    gen_cfg = role_config(cfg, GENERATOR)
    gpt = build_model(gen_cfg)
    gpt.eval()
    sync = WeightSync(runtime.placement, runtime.links, gpt, runtime.device)
    exchange_roles(runtime.links)
    engine = Generator(gpt, cfg.model.vocab_size, task.pad_token_id,
                       pack_weights=matmul.packing_available(runtime.device, gpt.config.params_dtype))
    prompt_ids = [task.encode(p) for p in task.prompts]
    widths = message_widths(cfg, prompt_ids)
    mine = steps.share(list(range(a.prompts_per_step)), parallel_state.get_data_parallel_rank(),
                       parallel_state.get_data_parallel_world_size())  # this replica's prompts of every step
    rows = steps.global_rows(mine, a.samples_per_prompt)
    sends = parallel_state.get_tensor_model_parallel_rank() == 0

    def take_weights() -> float:
        """Receive the learner's next weights; the seconds waited for them, receipt included."""
        began = time.perf_counter()
        sync.sync()
        engine.weights_changed()
        return time.perf_counter() - began

    start = [None]
    dist.broadcast_object_list(start, src=LEARNER_ZERO, group=runtime.links.link)
    start = start[0]
    version, waited, queued = start, take_weights(), []
    for step in range(start, cfg.train.total_steps):
        if steps.generators_receive_before(step, start, r.max_staleness):
            version, waited = step - r.max_staleness, take_weights()
        began = time.perf_counter()
        picks = steps.step_prompts(cfg.train.seed, step, len(prompt_ids), a.prompts_per_step)
        params = steps.sampling_params(cfg, task.eos_token_ids, cfg.train.seed + step, rows)
        generation = engine.generate([prompt_ids[picks[i]] for i in mine], params,
                                     samples_per_prompt=a.samples_per_prompt)
        info = transport.BatchInfo(version, step, time.perf_counter() - began, waited)
        waited = 0.0
        if sends:
            queued = [(work, t) for work, t in queued if not work.is_completed()]  # the learner has those
            queued += transport.send(generation, info, LEARNER_ZERO, runtime.links.link, runtime.device, widths)
    for work, _ in queued:
        work.wait()
