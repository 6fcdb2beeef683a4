"""Synchronous inference on llama-cpp-python's low-level API: no HTTP, no trio.

Everything here blocks; the service calls it from one worker thread per model.
"""
