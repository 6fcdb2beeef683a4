"""Route llama.cpp's own log into Python `logging` and initialise the backend once.

llama.cpp writes to stderr unless a callback is installed, and `Llama(verbose=False)` silences the
whole process while it loads (llama-cpp-python#1874). One ctypes callback forwarding to the
"llama.cpp" logger keeps the output, filtered by the service's log level. The callback runs on
llama.cpp's threads: it only calls `logging`, never trio.
"""

from __future__ import annotations

import ctypes
import functools
import logging

import llama_cpp

LOGGER_NAME = "llama.cpp"

# enum ggml_log_level in the bundled ggml: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5
# (continues the previous message). llama_cpp/_logger.py still has the older numbering.
GGML_TO_LOGGING = {
    0: logging.INFO,
    1: logging.DEBUG,
    2: logging.INFO,
    3: logging.WARNING,
    4: logging.ERROR,
    5: logging.DEBUG,
}


def _make_callback(logger: logging.Logger) -> object:
    @llama_cpp.llama_log_callback
    def forward(level: int, text: bytes | None, _user_data: ctypes.c_void_p) -> None:
        py_level = GGML_TO_LOGGING.get(level, logging.DEBUG)
        if not text or not logger.isEnabledFor(py_level):
            return
        message = text.decode("utf-8", errors="replace").rstrip("\n")
        # llama.cpp prints progress dots and blank separators as their own messages.
        if message.strip(" ."):
            logger.log(py_level, "%s", message)

    return forward


@functools.cache
def init_llama() -> object:
    """Install the log callback and call `llama_backend_init()`, once per process.

    Returns the ctypes callback; the cache keeps it referenced for the process lifetime (llama.cpp
    holds a raw pointer to it, so it must never be garbage collected).
    """
    callback = _make_callback(logging.getLogger(LOGGER_NAME))
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    return callback
