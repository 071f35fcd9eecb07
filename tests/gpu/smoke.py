"""GPU smoke checks of autorlhf_nemo (run by tests/gpu/smoke.sh; see that script).

    python tests/gpu/smoke.py [--budget 240] [--out DIR]     on a CUDA machine (asserts CUDA)
    python tests/gpu/smoke.py --cpu-rehearsal [--budget 1500] the same checks on the CPU with gloo

Checks, each one PASS/FAIL line with its figures:
  a. logits of a tiny random Llama, Megatron (build_model + load_hf_checkpoint) vs transformers,
     fp32 and bf16, on the device
  b. greedy generation, autorlhf_nemo.generation.Generator vs transformers `generate`, fp32,
     token for token
  c. 3 PPO steps on randomwalks through the real command line under torchrun, TP1, NCCL:
     exit 0, NCCL used, 3 rows of finite losses in metrics.jsonl, KL exactly 0 at step 1,
     a complete checkpoint
  d. PPO on a SmolLM2-135M-shaped random-init model in bf16 (randomwalks prompts and reward):
     exit 0, finite losses, a complete checkpoint
  e. throughput: generation and training tokens/s of the runs of c and d (from metrics.jsonl)
Every check runs in its own process (a crash or a hang fails that check only) under a share
of the overall budget; checks the budget leaves no time for FAIL as skipped. Exit status 0
only when every check passed. Logs and run directories go to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOL_FP32 = 1e-4
# bf16: Megatron's bf16 logits must be no further from the fp32 reference than BF16_FACTOR x
# transformers' own bf16 logits are, plus BF16_SLACK (both round weights and activations to
# bf16, 8 bits of mantissa, and sum in different orders).
BF16_FACTOR, BF16_SLACK = 2.0, 1e-2
PROMPTS = [[5, 17, 99, 3, 44], [42, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9], [200]]  # as tests/test_generation.py
NEW_TOKENS, PAD = 24, 0


# ---------------------------------------------------------------------------- worker: a and b
def parity_worker(out: Path, rehearsal: bool) -> None:
    """Checks a and b in one process (one process group); writes their figures to out."""
    import torch

    sys.path.insert(0, str(REPO / "tests"))
    from tiny_model import make_batch, make_tiny_llama
    from transformers import LlamaForCausalLM

    from autorlhf_nemo.config.compose import compose_typed_config
    from autorlhf_nemo.convert.hf_llama import load_hf_checkpoint
    from autorlhf_nemo.generation import Generator, SamplingParams
    from autorlhf_nemo.generation.engine import left_pad
    from autorlhf_nemo.models.gpt import attention_mask, build_model
    from autorlhf_nemo.parallel.runtime import initialize, shutdown

    backend = "gloo" if rehearsal else "nccl"
    overrides = ["model=tiny_llama", f"parallel.backend={backend}"]
    cfg32 = compose_typed_config(overrides)
    cfg16 = compose_typed_config(overrides + ["model.params_dtype=bfloat16"])
    runtime = initialize(cfg32)
    device = runtime.device
    result = {"device": str(device), "backend": runtime.backend,
              "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
              "float32_matmul_precision": torch.get_float32_matmul_precision()}
    hf_dir = out / "tiny_llama_hf"
    make_tiny_llama(hf_dir, std=0.15, seed=11)  # as tests/test_generation.py: peaky, varied greedy text
    vocab = cfg32.model.vocab_size

    def megatron(cfg):
        model = build_model(cfg).eval()
        load_hf_checkpoint(model, str(hf_dir), cfg.model)
        return model

    def hf(dtype):
        return LlamaForCausalLM.from_pretrained(hf_dir, dtype=dtype).to(device).eval()

    def logits(model, ids):
        mask = attention_mask(torch.ones_like(ids))
        positions = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0).expand_as(ids)
        return model(ids, positions, mask)[..., :vocab].float()

    ids = make_batch(4, 17).to(device)
    ours32, hf32 = megatron(cfg32), hf(torch.float32)
    with torch.no_grad():
        a32, ref = logits(ours32, ids), hf32(ids).logits.float()
        result["fp32_max_abs_diff"] = (a32 - ref).abs().max().item()
        result["logit_scale"] = ref.abs().max().item()
        ours16, hf16 = megatron(cfg16), hf(torch.bfloat16)
        a16, h16 = logits(ours16, ids), hf16(ids).logits.float()
        result["bf16_ours_vs_hf_bf16"] = (a16 - h16).abs().max().item()
        result["bf16_ours_vs_fp32"] = (a16 - ref).abs().max().item()
        result["bf16_hf_vs_fp32"] = (h16 - ref).abs().max().item()
        result["bf16_argmax_agree"] = (a16.argmax(-1) == h16.argmax(-1)).float().mean().item()
    del ours16, hf16

    # b. greedy generation, fp32
    prompt_ids, prompt_mask = left_pad(PROMPTS, PAD)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    generator = Generator(ours32, vocab, PAD)
    params = SamplingParams(max_new_tokens=NEW_TOKENS, greedy=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn, repeats=3):
        """fn()'s value and its best time of ``repeats`` calls after a warm-up call."""
        value, best = fn(), float("inf")  # warm-up (kernels, caches)
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            value = fn()
            sync()
            best = min(best, time.perf_counter() - start)
        return value, best

    def theirs_fn():
        with torch.no_grad():
            return hf32.generate(prompt_ids, attention_mask=prompt_mask, max_new_tokens=NEW_TOKENS,
                                 do_sample=False, pad_token_id=PAD, eos_token_id=None)

    ours_out, ours_s = timed(lambda: generator.generate(PROMPTS, params))
    theirs_out, theirs_s = timed(theirs_fn)
    ours_tokens = ours_out.response_ids.cpu()
    theirs_tokens = theirs_out[:, prompt_ids.shape[1]:].cpu()
    same = (ours_tokens == theirs_tokens) if ours_tokens.shape == theirs_tokens.shape else None
    result.update({
        "gen_shape_ours": list(ours_tokens.shape), "gen_shape_hf": list(theirs_tokens.shape),
        "gen_equal_tokens": int(same.sum()) if same is not None else 0,
        "gen_total_tokens": int(theirs_tokens.numel()),
        "gen_first_mismatch": (None if same is None or bool(same.all())
                               else [int(x) for x in (~same).nonzero()[0]]),
        "gen_ours_tok_s": ours_tokens.numel() / ours_s, "gen_hf_tok_s": theirs_tokens.numel() / theirs_s,
    })
    (out / "parity.json").write_text(json.dumps(result, indent=1))
    shutdown()


