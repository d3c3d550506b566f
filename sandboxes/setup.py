"""The packages of consentsync-sandboxes: subpackages of consentsync's own packages, each in the
folder where it belongs (the shared base in src/, each vendor's beside its connector), installed
beside them, into the same folders.

An editable install (`pip install -e ./sandboxes`, a checkout) maps no package and only registers
the entry points: in a checkout the sandboxes are already importable as subfolders of the packages
consentsync's own editable install maps, and mapping them a second time would make setuptools'
editable finder declare their parents (consentsync, consentsync_<vendor>) namespace packages,
which hides consentsync itself.
"""

import sys

from setuptools import setup

PACKAGES = {
    "consentsync.sandbox": "../src/consentsync/sandbox",
    "consentsync_salesforce.sandbox": "../connectors/consentsync_salesforce/sandbox",
    "consentsync_hubspot.sandbox": "../connectors/consentsync_hubspot/sandbox",
    "consentsync_dynamics.sandbox": "../connectors/consentsync_dynamics/sandbox",
    "consentsync_superoffice.sandbox": "../connectors/consentsync_superoffice/sandbox",
    "consentsync_vtiger.sandbox": "../connectors/consentsync_vtiger/sandbox",
}

EDITABLE = "editable_wheel" in sys.argv  # the command setuptools runs for PEP 660's build_editable

setup(packages=[] if EDITABLE else list(PACKAGES), package_dir={} if EDITABLE else PACKAGES)
