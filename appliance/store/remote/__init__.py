"""Registries: the protocol, downloads, Hugging Face, pull and push."""
