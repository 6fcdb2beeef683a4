"""Synchronous inference on llama-cpp-python's low-level API: no HTTP, no trio.

Everything here blocks; the service calls it from one compute thread per model.
"""

import os

# llama.cpp's CPU backend runs each graph in an OpenMP team of the calling thread, with a barrier
# after every op. Passive waiting (OMP_WAIT_POLICY=PASSIVE, the default before) sleeps and wakes on
# a futex at each barrier, ~570 times a token on the reference model: one stream ~20 % slower than
# spinning on a quiet machine (bench.wait_policy, 2 vCPUs: 63 against 77 tok/s in-process, 58
# against 72 over HTTP). Spinning long (libgomp's default, ~300,000 spins, or ACTIVE) collapses
# as soon as the cores are shared: under other load 3-6 against 15 tok/s, a spinning worker
# holding the core its partner needs. A short spin (GOMP_SPINCOUNT=1000, tens of µs) keeps the
# barriers inside a graph spinning and lets the team sleep between graphs: 77 quiet, and the least
# loss under load (12 against 15). Every compute of one model runs on one thread
# (appliance/serving/compute_thread.py), one team, so an embedding beside a stream no longer
# starves it when teams spin (longest token gap 78x the usual with a team per worker thread, 8x
# now). Set before llama.cpp (libgomp) loads; an operator's OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
#: The OpenMP wait settings an operator may set (and the bench reports for both sides).
OMP_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")

#: The OpenMP variables this package set in the environment (none where an operator set one); a
#: benchmark leaves them out of a peer's environment, which keeps its own defaults.
OMP_DEFAULTS: dict[str, str] = {}
if not any(name in os.environ for name in OMP_VARS):
    OMP_DEFAULTS["GOMP_SPINCOUNT"] = "1000"
    os.environ.update(OMP_DEFAULTS)
