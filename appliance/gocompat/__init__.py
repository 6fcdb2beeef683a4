"""Go-compatible parsing and formatting (durations, times, integers, human numbers, URL
credentials hidden); imports nothing of ours."""
