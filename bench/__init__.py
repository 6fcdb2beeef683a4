"""Benchmarks (`make bench`): throughput against llama.cpp through llama-cpp-python, and start-up."""
