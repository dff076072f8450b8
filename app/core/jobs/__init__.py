"""What a job is: its names (kinds, statuses, queues, tasks), ids, the options a request
may set (declared once, in :mod:`app.core.jobs.spec`) and their validation."""
