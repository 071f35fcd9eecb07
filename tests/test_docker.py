"""docker/Dockerfile and .dockerignore, checked without a Docker engine (none runs here):
instruction syntax, the NVIDIA base, the install line against setup.py, the build
context, and that the package it installs carries the configs and the Slurm template."""

from __future__ import annotations

import ast
import fnmatch
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
                "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line: comments dropped, backslash continuations joined."""
    logical, current = [], ""
    for line in (ROOT / "docker" / "Dockerfile").read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        logical.append(current)
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return [(line.split(None, 1)[0], line.split(None, 1)[1] if " " in line.strip() else "") for line in logical]


def setup_literal(name: str):
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise KeyError(name)


def test_dockerfile_syntax_and_nvidia_base():
    instructions = dockerfile_instructions()
    for keyword, args in instructions:
        assert keyword in INSTRUCTIONS, f"unknown instruction {keyword}"
        assert args, f"{keyword} without arguments"
    first = next(i for i, (k, _) in enumerate(instructions) if k != "ARG")
    assert instructions[first][0] == "FROM"
    args = dict(a.split("=", 1) for k, a in instructions[:first] if k == "ARG")
    base = instructions[first][1].replace("${BASE_IMAGE}", args.get("BASE_IMAGE", ""))
    assert re.fullmatch(r"nvcr\.io/nvidia/(pytorch|nemo):\d\d\.\d\d(-py3)?", base), base
    cmd = [a for k, a in instructions if k == "CMD"][-1]
    assert cmd.startswith("[") and ast.literal_eval(cmd)[:3] == ["python", "-m", "autorlhf_nemo"]


def test_install_line_matches_setup_py():
    runs = " && ".join(a for k, a in dockerfile_instructions() if k == "RUN")
    match = re.search(r'pip install [^&]*"(/opt/autorlhf_nemo)\[([\w,]+)\]"', runs)
    assert match, runs
    copies = [a.split() for k, a in dockerfile_instructions() if k == "COPY"]
    assert [".", match.group(1)] in copies                      # the package source is what gets installed
    extras = setup_literal("EXTRAS_REQUIRE")
    for extra in match.group(2).split(","):
        assert extra in extras, f"Dockerfile installs extra [{extra}], setup.py has {sorted(extras)}"
    assert any(req.startswith("transformer-engine") for req in extras["gpu"])


def test_build_context_excludes_local_state():
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    for excluded in [".git", ".venv", "runs", "autorlhf_nemo/__pycache__", "autorlhf_nemo.egg-info"]:
        assert any(fnmatch.fnmatch(excluded, p) or fnmatch.fnmatch(excluded, p.replace("**/", "*/"))
                   for p in patterns), excluded
    for needed in ["setup.py", "autorlhf_nemo/__init__.py", "conf/config.yaml", "launch/slurm.sbatch"]:
        assert not any(fnmatch.fnmatch(needed, p) for p in patterns), needed


def test_the_installed_package_carries_configs_and_slurm_template(tmp_path):
    """What `pip install /opt/autorlhf_nemo[gpu]` puts in the image: build the wheel and look inside."""
    env = dict(os.environ, PIP_CONSTRAINT=str(ROOT / "constraints.txt"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT),
                    "-w", str(tmp_path)], check=True, env=env, capture_output=True)
    (wheel,) = tmp_path.glob("autorlhf_nemo-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in ["autorlhf_nemo/conf/config.yaml", "autorlhf_nemo/conf/recipe/llama3_70b_ppo.yaml",
                 "autorlhf_nemo/conf/recipe/llama3_8b_ppo.yaml", "autorlhf_nemo/conf/hydra/launcher/slurm.yaml",
                 "autorlhf_nemo/launch/slurm.sbatch", "autorlhf_nemo/plan/__main__.py", "autorlhf_nemo/slurm.py"]:
        assert path in names, path
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "Provides-Extra: gpu" in metadata
    assert "Requires-Dist: hydra-submitit-launcher" in metadata
