#!/usr/bin/env bash
# Run from an empty folder: bash /path/to/docs/first-hour.sh > transcript.txt (CS=consentsync by default).
# An operator's first hour against a Salesforce sandbox standing in for the production org.
# Run from an empty folder with consentsync installed as README's first command does.
set -u
CS=${CS:-consentsync}
# Each command printed as it can be pasted back (%q quotes an argument with a space in it).
step() { printf '\n$'; printf ' %q' "$@"; printf '\n'; "$@"; echo "[exit $?]"; }
export CONSENTSYNC_ERASURE_KEY=first-hour-erasure-key-0123456789abcdef
# Ports: SANDBOX_PORT and METRICS_PORT when set; by default 0, a free port the sandbox and the
# daemon pick themselves and print (never one another program already listens on).
SANDBOX_PORT=${SANDBOX_PORT:-0}
METRICS_PORT=${METRICS_PORT:-0}
$CS sandbox salesforce --port "$SANDBOX_PORT" --seed 60 > sandbox.out 2>&1 &
SANDBOX=$!
for _ in $(seq 1 60); do
  grep -q "connectors:" sandbox.out 2>/dev/null && break
  kill -0 $SANDBOX 2>/dev/null || break
  sleep 0.5
done
if ! grep -q "connectors:" sandbox.out 2>/dev/null; then
  echo "the sandbox did not start:"; cat sandbox.out; kill $SANDBOX 2>/dev/null; exit 1
fi
SANDBOX_PORT=$(sed -n 's#^ *instance URL *https://[^:]*:\([0-9]*\).*#\1#p' sandbox.out | head -1)
echo "\$ consentsync sandbox salesforce --port $SANDBOX_PORT --seed 60   (in another terminal; what it prints:)"
cat sandbox.out
step $CS init
# Paste the connectors block the sandbox printed, as an admin would.
python3 - <<'PY'
import re, yaml
out = open("sandbox.out").read()
block = out[out.index("connectors:"):]
block = "\n".join(l for l in block.splitlines() if l.startswith((" ", "connectors:", "-")) or not l.strip())
cfg = yaml.safe_load(open("consentsync.yaml"))
cfg["connectors"] = yaml.safe_load(block)["connectors"]
yaml.safe_dump(cfg, open("consentsync.yaml", "w"), sort_keys=False)
PY
grep -o "export [A-Z_]*=[^ ]*" sandbox.out | head -3 > secrets.env || true
. ./secrets.env
CONNECTOR=$(python3 -c "import yaml; print(yaml.safe_load(open('consentsync.yaml'))['connectors'][0]['name'])")
step $CS connectors
step $CS discover "$CONNECTOR"
step $CS discover "$CONNECTOR" Contact --mapping-out my-contact.yaml
step $CS mapping check my-contact.yaml
step $CS status
step $CS plan "$CONNECTOR"
step $CS sync "$CONNECTOR"
step $CS status
step $CS runs list
# A broken secret: the run fails, says which, shows no part of the secret.
GOOD=$(env | grep -E '^[A-Z_]*SECRET[A-Z_]*=' | head -1)
NAME=${GOOD%%=*}
export "$NAME=wrong-secret-value-123456"
printf '\n# a broken secret: $ export %s=wrong-secret-value-123456\n' "$NAME"
step $CS sync "$CONNECTOR"
step $CS status
export "$GOOD"
printf '\n# recovery: the right secret back in the environment\n'
step $CS sync "$CONNECTOR"
step $CS status
# Observe mode held the pushes: review them record by record, then push exactly that plan.
step $CS plan "$CONNECTOR" -o plan.json
step $CS apply plan.json --actor "Ops Admin"
# The daemon: runs every connector on its schedule, serves /metrics, /healthz and /readyz.
echo; echo "\$ consentsync run --metrics-port $METRICS_PORT   (until its first run ends, then SIGTERM)"
$CS run --metrics-port "$METRICS_PORT" > daemon.log 2>&1 &
DAEMON=$!
# The daemon runs each connector at once, then on its schedule: wait for the first run's end.
for _ in $(seq 1 120); do
  grep -qE '"sync\.(finished|failed|interrupted)"' daemon.log 2>/dev/null && break
  sleep 0.5
done
# Where it serves: the port it logged (daemon.metrics), the one it picked when given 0.
METRICS=$(python3 -c "import json
for line in open('daemon.log'):
    try: event = json.loads(line)
    except ValueError: continue
    if event.get('event') == 'daemon.metrics': print(event['url'].rsplit('/', 1)[0]); break")
echo "(serving at ${METRICS:-nowhere: see daemon.log})"
for path in healthz readyz; do printf 'GET /%s -> ' $path; python3 -c "import urllib.request,sys
try: r=urllib.request.urlopen('$METRICS/$path', timeout=5); print(r.status, r.read().decode().strip())
except Exception as e: print(e)"; done
python3 -c "import urllib.request
try: print('\n'.join(l for l in urllib.request.urlopen('$METRICS/metrics', timeout=5).read().decode().splitlines() if l.startswith(('consentsync_runs_total','consentsync_last_run','consentsync_outbox'))))
except Exception as e: print(e)"
kill -TERM $DAEMON; wait $DAEMON; echo "[daemon exit $?]"
echo "daemon log (first lines, one JSON object each):"; head -4 daemon.log | cut -c1-220
step $CS status
step $CS audit verify
kill $SANDBOX
