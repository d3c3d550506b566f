"""The ops console: `consentsync web` serves it; `consentsync run --web-port P` serves it beside
the daemon. FastAPI + Jinja2 pages over the same services as the CLI (see console.py)."""
