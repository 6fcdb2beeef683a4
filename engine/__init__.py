"""Synchronous inference on llama-cpp-python's low-level API: no HTTP, no trio.

Everything here blocks; the service calls it from one worker thread per model.
"""

import os

# llama.cpp's CPU backend runs each graph in an OpenMP team per calling thread, and by default the
# team spins after each graph. A model's decode context and its embedding context are driven from
# different worker threads, so while one computes the other's idle team spins on the same cores:
# measured with bench.embed_gap on 2 vCPUs, an embedding beside a stream took 149 s spinning and
# 35 s with passive waiting. It costs one stream alone about 15 % of its decode speed (57 against
# 67 tok/s, measured here A/B): no client may stall another, so passive is the default; an operator
# who serves one chat at a time may set OMP_WAIT_POLICY=ACTIVE. Set before llama.cpp (libgomp)
# loads; an operator's value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
