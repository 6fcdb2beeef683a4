# Two commands do all the set-up on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Extras installed with the project; the Docker build asks for `binary` only (no test tools, no
# reference model), still through this rule so llama.cpp gets the CMAKE_ARGS below.
EXTRAS ?= dev,reference

# llama.cpp is built from source for a portable x86-64-v3 baseline (AVX2/FMA/F16C), never
# -march=native, so the same build serves the tests, the benchmarks and the shipped binary.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_BMI2=ON -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_TOOLS=OFF
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc)

.PHONY: install serve test test-peers bench soak binary binary-onedir lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip wheel

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

serve: install
	$(BIN)/llm-appliance serve

test: install test-peers
	$(BIN)/python -m pytest

# Test peers that pip cannot bring: nginx for the reverse-proxy recipe (tests/test_nginx.py) and
# systemd-analyze for the unit checks (tests/test_systemd.py). Installed from Debian only when
# missing and when we may; otherwise those tests skip, saying why.
test-peers:
	@missing=""; \
	  command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || missing="$$missing nginx-light"; \
	  command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	  if [ -n "$$missing" ]; then \
	    { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	      apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends $$missing >/dev/null; } || \
	    echo "could not install$$missing: the tests that need them will be skipped"; \
	  fi

bench: install
	$(BIN)/python -m bench

# Every kind of client at once against the real server (reference model) for SOAK_SECONDS, then a
# quiet check: 5xx answers, slots still busy, stray tokens, RSS growth, p99 token gap.
SOAK_SECONDS ?= 600
soak: install
	$(BIN)/python tests/soak.py --duration $(SOAK_SECONDS)

binary: install
	$(BIN)/python -m pip install --quiet -e ".[binary]"
	$(BIN)/python -m PyInstaller --noconfirm --clean packaging/llm-appliance.spec

# The same bundle unpacked in dist/llm-appliance-onedir/, for hosts whose /tmp is noexec.
binary-onedir: install
	$(BIN)/python -m pip install --quiet -e ".[binary]"
	$(BIN)/python -m PyInstaller --noconfirm --clean packaging/llm-appliance.spec -- --onedir

lint: install
	$(BIN)/python -m ruff check appliance engine tests bench
	$(BIN)/lint-imports

clean:
	rm -rf build dist $(VENV)