# ---------------------------------------------------------------------------- driver helpers
class Budget:
    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


def run_logged(cmd: list[str], log: Path, timeout: float, env: dict) -> tuple[int | None, float]:
    """Run ``cmd`` (its own process group) with output to ``log``; kill the group at ``timeout``.
    Returns (exit code or None on timeout, seconds)."""
    start = time.perf_counter()
    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    return code, time.perf_counter() - start


def tail(log: Path, n: int = 15) -> str:
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    keep = [l for l in lines if l.strip()][-n:]
    return "\n".join("      | " + l[:200] for l in keep)


def checkpoint_problem(folder: Path) -> str | None:
    """None if ``folder`` is a complete run checkpoint (the project's own check, plus that
    it holds the replicated state and distributed shards), else what is wrong."""
    from autorlhf_nemo.checkpoint.run_checkpoint import MANIFEST, verify

    problem = verify(folder)
    if problem:
        return f"{folder.name}: {problem}"
    manifest = json.loads((folder / MANIFEST).read_text())
    if "state.pt" not in manifest or not any(n.startswith("dist/") for n in manifest):
        return f"{folder.name}: the manifest lacks state.pt or dist/ shards"
    return None


def rl_run(name: str, overrides: list[str], steps: int, rehearsal: bool, out: Path, budget: Budget,
           cap: float, env: dict, algorithm: str = "ppo") -> dict:
    """``python -m torch.distributed.run --standalone --nproc_per_node 1 -m autorlhf_nemo ...``;
    returns the figures and the list of problems (empty: PASS)."""
    run_dir = out / f"run_{name}"
    backend = "gloo" if rehearsal else "nccl"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           "-m", "autorlhf_nemo", f"algorithm={algorithm}", "task=randomwalks", *overrides,
           f"train.total_steps={steps}", f"parallel.backend={backend}", "logging.progress_bar=false",
           "logging.tensorboard=false", "checkpoint.resume=false", f"run_dir={run_dir}",
           f"hydra.run.dir={out / ('hydra_' + name)}"]
    log = out / f"{name}.log"
    timeout = min(cap, budget.left())
    if timeout < 10:
        return {"problems": ["skipped: the overall budget is spent"], "log": log}
    code, seconds = run_logged(cmd, log, timeout, dict(env, NCCL_DEBUG="VERSION"))
    fig = {"seconds": seconds, "log": log, "problems": []}
    problems = fig["problems"]
    if code is None:
        problems.append(f"timed out after {seconds:.0f} s")
    elif code != 0:
        problems.append(f"exit {code}")
    text = log.read_text(errors="replace")
    nccl = [l for l in text.splitlines() if "NCCL version" in l]
    fig["nccl"] = nccl[0].split("NCCL version", 1)[1].strip() if nccl else None
    if not rehearsal and not fig["nccl"]:
        problems.append("no 'NCCL version' line: NCCL was not used")
    metrics = run_dir / "metrics.jsonl"
    rows = [json.loads(l) for l in metrics.read_text().splitlines() if l.strip()] if metrics.exists() else []
    steps_rows = {r["step"]: r for r in rows if r.get("step", 0) >= 1}
    fig["rows"] = [steps_rows[s] for s in sorted(steps_rows)]
    if sorted(steps_rows) != list(range(1, steps + 1)):
        problems.append(f"metrics.jsonl has steps {sorted(steps_rows)}, expected 1..{steps}")
    bad = sorted({k for r in fig["rows"] for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)})
    if bad:
        problems.append(f"non-finite metrics: {bad}")
    losses = sorted({k for r in fig["rows"] for k in r if k.startswith("learn/") and "loss" in k})
    expected = {"learn/policy_loss", "learn/value_loss"} if algorithm == "ppo" else {"learn/loss"}
    if fig["rows"] and not expected <= set(losses):
        problems.append(f"no {sorted(expected)} in metrics.jsonl (have {losses})")
    fig["losses"] = {k: fig["rows"][-1][k] for k in losses} if fig["rows"] else {}
    fig["kl1"] = steps_rows.get(1, {}).get("rollout/kl")
    final = run_dir / "checkpoints" / f"step_{steps:06d}"
    problem = checkpoint_problem(final) if final.is_dir() else f"no checkpoint {final.name}"
    if problem:
        problems.append(problem)
    else:
        files = [p for p in final.rglob("*") if p.is_file()]
        fig["checkpoint"] = f"{final.name} complete ({len(files)} files, {sum(p.stat().st_size for p in files) / 1e6:.1f} MB)"
    return fig


