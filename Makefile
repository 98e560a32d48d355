# Two commands set everything up on a fresh machine:
#   make demo   install into .venv, generate 16 samples on the free defaults, write the preview
#   make test   install into .venv with test extras, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_OUT ?= runs/demo

.PHONY: demo test install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned: it is a CPU wheel available locally; an unpinned torch would pull a CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q torch==2.13.0
	$(BIN)/pip install --disable-pip-version-check -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	rm -rf $(DEMO_OUT)
	$(BIN)/dhpc generate --mode D --poses builtin -n 16 --seed 0 --out $(DEMO_OUT)
	$(BIN)/dhpc inspect $(DEMO_OUT)
	@echo "dataset: $(DEMO_OUT)   preview: $(DEMO_OUT)/preview.png"

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
