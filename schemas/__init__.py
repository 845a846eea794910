"""Wire contracts: envelope, message types, tensor codec, topic table and limits (pure)."""
