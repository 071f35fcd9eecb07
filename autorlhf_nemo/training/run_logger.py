"""Metrics of a run: stdout, JSONL, TensorBoard, optional Weights & Biases,
a progress bar, and at the end a PNG plot of reward and KL over steps.

Only global rank 0 writes; every other rank gets a logger that does nothing.
``metrics.jsonl`` holds one JSON object per step, ``updates.jsonl`` one per optimizer
update (its epoch, minibatch, staleness and losses); on resume both are cut back to
the checkpoint's step, so the files always describe one consistent run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


class RunLogger:
    def __init__(self, run_dir: Path, total_steps: int, *, enabled: bool, progress_bar: bool = True,
                 tensorboard: bool = True, wandb: bool = False, wandb_project: str = "autorlhf_nemo",
                 config: dict | None = None, start_step: int = 0, restored_row: dict | None = None,
                 restored_updates: list | None = None):
        """``start_step``: the step a resumed run continues from (0: fresh); ``restored_row`` /
        ``restored_updates``: that step's metrics and update rows from the checkpoint, written
        if the files lack them (killed between saving and logging)."""
        self.enabled, self.run_dir = enabled, Path(run_dir)
        self.jsonl = self.run_dir / "metrics.jsonl"
        self.updates_jsonl = self.run_dir / "updates.jsonl"
        self.history: list[dict] = []
        self.tb = self.wandb = self.bar = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.history = self._rows_until(self.jsonl, start_step)
        if restored_row and start_step > 0 and not any(r["step"] == start_step for r in self.history):
            self.history.append({"step": start_step, **{k: float(v) for k, v in restored_row.items()}})
        self.jsonl.write_text("".join(json.dumps(h) + "\n" for h in self.history))
        updates = self._rows_until(self.updates_jsonl, start_step)
        if restored_updates and start_step > 0 and not any(r["step"] == start_step for r in updates):
            updates += self._update_rows(start_step, restored_updates)
        self.updates_jsonl.write_text("".join(json.dumps(u) + "\n" for u in updates))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # an optional output, like the plot: the run goes on without it
                print("tensorboard is not installed: no TensorBoard event files (pip install tensorboard, "
                      "or logging.tensorboard=false)", file=sys.stderr)
            else:
                self.tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=start_step + 1)
        if wandb:
            try:
                import wandb as wandb_module
            except ImportError as error:
                raise ImportError("logging.wandb=true needs Weights & Biases: pip install wandb "
                                  "(WANDB_MODE=offline works without network)") from error
            self.wandb = wandb_module.init(project=wandb_project, dir=str(self.run_dir), config=config,
                                           resume="allow")
        if progress_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="rl steps", file=sys.stderr,
                            dynamic_ncols=True)

    @staticmethod
    def _rows_until(path: Path, step: int) -> list[dict]:
        """Rows of steps 0..step of an earlier run being resumed (none for a fresh start)."""
        if step == 0 or not path.exists():
            return []
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [r for r in rows if r["step"] <= step]

    @staticmethod
    def _update_rows(step: int, updates: list[dict]) -> list[dict]:
        return [{"step": step, "update": i, **{k: v if isinstance(v, int) else float(v) for k, v in u.items()}}
                for i, u in enumerate(updates)]

    def log(self, step: int, metrics: dict, updates: list[dict] | None = None) -> None:
        """The step's metrics (metrics.jsonl, TensorBoard, W&B, a line on stdout) and its
        optimizer updates (updates.jsonl)."""
        if not self.enabled:
            return
        row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        self.history.append(row)
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        if updates:
            with open(self.updates_jsonl, "a") as f:
                f.write("".join(json.dumps(u) + "\n" for u in self._update_rows(step, updates)))
        if self.tb is not None:
            for key, value in metrics.items():
                self.tb.add_scalar(key, value, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)
        shown = "  ".join(f"{_label(k)} {v:.4g}" for k, v in metrics.items()
                          if k in ("rollout/score", "rollout/kl", "eval/reward", "eval/loss", "eval/accuracy",
                                   "learn/loss", "learn/policy_loss", "learn/value_loss", "learn/accuracy", "kl_coef",
                                   "time/step"))
        message = f"step {step}: {shown}"
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.write(message)
        else:
            print(message, flush=True)

    def message(self, text: str) -> None:
        if self.enabled:
            (self.bar.write if self.bar is not None else print)(text)

    def plot(self) -> Path | None:
        """reward_and_kl.png: rollout score, eval reward and KL per step (where a reward was logged);
        loss.png where held-out losses were (SFT, DPO): training and held-out loss, and the held-out
        accuracy or perplexity. Returns the reward plot's path, else the loss plot's."""
        if not self.enabled or not self.history:
            return None
        loss = None
        if any("eval/loss" in h for h in self.history):
            loss = self._plot_pairs("loss.png", [("learn/loss", "training loss"), ("eval/loss", "held-out loss")],
                                    "loss", [("eval/accuracy", "held-out preference accuracy"),
                                             ("eval/perplexity", "held-out perplexity")])
        if not any("rollout/score" in h or "eval/reward" in h for h in self.history):
            return loss
        try:
            import matplotlib
        except ImportError:  # an optional output: a machine without matplotlib still finishes its run
            self.message("matplotlib is not installed: no reward_and_kl.png (pip install matplotlib)")
            return None

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
        for key, label in (("rollout/score", "rollout reward"), ("eval/reward", "eval reward")):
            points = [(h["step"], h[key]) for h in self.history if key in h]
            if points:
                top.plot(*zip(*points), marker="o" if key.startswith("eval") else None, label=label)
        top.set_ylabel("reward")
        top.legend()
        points = [(h["step"], h["rollout/kl"]) for h in self.history if "rollout/kl" in h]
        if points:
            bottom.plot(*zip(*points), color="tab:red")
        bottom.set_ylabel("KL(policy || reference), nats/sample")
        bottom.set_xlabel("step")
        fig.tight_layout()
        path = self.run_dir / "reward_and_kl.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def _plot_pairs(self, name: str, top_keys: list, top_label: str, bottom_keys: list) -> Path | None:
        """A two-panel plot of metrics per step: ``top_keys`` together, the first of ``bottom_keys`` logged."""
        try:
            import matplotlib
        except ImportError:
            self.message(f"matplotlib is not installed: no {name} (pip install matplotlib)")
            return None

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
        for key, label in top_keys:
            points = [(h["step"], h[key]) for h in self.history if key in h]
            if points:
                top.plot(*zip(*points), marker="o" if key.startswith("eval") else None, label=label)
        top.set_ylabel(top_label)
        top.legend()
        for key, label in bottom_keys:
            points = [(h["step"], h[key]) for h in self.history if key in h]
            if points:
                bottom.plot(*zip(*points), marker="o", color="tab:red")
                bottom.set_ylabel(label)
                break
        bottom.set_xlabel("step")
        fig.tight_layout()
        path = self.run_dir / name
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _label(key: str) -> str:
    """A metric's name on the progress line: its last part (eval/loss: eval_loss)."""
    name = key.split("/")[-1]
    return f"eval_{name}" if key.startswith("eval/") and key != "eval/reward" else name
