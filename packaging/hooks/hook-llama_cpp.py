"""PyInstaller hook for llama-cpp-python.

llama_cpp loads libllama.so with ctypes from a path it computes (`Path(__file__).parent / "lib"`),
which PyInstaller's analysis cannot see (field.md §4: "Shared library with base name 'llama' not
found"). Collect every shared library under llama_cpp/lib so they land at the same relative place
in the bundle, where libllama's $ORIGIN rpath finds the libggml* beside it.

Built with GGML_BACKEND_DL, llama.cpp's CPU code is one library per x86-64 level
(libggml-cpu-x64.so ... libggml-cpu-sapphirerapids.so), which pip installs in site-packages/bin/
and nothing links against: ship every one beside libllama, where engine/cpu_backend.py looks first
and chooses the best this CPU runs.
"""

from pathlib import Path

from PyInstaller.utils.hooks import collect_dynamic_libs, get_package_paths

binaries = collect_dynamic_libs("llama_cpp")
_site_packages = Path(get_package_paths("llama_cpp")[0])
binaries += [
    (str(path), "llama_cpp/lib") for path in sorted(_site_packages.glob("bin/libggml-cpu-*.so"))
]
hiddenimports = ["llama_cpp.llama_cpp", "llama_cpp._ctypes_extensions"]
# The OpenAI-compatible server shipped inside llama_cpp is not ours and pulls in FastAPI.
excludedimports = ["llama_cpp.server"]
