"""Go-compatible parsing and formatting (durations, times); imports nothing of ours."""