def throughput(fig: dict, rollouts: int, epochs: int, prompt_tokens: int = 1) -> str:
    """Tokens/s from metrics.jsonl: generation = rollouts x mean response length / time/generate;
    training = epochs x rollouts x (prompt + response tokens) / time/learn. Steps after the
    first when there are any (the first includes warm-up)."""
    rows = fig.get("rows") or []
    use = rows[1:] or rows
    if not use or not all("time/generate" in r and "rollout/response_length" in r for r in use):
        return "n/a (no metrics)"
    gen = sum(rollouts * r["rollout/response_length"] / r["time/generate"] for r in use) / len(use)
    learn = sum(epochs * rollouts * (prompt_tokens + r["rollout/response_length"]) / r["time/learn"]
                for r in use) / len(use)
    which = f"steps {use[0]['step']}-{use[-1]['step']}" if len(use) > 1 else f"step {use[0]['step']}" + (
        " (first: includes warm-up)" if use[0]["step"] == 1 else "")
    phases = ", ".join(f"{k.split('/')[1]} {sum(r[k] for r in use) / len(use):.2f} s" for k in
                       ("time/generate", "time/experience", "time/learn") if k in use[0])
    return (f"generate {gen:,.0f} tok/s, train {learn:,.0f} tok/s ({which}; {rollouts} rollouts x "
            f"{use[-1]['rollout/response_length']:.1f} response tokens, {epochs} epochs; per step: {phases})")


