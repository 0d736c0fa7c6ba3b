# The two commands of the README: `make reproduce` and `make test`.
# Each bootstraps $(VENV) on a fresh machine: a CPU build of torch when no GPU is present
# (never a multi-GB CUDA download on a CPU machine), then the package and its extras.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PROFILE ?= faithful
TORCH_VERSION ?= 2.13.0
# PyTorch's CPU wheel index. On Linux, PyPI's torch wheel is the CUDA build (several GB);
# this index holds the CPU build (about 200 MB). Tried once with a short timeout and no
# retries; where it cannot be reached (offline mirror, firewall) pip's own configured
# sources are used instead, within seconds.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_CPU_TIMEOUT ?= 5
# The GPU probe (a machine without it gets the CPU build).
NVIDIA_SMI ?= nvidia-smi
STAMP  := $(VENV)/.pdeinf-installed

.PHONY: reproduce test check-notebooks venv clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@if $(BIN)/python -c "import torch" 2>/dev/null; then \
	  echo "torch already installed: $$($(BIN)/python -c 'import torch; print(torch.__version__)')"; \
	elif command -v $(NVIDIA_SMI) >/dev/null 2>&1 || [ "$$(uname -s)" != Linux ]; then \
	  echo "GPU found (or not Linux): installing torch==$(TORCH_VERSION) from pip's default sources"; \
	  $(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"; \
	else \
	  echo "no GPU: installing the CPU build of torch==$(TORCH_VERSION) from $(TORCH_CPU_INDEX)"; \
	  $(BIN)/python -m pip install --quiet --timeout $(TORCH_CPU_TIMEOUT) --retries 0 \
	    --index-url "$(TORCH_CPU_INDEX)" "torch==$(TORCH_VERSION)" \
	  || { echo "$(TORCH_CPU_INDEX) not reachable: installing torch==$(TORCH_VERSION) from pip's configured sources"; \
	       $(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"; }; \
	fi
	# Pin the torch just installed (e.g. 2.13.0+cpu) so that no extra brings another build.
	$(BIN)/python -m pip install --quiet -e ".[test,peers,bench,dev]" \
	  "torch==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("torch"))')"
	# nngeometry declares torchvision, whose PyPI wheel pulls a CUDA torch; it needs neither.
	# the_well (its reader opens our Well files in the peers tests) pins fsspec==2024.10.0;
	# its reader needs only h5py, numpy, torch, pyyaml, fsspec (all here) and einops.
	$(BIN)/python -m pip install --quiet --no-deps "nngeometry==0.4" "the_well==1.2.0" "einops==0.8.2"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)

reproduce: $(STAMP)
	$(BIN)/pdeinf reproduce --profile $(PROFILE)

test: $(STAMP)
	MPLBACKEND=Agg $(BIN)/python -m pytest -q

# After `make reproduce`: rerun every notebook as stored and compare its outputs with the
# stored ones (nbval; paths and addresses sanitized by notebooks/nbval_sanitize.cfg).
# the rerun notebooks write their figures into a scratch folder, never over the committed ones
check-notebooks: $(STAMP)
	scratch=$$(mktemp -d) && PDEINF_FIGURE_DIR=$$scratch PDEINF_PROFILE=$(PROFILE) MPLBACKEND=Agg \
	  $(BIN)/python -m pytest -q -p no:cacheprovider -o addopts= --nbval --nbval-current-env \
	  --nbval-sanitize-with notebooks/nbval_sanitize.cfg notebooks/; \
	  status=$$?; rm -rf $$scratch; exit $$status

clean-venv:
	rm -rf $(VENV)
