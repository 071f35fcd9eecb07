"""Q-guided decoding from an exported ILQL policy: the HF export (trunk + LM head) and the heads
saved beside it (convert/ilql_heads.py). The export alone, in transformers or any engine,
samples as beta = 0; this samples from log_softmax(logits) + beta (min_i Qbar_i - V).

    python -m autorlhf_nemo.generate runs/randomwalks_ilql/hf_export --beta 1 --prompt b --prompt c \\
        algorithm=ilql task=randomwalks
    python -m autorlhf_nemo.generate runs/sentiment_ilql/hf_export --beta 4 --sample \\
        --prompt "Write a short review of the movie \\"The Quiet Harbor\\"." algorithm=ilql task=sentiment

The trailing ``key=value`` overrides are the training run's (the task's text codec, sampling
settings, layout); the heads' shape comes from the export. Under torchrun, any TP/PP layout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Sequence


def generate(export_dir: str | Path, prompts: Sequence[str], beta: float, overrides: Sequence[str] = (),
             greedy: bool = True, seed: int = 0) -> list[str]:
    """Decode ``prompts`` with Q-guidance ``beta`` (greedy, or sampled at the task's settings);
    returns the outputs' text (on every rank). Initialises and shuts down torch.distributed."""
    from autorlhf_nemo.algorithms import model_class
    from autorlhf_nemo.config.compose import compose_typed_config
    from autorlhf_nemo.convert.ilql_heads import HEADS_CONFIG, load_heads
    from autorlhf_nemo.generation import SamplingParams
    from autorlhf_nemo.parallel.runtime import initialize, shutdown
    from autorlhf_nemo.tasks import _hf_codec, _load_hf_weights

    export = Path(export_dir)
    heads = json.loads((export / HEADS_CONFIG).read_text())
    cfg = compose_typed_config(["algorithm=ilql", *overrides, f"model.hf_checkpoint={export}",
                                f"algorithm.two_qs={heads['two_qs']}", f"algorithm.head_width={heads['width']}"])
    if cfg.task.name == "randomwalks":
        from autorlhf_nemo.data import randomwalks

        encode, decode, eos, pad = randomwalks.encode, randomwalks.decode, [randomwalks.EOS], randomwalks.EOS
    else:
        codec, eos, pad = _hf_codec(cfg)
        encode, decode = codec.encode, codec.decode
    runtime = initialize(cfg)
    try:
        model = model_class("ilql")(cfg, runtime, _load_hf_weights)
        load_heads(model, export)
        sampling = dataclasses.asdict(cfg.task.sampling)
        params = SamplingParams(**sampling, greedy=greedy, eos_token_ids=eos, seed=seed,
                                hidden_processors=model.guidance(beta))
        out = model.generator(pad).generate([encode(p) for p in prompts], params)
        return [decode(r) for r in out.responses()]
    finally:
        shutdown()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export_dir")
    parser.add_argument("--prompt", action="append", required=True)
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--sample", action="store_true", help="sample at the task's settings (default: greedy)")
    parser.add_argument("--seed", type=int, default=0)
    args, overrides = parser.parse_known_args(argv)
    bad = [o for o in overrides if "=" not in o or o.startswith("-")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (overrides are key=value)")
    import torch.distributed as dist

    outputs = generate(args.export_dir, args.prompt, args.beta, overrides, greedy=not args.sample,
                       seed=args.seed)
    if not dist.is_initialized() or dist.get_rank() == 0:
        for prompt, output in zip(args.prompt, outputs):
            print(json.dumps({"prompt": prompt, "beta": args.beta, "output": output}))


if __name__ == "__main__":
    main()