def run_geometry(hydra_dir: Path) -> tuple[int, int]:
    """(rollouts per step: prompts x samples per prompt, epochs) of a run, from the config Hydra
    saved (randomwalks' 128, 4 if it is not there)."""
    try:
        import yaml

        algorithm = yaml.safe_load((hydra_dir / ".hydra" / "config.yaml").read_text())["algorithm"]
        return int(algorithm["prompts_per_step"]) * int(algorithm["samples_per_prompt"]), int(algorithm["epochs"])
    except (OSError, KeyError, TypeError, ValueError, ImportError):
        return 128, 4


def versions() -> list[str]:
    """The interpreter, torch (CUDA, NCCL), the GPU and the versions of the packages the project uses."""
    import importlib.metadata as md

    import torch

    def v(dist):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return "absent"

    cuda = torch.cuda.is_available()
    gpu = torch.cuda.get_device_name(0) if cuda else "none (CPU only)"
    nccl = ".".join(map(str, torch.cuda.nccl.version())) if cuda and hasattr(torch.cuda, "nccl") else "n/a"
    packages = ("megatron-core", "transformers", "nemo-toolkit", "lightning", "hydra-core", "omegaconf",
                "tokenizers", "huggingface-hub", "transformer-engine")
    return [f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}, NCCL {nccl}), "
            f"GPU: {gpu}",
            ", ".join(f"{d} {v(d)}" for d in packages)]


