"""SIGKILL `consentsync sync` at random moments, restart it, and compare the end state (ledger,
CRM sandbox, audit log) with an uninterrupted run. Prints the trial count and the failures.

    python bench/crash_soak.py --trials 50
"""

import sys

from consentsync.sync.crashtest import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
