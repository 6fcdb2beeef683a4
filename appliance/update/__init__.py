"""Verified self-update of the binary from an operator's TUF release feed.

`feed` reads and verifies the feed (python-tuf, through the pulls' network stack), `install`
stages, self-tests and swaps the file, `service` restarts under systemd behind a health gate,
`state` remembers the last check and failed versions, `run` ties them into the commands.
"""
