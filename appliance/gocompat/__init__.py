"""Go-compatible formats (durations, times, JSON type names); imports nothing of ours."""
