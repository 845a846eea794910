"""The end-to-end demo: child processes, the bus observer and the run's progress."""
