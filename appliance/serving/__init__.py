"""Admission, loaded models and their slots, generation: from a typed request to engine chunks."""
