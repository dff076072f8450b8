"""The HTTP layer: the FastAPI app (:mod:`app.api.main`), thin routes, response schemas,
injected dependencies, event streams and the web page (``app/api/ui``)."""
