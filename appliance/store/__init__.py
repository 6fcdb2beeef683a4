"""The model store, byte-compatible with Ollama's manifests/ + blobs/ layout."""
