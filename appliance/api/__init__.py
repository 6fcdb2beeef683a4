"""HTTP routes: Ollama's native API and the OpenAI-compatible API."""
