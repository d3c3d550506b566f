# The production image: the wheel is built in one stage and installed with its runtime extras in
# the next; no sources, no test tools, no browser, no sandbox code (the wheel of `.` leaves the
# CRM sandboxes out: they are the `demo` extra's distribution, built from sandboxes/).
# tests/test_packaging.py holds the build and install lines to those of
# tests/integration/test_wheel_install.py (which runs them).
#   docker build -t consentsync .
#   docker run -v "$PWD/deploy:/data" -p 9181:9181 consentsync            # the daemon
#   docker run -v "$PWD/deploy:/data" -p 8080:8080 consentsync web          # the ops console
# /data holds consentsync.yaml, its erasure key and (for SQLite) the ledger; none of them is ever
# copied into the image (.dockerignore). Secrets come from the environment (`${ENV_VAR}`).

FROM python:3.11-slim AS build
WORKDIR /src
COPY . .
RUN python3 -m pip wheel --no-deps --wheel-dir /dist .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The wheel is mounted from the build stage for the install only: it is in no layer of this image.
RUN --mount=type=bind,from=build,source=/dist,target=/dist python3 -m venv /opt/consentsync && /opt/consentsync/bin/pip install "$(ls /dist/consentsync-*.whl)[console,postgres]"
RUN useradd --system --uid 10001 --user-group --home-dir /data --create-home --shell /usr/sbin/nologin consentsync
ENV PATH=/opt/consentsync/bin:$PATH \
    CONSENTSYNC_CONFIG=/data/consentsync.yaml \
    CONSENTSYNC_METRICS_HOST=0.0.0.0 \
    CONSENTSYNC_METRICS_PORT=9181 \
    CONSENTSYNC_WEB_HOST=0.0.0.0
# `consentsync run` serves /metrics, /healthz and /readyz on 9181; the ops console listens on 8080
# (`consentsync web`, or the daemon with CONSENTSYNC_WEB_PORT=8080).
EXPOSE 9181 8080
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
# Liveness (python, as a slim image has no curl): the daemon's /healthz on the metrics port, or,
# for the image run as the console (`consentsync web`, no metrics port), the console's port taking
# connections (HTTP or HTTPS, whatever Host it allows). /readyz says whether runs succeed.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python3 -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CONSENTSYNC_METRICS_PORT', '9181'), timeout=4)" 2>/dev/null \
    || python3 -c "import os, socket; socket.create_connection(('127.0.0.1', int(os.environ.get('CONSENTSYNC_WEB_PORT', '8080'))), timeout=4).close()"
ENTRYPOINT ["consentsync"]
CMD ["run"]