# ---------------------------------------------------------------------------- driver
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-rehearsal", action="store_true",
                        help="run the checks on the CPU with gloo (labelled REHEARSAL; proves nothing about GPUs)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for all checks (default 240 on a GPU, 1500 in a CPU rehearsal)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "gpu_smoke")
    parser.add_argument("--smol-steps", type=int, default=2,
                        help="PPO steps of check d (the second gives a warm throughput figure)")
    parser.add_argument("--checks", default="abcd",
                        help="which checks to run (default abcd; a and b share one process; e follows c and d)")
    parser.add_argument("--versions", action="store_true", help="print the versions report and exit")
    parser.add_argument("--worker", choices=["parity"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.versions:
        print("\n".join(versions()))
        return 0
    if not args.checks or set(args.checks) - set("abcd"):
        parser.error(f"--checks takes letters of abcd, got {args.checks!r}")
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.worker == "parity":
        parity_worker(args.out, args.cpu_rehearsal)
        return 0

    import torch

    label = "REHEARSAL (CPU, gloo: proves nothing about GPUs) " if args.cpu_rehearsal else ""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TORCH_CPP_LOG_LEVEL="ERROR")
    if args.cpu_rehearsal:
        env["CUDA_VISIBLE_DEVICES"] = ""
    elif not torch.cuda.is_available():
        message = ("FAIL: torch.cuda.is_available() is False: this is the GPU smoke run "
                   "(use --cpu-rehearsal to rehearse it on a CPU)")
        print(message)
        (args.out / "report.txt").write_text(message + "\n")
        return 2
    budget_s = args.budget or (1500.0 if args.cpu_rehearsal else 240.0)
    budget = Budget(budget_s)
    report = [f"== autorlhf_nemo GPU smoke {label}{time.strftime('%Y-%m-%d %H:%M:%S')}", *versions()]
    if args.cpu_rehearsal:
        report.append("REHEARSAL: every check below ran on the CPU with gloo, not on a GPU")
    ok = True
    tag = "[REHEARSAL] " if args.cpu_rehearsal else ""
    start = time.perf_counter()

    def line(passed: bool | None, text: str):
        """A PASS/FAIL line of the report; passed=None: an INFO line."""
        nonlocal ok
        ok &= passed is not False
        report.append(f"{'INFO' if passed is None else 'PASS' if passed else 'FAIL'} {tag}{text}")
        print(report[-1], flush=True)
        (args.out / "report.txt").write_text("\n".join(report) + "\n")  # so far, if the run is cut short

    for text in report:
        print(text, flush=True)

    if not args.cpu_rehearsal:
        check_compile(args, budget, env, line)
    if "a" in args.checks or "b" in args.checks:
        check_parity(args, budget, env, line)
    runs = []
    if "c" in args.checks:
        runs.append(("tiny randomwalks GPT (4 layers, h64), fp32", "ppo_tiny", check_tiny(args, budget, env, line)))
    if "d" in args.checks:
        runs.append(("SmolLM2-135M-shaped, bf16", "ppo_smollm2_shape", check_smol(args, budget, env, line)))
    # e. throughput (randomwalks prompts are one token: the start node's letter)
    for name, run, fig in runs:
        rollouts, epochs = run_geometry(args.out / f"hydra_{run}")
        line(None, f"e. throughput, {name}: {throughput(fig, rollouts, epochs)}")

    report.append(f"{'ALL PASSED' if ok else 'FAILED'} {tag}in {time.perf_counter() - start:.0f} s "
                  f"(budget {budget_s:.0f} s); logs and runs in {args.out}")
    print(report[-1], flush=True)
    (args.out / "report.txt").write_text("\n".join(report) + "\n")
    return 0 if ok else 1


COMPILE_PROBE = """
import time, torch, torch.nn.functional as F
start = time.perf_counter()
fn = torch.compile(lambda x, y: F.silu(x) * y)  # what megatron.core.jit's jit_fuser does to the fused SwiGLU
x = torch.randn(64, 128, device="cuda")
assert torch.allclose(fn(x, x), F.silu(x) * x, atol=1e-5)
print(f"compiled in {time.perf_counter() - start:.1f} s")
"""


def check_compile(args, budget: Budget, env: dict, line) -> None:
    """With triton importable the project turns on Megatron's fused SwiGLU (models/gpt.py
    fusion_flags), which torch.compile builds with inductor + triton (a C compiler and the
    Python headers are needed for triton's launcher). If that fails here, say so, and run the
    checks eagerly (TORCHDYNAMO_DISABLE=1) so that they still show the rest."""
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        line(None, "triton is not installed: the project leaves Megatron's fused SwiGLU off (no torch.compile)")
        return
    log = args.out / "compile_probe.log"
    code, seconds = run_logged([sys.executable, "-c", COMPILE_PROBE], log, min(120, budget.left()), env)
    if code == 0:
        line(None, f"torch.compile (inductor + triton) on cuda works: {seconds:.0f} s for a probe "
                   f"(the fused SwiGLU of the checks below uses it)")
        return
    env["TORCHDYNAMO_DISABLE"] = "1"
    line(False, f"torch.compile (inductor + triton) fails on this machine ({'timeout' if code is None else f'exit {code}'}), "
         f"so would `python -m autorlhf_nemo` with bias_activation_fusion on; the checks below run with "
         f"TORCHDYNAMO_DISABLE=1 (eager):\n{tail(log, 8)}")


def check_parity(args, budget: Budget, env: dict, line) -> None:
    """a and b, in one worker process."""
    log = args.out / "parity.log"
    (args.out / "parity.json").unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "parity", "--out", str(args.out)]
    if args.cpu_rehearsal:
        cmd.append("--cpu-rehearsal")
    code, seconds = run_logged(cmd, log, min(150 if not args.cpu_rehearsal else 600, budget.left()), env)
    result = json.loads((args.out / "parity.json").read_text()) if (args.out / "parity.json").exists() else None
    if result is None:
        why = "timed out" if code is None else f"exit {code}"
        line(False, f"a/b. parity worker {why} after {seconds:.0f} s, no results:\n{tail(log)}")
    else:
        d32 = result["fp32_max_abs_diff"]
        line(d32 <= TOL_FP32, f"a. logits fp32, tiny Llama (4 layers, h64, GQA) vs transformers, 4x17 tokens on "
             f"{result['device']}: max|diff| {d32:.2e} (tol {TOL_FP32:.0e}; logits up to "
             f"{result['logit_scale']:.2f}; TF32 matmul {result['tf32_matmul']})")
        ours, theirs = result["bf16_ours_vs_fp32"], result["bf16_hf_vs_fp32"]
        line(ours <= BF16_FACTOR * theirs + BF16_SLACK,
             f"a. logits bf16: max|ours - fp32 ref| {ours:.2e}, transformers bf16's own {theirs:.2e} "
             f"(tol {BF16_FACTOR:g}x that + {BF16_SLACK:g}); max|ours - transformers bf16| "
             f"{result['bf16_ours_vs_hf_bf16']:.2e}, argmax agreement {100 * result['bf16_argmax_agree']:.1f}%")
        equal, total = result["gen_equal_tokens"], result["gen_total_tokens"]
        same = result["gen_shape_ours"] == result["gen_shape_hf"] and equal == total
        line(same, f"b. greedy generation fp32, {len(PROMPTS)} left-padded prompts x {NEW_TOKENS} tokens vs "
             f"transformers generate: {equal}/{total} tokens identical"
             + ("" if same else f" (shapes {result['gen_shape_ours']} vs {result['gen_shape_hf']}, first "
                                f"mismatch [row, step] {result['gen_first_mismatch']})")
             + f"; tiny model, batch 4, best of 3: ours {result['gen_ours_tok_s']:,.0f} tok/s, transformers "
               f"{result['gen_hf_tok_s']:,.0f} tok/s")


