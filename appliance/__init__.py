"""llm-appliance: a local LLM server that speaks Ollama's HTTP API, on llama.cpp and trio."""

__version__ = "0.1.0"
