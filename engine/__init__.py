"""Synchronous inference on llama-cpp-python's low-level API: no HTTP, no trio.

Everything here blocks; the service calls it from one compute thread per model.
"""

import os

# llama.cpp's CPU backend runs each graph in an OpenMP team of the calling thread, with a barrier
# after every op. Passive waiting (OMP_WAIT_POLICY=PASSIVE) sleeps and wakes on a futex at each
# barrier: ~570 sleeps per token on the reference model, and one stream ~20 % slower than spinning
# on a quiet machine (bench.wait_policy on 2 vCPUs: 63 against 77 tok/s in-process, 58 against 72
# over HTTP). Spinning long (libgomp's default, ~300,000 spins; ACTIVE) is ruinous as soon as the
# cores are shared: on the same machine under other load, 3-6 against 15 tok/s, because a spinning
# worker holds the core its partner needs. A short spin (GOMP_SPINCOUNT=1000, tens of µs) keeps
# the barriers inside a graph spinning and lets the team sleep between graphs: the quiet figure of
# full spinning (77) and the least loss under load. Every compute of one model runs on one thread
# (appliance/serving/compute_thread.py), one team, so an embedding beside a stream no longer
# starves it when teams spin (it did with teams per worker thread: 149 s against 35 s). Set before
# llama.cpp (libgomp) loads; an operator's OMP_WAIT_POLICY or GOMP_SPINCOUNT wins over this.
_OMP_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")

#: The OpenMP variables this package set in the environment (none where an operator set one); a
#: benchmark leaves them out of a peer's environment, which keeps its own defaults.
OMP_DEFAULTS: dict[str, str] = {}
if not any(name in os.environ for name in _OMP_VARS):
    OMP_DEFAULTS["GOMP_SPINCOUNT"] = "1000"
    os.environ.update(OMP_DEFAULTS)