def check_tiny(args, budget: Budget, env: dict, line) -> dict:
    """c. PPO on randomwalks, the task's tiny GPT, through the real command line; then 2 steps each of
    online DPO and GRPO (the shared loop's other paths: pairs, no value head, response-only logits)
    and 3 steps of ILQL (offline loop, vocab-parallel Q/V heads, Q-guided decoding, heads export)."""
    tiny = rl_run("ppo_tiny", ["task.pretrain_steps=50"], 3, args.cpu_rehearsal, args.out, budget,
                  cap=600 if args.cpu_rehearsal else 120, env=env)
    if tiny.get("kl1") != 0.0 and not any("skipped" in p for p in tiny["problems"]):
        tiny["problems"].append(f"step-1 KL is {tiny.get('kl1')}, expected exactly 0")
    backend = "gloo" if args.cpu_rehearsal else f"nccl (NCCL {tiny.get('nccl')})"
    if tiny["problems"]:
        line(False, f"c. PPO randomwalks TP1 via torchrun, {backend}: " + "; ".join(tiny["problems"])
             + f"\n{tail(tiny['log'])}")
    else:
        losses = ", ".join(f"{k.split('/')[1]} {v:.4g}" for k, v in tiny["losses"].items())
        line(True, f"c. PPO randomwalks TP1 via torchrun, {backend}: 3 steps, exit 0, {tiny['seconds']:.0f} s wall "
             f"(pretraining 50 steps incl.); step-1 KL {tiny['kl1']}; step 3: {losses}; {tiny['checkpoint']}")
    for algorithm in ("online_dpo", "grpo"):
        run = rl_run(f"{algorithm}_tiny", ["task.pretrain_steps=50", "algorithm.prompts_per_step=32",
                                           "train.micro_batch_size=16"], 2,
                     args.cpu_rehearsal, args.out, budget, cap=600 if args.cpu_rehearsal else 90, env=env,
                     algorithm=algorithm)
        if run.get("kl1") != 0.0 and not any("skipped" in p for p in run["problems"]):
            run["problems"].append(f"step-1 KL is {run.get('kl1')}, expected exactly 0")
        if run["problems"]:
            line(False, f"c. {algorithm} randomwalks TP1 via torchrun, {backend}: " + "; ".join(run["problems"])
                 + f"\n{tail(run['log'])}")
        else:
            line(True, f"c. {algorithm} randomwalks TP1 via torchrun, {backend}: 2 steps, exit 0, "
                 f"{run['seconds']:.0f} s wall; step-1 KL {run['kl1']}; step 2 loss {run['losses']['learn/loss']:.4g}; "
                 f"{run['checkpoint']}")
    # ILQL: the offline loop, the vocab-parallel heads' loss, the Q-guided decoding of the evaluations
    # (beta 0, 1, 100) and the heads' export, from scratch on the task's 6-layer GPT
    ilql = rl_run("ilql_tiny", [], 3, args.cpu_rehearsal, args.out, budget, cap=600 if args.cpu_rehearsal else 90,
                  env=env, algorithm="ilql")
    heads = args.out / "run_ilql_tiny" / "hf_export" / "ilql_heads.safetensors"
    if not ilql["problems"] and not heads.exists():
        ilql["problems"].append(f"no {heads.name} beside the export")
    if ilql["problems"]:
        line(False, f"c. ilql randomwalks TP1 via torchrun, {backend}: " + "; ".join(ilql["problems"])
             + f"\n{tail(ilql['log'])}")
    else:
        terms = ", ".join(f"{k.split('/')[1]} {v:.4g}" for k, v in ilql["losses"].items())
        line(True, f"c. ilql randomwalks TP1 via torchrun, {backend}: 3 steps, exit 0, {ilql['seconds']:.0f} s wall; "
             f"step 3: {terms}; Q-guided evaluation at beta 0/1/100 ran; heads exported; {ilql['checkpoint']}")
    return tiny


