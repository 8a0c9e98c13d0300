# glrp: the two commands of the Quick start are `make reproduce` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is pinned to the CPU wheel 2.13.0: an unpinned torch pulls a multi-GB CUDA build.
# Elsewhere, pass PIP_EXTRA (e.g. an --index-url of PyTorch's CPU wheels) or TORCH=torch==X.
TORCH     ?= torch==2.13.0
PIP_EXTRA ?=
# Where the main job writes: experiments, shared work (phantom, cache, pretrained encoders), results.csv, RESULTS.md.
RUN    ?= runs/smoke
# experiments at once (one thread each on a CPU): at the smoke size a second thread speeds a step up by 0.9-1.4x, a
# second experiment by ~1.7x (bench/train.py --f 8 --size 64; smoke 371 s with 1 job, 214 s with 2, 2 idle cores)
JOBS   ?= 2

.PHONY: venv reproduce test readme docs export clean-nbs help

help:
	@echo "make reproduce   # set up .venv, run the main job on the synthetic phantom"
	@echo "make test        # set up .venv, check notebooks/package/README are in sync, run pytest"
	@echo "make docs        # install the [docs] extra, build the documentation site into _docs/ (notebooks not run)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# [dev] includes [repro] (papermill, kernel, matplotlib: what `make reproduce` needs) and the test tools.
$(VENV)/.installed: $(BIN)/python settings.ini setup.py
	$(BIN)/python -m pip install -q $(PIP_EXTRA) "$(TORCH)"
	$(BIN)/python -m pip install -q $(PIP_EXTRA) -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

# The smoke profile: phantom, six methods with and without CRF, the ablation, the figures; $(RUN)/RESULTS.md.
# Real data: $(BIN)/glrp reproduce --profile cpu --data PATH/TO/ACDC   (the folder holding training/; see README)
reproduce: venv
	$(BIN)/glrp reproduce --profile smoke --jobs $(JOBS) --out $(RUN)
	@echo "== $(RUN)/RESULTS.md =="
	@sed -n '/^## Main table/,/^## Ablation/p' $(RUN)/RESULTS.md

test: venv
	@echo "== notebooks are clean (nbdev_clean) =="
	$(BIN)/nbdev_clean
	$(BIN)/nbdev_clean --fname glrp/repro
	git diff --exit-code --stat -- nbs glrp/repro || { echo "Notebooks are not clean: run nbdev_clean and commit."; exit 1; }
	@echo "== glrp/ equals a fresh nbdev_export =="
	$(BIN)/nbdev_export
	git diff --exit-code --stat -- glrp || { echo "glrp/ differs from nbdev_export of nbs/: edit the notebooks, not glrp/*.py."; exit 1; }
	test -z "$$(git status --porcelain --untracked-files=all -- glrp)" || { git status --short -- glrp; echo "nbdev_export wrote files that are not committed."; exit 1; }
	@echo "== README.md equals nbs/index.ipynb =="
	$(MAKE) --no-print-directory readme
	git diff --exit-code --stat -- README.md || { echo "README.md is out of date: run make readme and commit."; exit 1; }
	@echo "== pytest =="
	$(BIN)/python -m pytest tests -ra

# README.md is generated from nbs/index.ipynb (Quarto, which nbdev_readme needs, is not installable offline).
readme: venv
	$(BIN)/jupyter nbconvert --log-level=WARN --to markdown nbs/index.ipynb --output-dir . --output README

# The documentation site, built into _docs/ from the saved outputs of nbs/*.ipynb (not executed): Sphinx with myst-nb,
# configured in docs/conf.py, sources staged by docs/build.py in _proc/docs/. Open _docs/index.html; tests/test_docs.py checks it.
$(VENV)/.docs-installed: $(VENV)/.installed settings.ini setup.py
	$(BIN)/python -m pip install -q $(PIP_EXTRA) -e ".[dev,docs]"
	touch $@

docs: $(VENV)/.docs-installed
	OMP_NUM_THREADS=1 $(BIN)/python docs/build.py
	@echo "== the site: _docs/index.html =="
