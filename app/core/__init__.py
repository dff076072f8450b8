"""The job system that the API and the workers share: settings, logs, job names and
specs, the job store (Redis, one Lua script per transition), the broker messages, the
checkpoint registry and the result stores. No web framework is imported here."""
