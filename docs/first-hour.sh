#!/usr/bin/env bash
# Run from an empty folder: bash /path/to/docs/first-hour.sh > transcript.txt (CS=consentsync by default).
# An operator's first hour against a Salesforce sandbox standing in for the production org.
# Run from an empty folder with consentsync installed as README's first command does.
set -u
CS=${CS:-consentsync}
step() { printf '\n$ %s\n' "$*"; "$@"; echo "[exit $?]"; }
export CONSENTSYNC_ERASURE_KEY=first-hour-erasure-key-0123456789abcdef
$CS sandbox salesforce --port 18443 --seed 60 > sandbox.out 2>&1 &
SANDBOX=$!
for _ in $(seq 1 60); do grep -q "connectors:" sandbox.out 2>/dev/null && break; sleep 0.5; done
echo '$ consentsync sandbox salesforce --port 18443 --seed 60   (in another terminal; what it prints:)'
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
echo; echo '$ consentsync run --metrics-port 19181   (for 8 seconds, then SIGTERM)'
$CS run --metrics-port 19181 > daemon.log 2>&1 &
DAEMON=$!
sleep 8
for path in healthz readyz; do printf 'GET /%s -> ' $path; python3 -c "import urllib.request,sys
try: r=urllib.request.urlopen('http://127.0.0.1:19181/$path', timeout=5); print(r.status, r.read().decode().strip())
except Exception as e: print(e)"; done
python3 -c "import urllib.request; print('\n'.join(l for l in urllib.request.urlopen('http://127.0.0.1:19181/metrics').read().decode().splitlines() if l.startswith(('consentsync_runs_total','consentsync_last_run','consentsync_outbox'))))"
kill -TERM $DAEMON; wait $DAEMON; echo "[daemon exit $?]"
echo "daemon log (first lines, one JSON object each):"; head -4 daemon.log | cut -c1-220
step $CS status
step $CS audit verify
kill $SANDBOX
