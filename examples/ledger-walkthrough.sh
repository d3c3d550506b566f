#!/bin/sh
# A walk through the ledger on its embedded default (SQLite), in a fresh temporary directory:
# a consent captured on a web form with double opt-in, a withdrawal read from a CRM, a later CRM
# value that must not undo it, an objection that needs review, the effective state with the
# rules that decided it, and the verified audit chain.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
consentsync="${CONSENTSYNC:-$here/.venv/bin/consentsync}"
work=$(mktemp -d)
cd "$work"
echo "# working in $work"
run() { echo; echo "\$ consentsync $*"; "$consentsync" "$@"; }

run init
run ledger record --email Jane.Doe@example.com --purpose email_marketing --status granted \
    --source web_form --at 2026-01-15T09:30:00Z --notice-version v3 \
    --double-opt-in-at 2026-01-15T09:41:00Z --evidence-ref form-submission-8812
run ledger record --email jane.doe@example.com --purpose email_marketing --status withdrawn \
    --source salesforce --at 2026-03-02T17:05:00Z
run ledger record --email jane.doe@example.com --purpose email_marketing --status granted \
    --source salesforce --at 2026-04-01T08:00:00Z --evidence-ref salesforce:Contact/0035g00000AbCdE
run objection raise --email jane.doe@example.com --purpose profiling
run objection list --pending
run subject show jane.doe@example.com
run audit log --email jane.doe@example.com
run audit verify
