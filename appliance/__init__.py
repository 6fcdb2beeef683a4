"""llm-appliance: a local LLM server that speaks Ollama's HTTP API, on llama.cpp and trio."""

__version__ = "0.1.0"

#: The Ollama release whose API this server matches (reference/ollama-api.md); `/api/version`
#: reports it so clients that gate features on the version treat us as that Ollama.
OLLAMA_COMPAT_VERSION = "0.33.0"
