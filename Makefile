# Two commands do all the set-up on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Extras installed with the project; the Docker build asks for `binary` only (no test tools, no
# reference model), still through this rule so llama.cpp gets the CMAKE_ARGS below.
EXTRAS ?= dev,reference

# llama.cpp is built from source, never -march=native: GGML_BACKEND_DL with GGML_CPU_ALL_VARIANTS
# builds the CPU code once per x86-64 level (x64 baseline, sse42, sandybridge, haswell, skylakex,
# icelake, sapphirerapids, zen4, ...) as loadable libraries, and engine/cpu_backend.py loads the best
# one this CPU really runs. The same build serves the tests, the benchmarks and the shipped binary.
LLAMA_CPP_PYTHON_VERSION := 0.3.36
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON \
	-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF
# pip's wheel cache keys a built wheel by the sdist alone, not by CMAKE_ARGS: a machine that built
# llama-cpp-python once with other flags would silently reinstall that build. So the wheel is built
# without pip's cache into a folder keyed by (version, CMAKE_ARGS), shared by the clones on a machine.
WHEEL_KEY := $(shell printf '%s\n%s\n' '$(LLAMA_CPP_PYTHON_VERSION)' '$(CMAKE_ARGS)' | sha256sum | cut -c1-16)
WHEEL_DIR ?= $(HOME)/.cache/llm-appliance/wheels/$(WHEEL_KEY)
LLAMA_WHEEL := $(WHEEL_DIR)/.built
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc)

.PHONY: install serve test test-peers bench soak binary binary-onedir lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip wheel

$(LLAMA_WHEEL): | $(BIN)/python
	rm -rf $(WHEEL_DIR).tmp
	$(BIN)/python -m pip wheel --quiet --no-cache-dir --no-deps --no-binary llama-cpp-python \
	  -w $(WHEEL_DIR).tmp llama-cpp-python==$(LLAMA_CPP_PYTHON_VERSION)
	rm -rf $(WHEEL_DIR) && mv $(WHEEL_DIR).tmp $(WHEEL_DIR) && touch $(LLAMA_WHEEL)

# The wheel from the keyed folder first (--force-reinstall replaces a build with other flags), then
# the project, whose llama-cpp-python pin that wheel already satisfies.
$(STAMP): pyproject.toml $(LLAMA_WHEEL) | $(BIN)/python
	$(BIN)/python -m pip install --quiet --no-deps --force-reinstall \
	  $(WHEEL_DIR)/llama_cpp_python-$(LLAMA_CPP_PYTHON_VERSION)-*.whl
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

serve: install
	$(BIN)/llm-appliance serve

test: install test-peers
	$(BIN)/python -m pytest

# Test peers that pip cannot bring: nginx for the reverse-proxy recipe (tests/test_nginx.py),
# systemd-analyze for the unit checks (tests/test_systemd.py), qemu-x86_64 to run the binary on an
# emulated CPU without AVX and objdump to read the baseline CPU code (tests/test_binary_qemu.py,
# tests/test_cpu_backend.py). Installed from Debian only when missing and when we may; otherwise
# those tests skip, saying why.
test-peers:
	@missing=""; \
	  command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || missing="$$missing nginx-light"; \
	  command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	  command -v qemu-x86_64 >/dev/null 2>&1 || missing="$$missing qemu-user"; \
	  command -v objdump >/dev/null 2>&1 || missing="$$missing binutils"; \
	  if [ -n "$$missing" ]; then \
	    { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	      apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends $$missing >/dev/null; } || \
	    echo "could not install$$missing: the tests that need them will be skipped"; \
	  fi

# Builds llama-server once (bench/peer.py: from llama-cpp-python's sdist, cached by version and
# flags) and runs both side by side. BENCH_ARGS="--streams 1 4 --repeats 3 --skip-memory" etc.
bench: install
	$(BIN)/python -m bench $(BENCH_ARGS)

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
