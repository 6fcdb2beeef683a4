"""Benchmarks (`make bench`): throughput against llama-cpp-python, memory, and start-up."""
