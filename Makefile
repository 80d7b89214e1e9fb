# Two commands on a fresh Debian 12 machine, as root:
#   make demo   set everything up, then trace the bundled CUDA workload live
#   make test   set everything up, then run the whole test suite (real eBPF)
VENV ?= .venv
PY := $(VENV)/bin/python
# the PyTorch test fixture: a venv outside the checkout, built once per machine (tests/helpers.py reads it)
TORCH_VERSION ?= 2.14.1
export TORCH_FIXTURE ?= /var/cache/ingero-fixtures/torch-$(TORCH_VERSION)-py3.11
export TORCH_VERSION

.PHONY: setup demo test bench lint catalogue catalogue-extra clean torch-fixture demo-recording

setup:
	VENV=$(VENV) scripts/setup.sh

torch-fixture:
	scripts/setup.sh torch

demo: setup
	$(VENV)/bin/ingero demo

# regenerate examples/demo-trace.db (live, as root) with no path of this machine in it
demo-recording: setup
	$(PY) scripts/record_demo.py

test:
	VENV=$(VENV) scripts/setup.sh test
	$(PY) -m ruff check ingero tests bench scripts
	$(PY) -m pytest -q

bench:
	VENV=$(VENV) scripts/setup.sh bench
	$(PY) bench/run_all.py

# regenerate the signature catalogue's runtime + driver part from the runtime wheels' headers
catalogue: setup
	$(PY) scripts/gen_catalogue.py runtime

# cuBLAS/cuBLASLt/NCCL/cuDNN part: downloads ~1.5 GB of wheels into a temp dir, parses, records hashes
catalogue-extra: setup
	$(PY) scripts/gen_catalogue.py extra

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
