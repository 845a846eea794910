"""The aggregator service (`fedmoe service aggregator`): per-part streaming aggregation.

- `settings`: `AggregatorSettings` (`FEDMOE_AGGREGATOR_*`);
- `part`: one part's `PartAggregator` + its open round's terms, as checkpoint data;
- `store`: one atomic checkpoint file per part in a directory the instances share;
- `outputs`: acks, part versions and part closes with deterministic message ids;
- `handler`: the state machine (markers, updates, deadlines, rebalances), no broker;
- `app`: wiring to the runtime, and `main`.

Several instances share `updates` through the consumer group "aggregator"; a part's records
(its round markers and updates) all carry the part id as key, so one partition, hence one
instance at a time, owns a part, and a rebalance or a crash moves it. How the state follows:

- **One checkpoint file per part**, not one per instance, in a directory all instances share
  (`<checkpoint_dir>/<namespace>/<part>.ckpt`): whoever owns a part next reads exactly that part's
  latest durable state, without caring which instance wrote it. A per-instance file would pin
  a part's state to an instance name, and a part moving from A to B would need B to read A's
  file, then A to forget the part inside its own file: two writers of one truth. Files are small
  (a part's weights, its open round's running mean, its ledger); a checkpoint writes only the
  parts changed since the last one.
- **Written in `checkpoint()`**, which the runtime calls after a batch's outputs were acked
  and before its offsets are committed. A crash before the write replays the batch against the
  previous file and re-produces the same outputs (same message ids: `outputs`); a crash after
  it replays inputs that the ledger now answers `duplicate`. Either way no update is applied
  twice or lost, and every distinct update gets one `applied` ack id.
- **Ownership from the group**, told by the runtime's `PartitionListener` hooks: on a revoke the
  instance drops (without writing) the parts of the lost partitions; the runtime commits no
  offsets of a lost partition, so their next owner redoes whatever was not checkpointed. On an
  assignment it loads the checkpointed parts of the gained partitions (each file records its
  partition), so it keeps their deadlines even when no record of theirs comes any more; a part
  met in a record is loaded then at the latest.
- **Never a stale copy**: before acting on a part held in memory the instance checks that the
  file is still the one it last read or wrote (`PartStore.changed`) and reloads it otherwise; a
  save over a file another instance wrote meanwhile fails (`CheckpointConflict`) and stops the
  process, rather than overwrite either's work. This guards the overlap a revoke that timed out
  can leave; the group's ownership is what normally keeps two instances apart.
"""
