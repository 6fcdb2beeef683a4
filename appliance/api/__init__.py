"""HTTP: the routes (Ollama, OpenAI, Responses, Anthropic), middleware, bodies, the error map."""
