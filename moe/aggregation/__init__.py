"""Per-part aggregation of client updates: streaming FedAvg and robust rules."""
