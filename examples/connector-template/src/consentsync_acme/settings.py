"""The Acme connector's settings: the ``settings:`` block of an ``acme`` connector in
consentsync.yaml. Write secrets as ``${ENV_VAR}``.

``ConnectorSettings`` brings the keys every connector has (``ca_bundle``, ``proxy``,
``timeout``, ``max_attempts``, ``max_rate_limit_wait``, ``budget.per_run``) and refuses unknown
keys; declare only your CRM's own here.
"""

from __future__ import annotations

from pydantic import Field

from consentsync.sdk import ConnectorSettings


class AcmeSettings(ConnectorSettings):
    api_url: str
    api_key: str
    page_size: int = Field(default=100, ge=1, le=100)
    # Acme's burst limit lifts within seconds: a longer Retry-After means the day's quota is near
    # its end, and the run had better stop cleanly than wait (a shared default, overridden).
    max_rate_limit_wait: float = Field(default=10.0, ge=0)
