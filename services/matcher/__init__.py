"""The matcher: the round clock (open, match, assign, close) — see `clock` and `planning`."""
