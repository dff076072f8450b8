"""ddpm-service: the job system (``app.core``), the HTTP API (``app.api``), the client
(``app.client``) and the command lines (``app.cli``). See docs/ARCHITECTURE.md."""
