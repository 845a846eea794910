"""fedmoe-bus: federated Mixture-of-Experts training for device fleets over Kafka and MQTT.

`fedmoe.errors` and `fedmoe.settings` are the ground floor (they import nothing of the
project's); `fedmoe.cli` and `fedmoe.commands` sit on top of everything else.
"""
