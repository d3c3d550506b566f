# The same install steps as README.md and .ci/run (tests/test_packaging.py checks they agree).
FROM python:3.11-slim
WORKDIR /opt/consentsync
# Debian's Chromium, as CI installs it, for the console's browser tests.
RUN apt-get update && apt-get install -y --no-install-recommends chromium && rm -rf /var/lib/apt/lists/*
COPY . .
RUN python3 -m venv .venv && .venv/bin/pip install -e '.[test]'
ENV PATH=/opt/consentsync/.venv/bin:$PATH
# Mount the config, its erasure key and (for SQLite) the ledger under /data.
WORKDIR /data
ENTRYPOINT ["consentsync"]
CMD ["--help"]
