# Two commands for a fresh machine with Python 3.11 and make:
#   make demo   - split a small CNN, serve its cloud half, run the edge half, kill and restart the worker
#   make test   - the test suite
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
# torch is pinned and installed first: an unpinned torch pulls a multi-GB CUDA build.
TORCH  := torch==2.13.0

.PHONY: demo test stubs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev,torch,plot,tflite]' $(TORCH)
	touch $@ $(VENV)/.demo-installed

demo: $(VENV)/.demo-installed
	$(BIN)/splitpoint demo

test: $(VENV)/.test-installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Regenerate the committed gRPC stubs from proto/ (tests/test_stubs.py checks they are fresh).
stubs: $(VENV)/.test-installed
	$(BIN)/python -m splitpoint._proto.generate

clean:
	rm -rf $(VENV) build *.egg-info
