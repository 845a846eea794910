"""Recordings of fleet traffic: record a deployment, replay it, ask what another matcher would
have done with the same fleet (issue 11; `docs/replay.md`).

- `format`: the Parquet schema of a recording (one row per observed message) and `Record`;
- `writer` / `reader`: row groups written as they fill, each followed by its own footer, so a
  file cut anywhere still reads up to its last complete row group;
- `schedule`, `rewrite`, `follow`: the pure parts of replay (timing against an injected clock,
  fresh ids / timestamps / rounds through the codec, round-synchronous emission);
- `recorder`, `replayer`: the transports (MQTT and Kafka taps; publishing back);
- `whatif`: the offline counterfactual through the profiler's and matcher's pure folds;
- `fedscale` and `trace`: FedScale's device traces as a recording or as the fleet's behaviour.
"""
