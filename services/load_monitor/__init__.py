"""The load monitor (protocol step 7): global expert load → `ExpertLoad` on `expert-load`.

- `state`: the pure state machine over `moe.load` (where a round's assignment is counted from,
  when its part versions are folded, idempotence under redelivery) and its checkpoint form;
- `restore`: which state a process starts from (checkpoint vs. the brokers' history);
- `settings`: `LoadMonitorSettings` (`FEDMOE_LOAD_MONITOR_*`);
- `app`: the handler on the runtime and `main` (`fedmoe service load-monitor`).

State after a restart: a checkpoint file (`services.checkpoint`), not the `expert-load`
changelog. The latest ExpertLoad holds the load, but not what the monitor needs between two
publications: the open round and its assignment counted, part versions waiting for their
round's close, the versions folded (dedup), ROUNDS events held behind a close. Those inputs are
committed batch by batch, so after a SIGKILL they would be lost with the process; the checkpoint
is written after each batch's outputs were acknowledged and before its offsets are committed, so
a committed input always has its effect in the checkpoint, and one redelivered after it is
recognised by content (round numbers, version per expert). A single instance
needs no shared storage; the changelog serves to tell a checkpoint of this deployment from one
of an earlier broker life (`restore`).
"""
