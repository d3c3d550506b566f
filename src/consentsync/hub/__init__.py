"""The hub: consent captured where the person acts (issue 18).

``keys`` (API keys per capture source), ``notices`` (the texts shown, versioned and hashed),
``capture`` (recording consents, objections, erasure requests and answering "may we contact
this person?"), ``api`` (the HTTP face of ``capture``, served beside the console). The ledger
stays the one place that decides: the hub only turns what people do into evidence for it.
"""
