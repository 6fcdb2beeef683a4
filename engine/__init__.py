"""Synchronous inference on llama-cpp-python's low-level API: no HTTP, no trio.

Everything here blocks; the service calls it from one worker thread per model.

llama.cpp's CPU backend runs each graph in an OpenMP team per calling thread, and the team spins
after each graph (libgomp's default). A model's decode context and its embedding context are driven
from different worker threads, so while one computes the other's idle team spins on the same
cores. Measured on 2 vCPUs (bench.embed_gap, reference model): with `OMP_WAIT_POLICY=PASSIVE` an
embedding beside a stream took 17 s and the stream's longest gap was 8x its usual one, against
51 s and 51x with the default; but passive waiting costs one stream about 15 % of its decode speed
(57 against 67 tok/s). The default stays libgomp's (speed for chat, the common case); an operator
who runs large embeddings beside chats sets OMP_WAIT_POLICY=PASSIVE in the service's environment.
"""
