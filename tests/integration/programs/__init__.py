"""Small programs the integration tests spawn as real processes, and the harness to do so."""