def check_smol(args, budget: Budget, env: dict, line) -> dict:
    """d. PPO step(s) of a SmolLM2-135M-shaped model, random init, bf16, randomwalks prompts/reward."""
    backend = "gloo" if args.cpu_rehearsal else "nccl"
    smol_overrides = ["model=smollm2_135m", "model.hf_checkpoint=null", "model.params_dtype=bfloat16",
                      "task.pretrain_steps=0", "checkpoint.export_hf=false"]
    smol_steps = args.smol_steps
    if args.cpu_rehearsal:
        # bf16 without native CPU support: a step at the task's geometry (128 rollouts, 4 epochs x
        # 4 minibatches) takes over 10 minutes here; rehearse one step of 32 rollouts, one update.
        smol_overrides += ["algorithm.prompts_per_step=32", "algorithm.epochs=1", "algorithm.minibatches=1"]
        smol_steps = 1
    smol = rl_run("ppo_smollm2_shape", smol_overrides, smol_steps, args.cpu_rehearsal, args.out, budget,
                  cap=900 if args.cpu_rehearsal else 150, env=env)
    if smol["problems"]:
        line(False, f"d. PPO SmolLM2-135M-shaped (30 layers, h576, vocab 49152), random init, bf16, {backend}: "
             + "; ".join(smol["problems"]) + f"\n{tail(smol['log'])}")
    else:
        losses = ", ".join(f"{k.split('/')[1]} {v:.4g}" for k, v in smol["losses"].items())
        line(True, f"d. PPO SmolLM2-135M-shaped (30 layers, h576, vocab 49152), random init, bf16: "
             f"{smol_steps} step(s), exit 0, {smol['seconds']:.0f} s wall; last step: {losses}; "
             f"{smol['checkpoint']}")
    return smol


if __name__ == "__main__":
    sys.exit(main())
