"""The evaluator: scores the global model of every closed round on the held-out test set."""
