"""`fedmoe soak`: the whole system under a fault plan, with live invariants and a report.

- `plan`: the YAML plan, parsed and validated into frozen dataclasses, and its schedule;
- `supervisor`: restarts services that exit, with backoff (`RestartPolicy` is pure);
- `invariants`: the checkers, each a pure fold over an event stream (`events`);
- `memory`: the RSS slope fit;
- `watch`: what feeds the checkers live (Kafka, the fleet's journals, /metrics, `$SYS`);
- `driver`: executes the plan's actions;
- `report`: `report.json` and `report.png`;
- `run`: the whole soak, as `fedmoe soak` runs it.
"""
