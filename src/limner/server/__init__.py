"""The studio's HTTP server: ``create_app`` (FastAPI) over the library, ``limner.store`` and the
job queue. See docs/studio-api.md for the contract."""
