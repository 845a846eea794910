"""Broker adapters (aiokafka, aiomqtt) and local broker launchers (Tansu, Mosquitto)."""
