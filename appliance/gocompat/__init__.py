"""Go-compatible parsing and formatting (durations, times, integers, names of JSON values,
human numbers, URL credentials hidden); imports nothing of ours but the shared errors."""
