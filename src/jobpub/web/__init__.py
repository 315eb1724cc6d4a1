"""`jobpub web`: the REST API under /api and the dashboard, a process of its own.

Its libraries (FastAPI, Starlette, uvicorn, Jinja2) come with the `web` extra; no
replica module imports this package (import-linter's contracts in pyproject.toml).
"""
