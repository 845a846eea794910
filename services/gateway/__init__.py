"""The MQTT ↔ Kafka gateway: the only service that speaks MQTT (see `logic` for what it does)."""
