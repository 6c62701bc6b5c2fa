"""The job queue's Redis keys (PluginSpec.keys) and broker names."""

PREFIX = "sn:q:"
JOB = PREFIX + "job:"  # + job id: the job's state and result (JSON), expiring
IDEMPOTENCY = PREFIX + "idem:"  # + route digest:key digest: the job id it made, expiring
WAITING = PREFIX + "waiting:"  # + queue: a sorted set of the ids of jobs waiting, by created
