# mimkit developer entry points. Each target creates .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Installed first and alone, so that no later requirement pulls another torch build.
TORCH_PACKAGES ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: install quickstart quickstart-methods quickstart-video test lint format clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PACKAGES)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# `--ckpt_path last` makes a re-run continue (or, when finished, just report) the same run.
quickstart: $(VENV)/.installed
	$(VENV)/bin/mimkit pretrain fit --config recipes/quickstart/mae_digits.yaml --ckpt_path last
	$(PY) -m mimkit.finetune.quickstart_report --ckpt runs/quickstart/mae_digits/checkpoints/last.ckpt

# MAE, CAE and CMAE quickstarts, then one table with a row per method (CAE and CMAE take
# about twice and three times MAE's time; a finished run is not trained again).
quickstart-methods: $(VENV)/.installed
	for method in mae cae cmae; do \
		$(VENV)/bin/mimkit pretrain fit --config recipes/quickstart/$${method}_digits.yaml --ckpt_path last || exit 1; \
	done
	$(PY) -m mimkit.finetune.quickstart_report --ckpt $(foreach m,mae cae cmae,runs/quickstart/$(m)_digits/checkpoints/last.ckpt)

# VideoMAE on moving digits, then the same report on held-out moving-digit clips.
quickstart-video: $(VENV)/.installed
	$(VENV)/bin/mimkit pretrain fit --config recipes/quickstart/videomae_moving_digits.yaml --ckpt_path last
	$(PY) -m mimkit.finetune.quickstart_report --ckpt runs/quickstart/videomae_moving_digits/checkpoints/last.ckpt

test: $(VENV)/.installed
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) runs lightning_logs .pytest_cache
