"""In-process federated simulation: the experiment engine and its summary figures."""
