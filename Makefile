# Two commands from a fresh clone: `make run` (train the seed's bandit) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
OUT    ?= runs/bandit

.PHONY: run test test-slow lint docs bench wheels gpu-bench clean

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
	$(BIN)/python -m pytest -n auto -m "not slow"

# The learning and multi-process tests marked slow (tests/: @pytest.mark.slow).
test-slow: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -n auto -m slow

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

# The documentation site (docs/README.md): warnings are errors.
$(VENV)/.installed-docs: pyproject.toml | $(VENV)/.installed-dev
	$(BIN)/python -m pip install -q -e '.[docs]'
	touch $@

docs: $(VENV)/.installed-docs
	$(BIN)/sphinx-build -W --keep-going -b html docs docs/_build/html

# Benchmarks write JSON under benchmarks/results/. The PyTorch comparison needs
# the torch extra ($(BIN)/python -m pip install -e '.[torch]'), the VAE example
# the examples extra.
bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/run_all.py
	$(BIN)/python benchmarks/baselines.py
	$(BIN)/python benchmarks/algorithms.py

# Wheels for an accelerator machine without network (benchmarks/gpu.sh installs them with
# pip --no-index): distrax and what a CUDA JAX image lacks of its dependencies, for
# WHEEL_PYTHON (the device machine's Python). Into .whl/ (gitignored; carry it).
WHEEL_PYTHON ?= 3.12
WHEELS := distrax==0.1.9 tfp-nightly==0.26.0.dev20261027 dm-tree==0.1.10 gast==0.7.0 \
          decorator==5.3.1
wheels:
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version $(WHEEL_PYTHON) \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
	  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  --platform manylinux1_x86_64 -d .whl $(WHEELS)

# Every benchmark at accelerator sizes (under 8 minutes on an H100/H200).
gpu-bench:
	bash benchmarks/gpu.sh

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
