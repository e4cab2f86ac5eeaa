# Two commands from a fresh clone: `make run` (train the seed's bandit) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= runs/bandit

.PHONY: run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/reinforce-jax train bandit --out $(OUT)
	@echo "Done: learning curve $(OUT)/learning_curve.png, learned policy $(OUT)/policy.png, metrics $(OUT)/metrics.jsonl, parameters $(OUT)/params.msgpack"

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -n auto

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

# Benchmarks write JSON under benchmarks/results/. The PyTorch comparison needs
# the torch extra ($(BIN)/python -m pip install -e '.[torch]'), the VAE example
# the examples extra.
bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/run_all.py
	$(BIN)/python benchmarks/baselines.py
	$(BIN)/python benchmarks/algorithms.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
