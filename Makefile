# The two commands of the README: `make reproduce` and `make test`.
# Each bootstraps .venv on a fresh machine: a CPU build of torch when no GPU is present
# (never a multi-GB CUDA download on a CPU machine), then the package and its extras.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PROFILE ?= quick
# torch==2.13.0 is the CPU wheel on a machine without a GPU; on a GPU machine pip's default
# wheel for this version brings CUDA.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.pdeinf-installed

.PHONY: reproduce test venv clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@if $(BIN)/python -c "import torch" 2>/dev/null; then \
	  echo "torch already installed: $$($(BIN)/python -c 'import torch; print(torch.__version__)')"; \
	else \
	  if command -v nvidia-smi >/dev/null 2>&1; then echo "GPU found: installing $(TORCH_SPEC) (CUDA)"; \
	  else echo "no GPU: installing the CPU build $(TORCH_SPEC)"; fi; \
	  $(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"; \
	fi
	$(BIN)/python -m pip install --quiet -e ".[test,peers,bench,dev]" "$(TORCH_SPEC)"
	# nngeometry declares torchvision, whose PyPI wheel pulls a CUDA torch; it needs neither.
	$(BIN)/python -m pip install --quiet --no-deps "nngeometry==0.4"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)

reproduce: $(STAMP)
	$(BIN)/pdeinf reproduce --profile $(PROFILE)

test: $(STAMP)
	MPLBACKEND=Agg $(BIN)/python -m pytest -q

clean-venv:
	rm -rf $(VENV)
