"""Sample schema, shard reading and writing, the synthetic benchmark and converters."""
