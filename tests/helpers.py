"""Launch multi-process workers under torchrun (gloo) from tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

WORKERS = Path(__file__).parent / "workers"


def torchrun(script: str, nproc: int, args: list[str], timeout: int = 600,
             virtual_gpu: bool = False) -> subprocess.CompletedProcess:
    """Run ``tests/workers/<script>`` on ``nproc`` processes; raise with its output on failure.
    ``virtual_gpu``: under the device-discipline check (see ``cli_env``)."""
    env = cli_env(virtual_gpu)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(WORKERS / script), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-8000:]}")
    return proc


def cli_command(nproc: int, overrides: list[str]) -> list[str]:
    """``python -m autorlhf_nemo <overrides>``, under torchrun when ``nproc > 1``."""
    launcher = [sys.executable] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return [*launcher, "-m", "autorlhf_nemo", *overrides]


def cli_env(virtual_gpu: bool = False) -> dict:
    """The environment of a test job; ``virtual_gpu``: under the device-discipline check
    (tensors that would live on a GPU are tracked, and mixing them with host tensors raises)."""
    # one thread per process by default; AUTORLHF_TEST_JOB_THREADS=2 checks a figure's margin at 2
    threads = os.environ.get("AUTORLHF_TEST_JOB_THREADS", "1")
    env = dict(os.environ, OMP_NUM_THREADS=threads, PYTHONWARNINGS="ignore", TORCH_CPP_LOG_LEVEL="ERROR")
    if virtual_gpu:
        env["AUTORLHF_VIRTUAL_GPU"] = "1"
    return env


def cli(nproc: int, overrides: list[str], timeout: int = 900, virtual_gpu: bool = False) -> subprocess.CompletedProcess:
    """Run the command-line job; raise with its output on failure."""
    cmd = cli_command(nproc, overrides)
    proc = subprocess.run(cmd, env=cli_env(virtual_gpu), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-8000:]}")
    return proc


def children(pid: int) -> dict[int, bytes]:
    """{pid: environment} of the processes whose parent is ``pid``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found[int(entry.name)] = environ
    return found


def kill_after(nproc: int, overrides: list[str], marker: Path, timeout: int = 600) -> None:
    """Start the command-line job and SIGKILL it, with torchrun's workers (each in a session of
    its own), as soon as ``marker`` exists (e.g. a checkpoint's manifest), or once the job has
    ended or ``timeout`` passed."""
    proc = subprocess.Popen(cli_command(nproc, overrides), env=cli_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    workers = children(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in workers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
