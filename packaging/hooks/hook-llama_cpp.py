"""PyInstaller hook for llama-cpp-python.

llama_cpp loads libllama.so with ctypes from a path it computes (`Path(__file__).parent / "lib"`),
which PyInstaller's analysis cannot see (field.md §4: "Shared library with base name 'llama' not
found"). Collect every shared library under llama_cpp/lib so they land at the same relative place
in the bundle, where libllama's $ORIGIN rpath finds the libggml* beside it.
"""

from PyInstaller.utils.hooks import collect_dynamic_libs

binaries = collect_dynamic_libs("llama_cpp")
hiddenimports = ["llama_cpp.llama_cpp", "llama_cpp._ctypes_extensions"]
# The OpenAI-compatible server shipped inside llama_cpp is not ours and pulls in FastAPI.
excludedimports = ["llama_cpp.server"]
