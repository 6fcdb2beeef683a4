"""Settings: the one place that parses them, and the platform rules behind each default."""
