"""The command-line client of the HTTP API (run, pull, list, ...)."""
