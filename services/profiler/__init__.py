"""The profiler (protocol step 6): telemetry, status and round outcomes → one `ClientProfile`
per device → `ProfileSnapshot` on the compacted `profiles` topic (key = device id).

- `state`: the pure per-device state machine (what each record folds, when a round's outcome is
  folded, redelivery dedup);
- `settings`: `ProfilerSettings` (`FEDMOE_PROFILER_*`);
- `app`: the handler on the runtime, the restore, `main` (`fedmoe service profiler`).

State after a restart: the output topic is the changelog. Why not a checkpoint file: the profiler
scales out by device id through its consumer group, and a device's partitions move between
instances on a rebalance or a crash; a checkpoint file is one instance's, while every instance
can read the changelog, and the snapshot the matcher reads then is, by construction, the state
the profiler resumes from. So everything the profiler needs travels on the snapshot: the profile,
the round whose outcome is pending and its verdict so far, the round of the last telemetry folded
and the last handled offset per input partition (dedup that survives the restart). Tansu neither
compacts nor persists: locally the replay reads every snapshot ever published in a run (a few per
device per round), and the changelog lives as long as the broker does.
"""
