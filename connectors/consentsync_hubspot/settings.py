"""The HubSpot connector's settings (the ``settings:`` block of a connector in the config).

Values HubSpot's documentation does not pin down (marked "unconfirmed" in docs/connectors/
hubspot.md) are settings with the documented or observed value as default.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from consentsync.sdk import ConnectorSettings, DailyBudget, WebUrl

#: When a contact has several ``hs_legal_basis`` boxes ticked, the first of these it holds is
#: the one consentsync reads (the strongest proof first).
DEFAULT_LEGAL_BASIS_PRECEDENCE = (
    "Freely given consent from contact",
    "Performance of a contract",
    "Legitimate interest – existing customer",
    "Legitimate interest – prospect/lead",
    "Legitimate interest - other",
    "Not applicable",
)


class HubSpotSettings(ConnectorSettings):
    api_url: WebUrl = "https://api.hubapi.com"
    # The private app's access token, written ${ENV_VAR} in the config; or a file holding it,
    # re-read when HubSpot refuses the token (rotate it without restarting the daemon).
    access_token: str | None = None
    access_token_file: str | None = None
    # Search: at most 200 results a page (unconfirmed), a few requests a second per token
    # (unconfirmed: 4), at most 10,000 results per search (unconfirmed).
    page_size: int = Field(default=200, ge=1, le=200)
    search_requests_per_second: float = Field(default=4.0, gt=0)
    search_result_cap: int = Field(default=10_000, ge=1)
    # Batch update and batch read: inputs a call (unconfirmed: 100); v4 status batch reads.
    batch_size: int = Field(default=100, ge=1, le=1000)
    status_batch_size: int = Field(default=100, ge=1, le=1000)
    # v3 subscribe and unsubscribe need a legal basis and its explanation on a GDPR portal
    # (HubSpot's PublicUpdateSubscriptionStatusRequest: "required for GDPR enabled portals").
    # default_legal_basis: sent where the mapping pushes no subscription_<id>_legal_basis with
    # the status (an unsubscribe sends the basis HubSpot holds with the status, this where it
    # holds none). The explanations are HubSpot's legalBasisExplanation: the subscribe's, and
    # the unsubscribe's (never personal data: HubSpot shows it on the contact's record).
    default_legal_basis: str = "CONSENT_WITH_NOTICE"
    legal_basis_explanation: str = Field(default="Consent recorded in the consentsync ledger", min_length=1)
    unsubscribe_explanation: str = Field(
        default=(
            "Withdrawal recorded in the consentsync ledger: consentsync passes a person's no (a "
            "withdrawal, an objection or an erasure) on to every system that holds their address"
        ),
        min_length=1,
    )
    legal_basis_property: str = "hs_legal_basis"
    legal_basis_precedence: list[str] = Field(default_factory=lambda: list(DEFAULT_LEGAL_BASIS_PRECEDENCE))
    # What the ``delete`` erasure action does: "gdpr" (the default) permanently deletes each
    # contact (POST /crm/v3/objects/contacts/gdpr-delete: not restorable, its address
    # blocklisted); "archive" moves contacts to HubSpot's recycle bin (batch/archive), where they
    # stay restorable, personal data and all, for 90 days: not an erasure on its own.
    delete_mode: Literal["gdpr", "archive"] = "gdpr"
    # budget.daily_reserve_percent: share of the portal's daily allowance left for the other
    # integrations sharing it.
    budget: DailyBudget = DailyBudget()

    @model_validator(mode="after")
    def _one_token_source(self) -> HubSpotSettings:
        if bool(self.access_token) == bool(self.access_token_file):
            raise ValueError("give the private app token as access_token or access_token_file (one of them)")
        return self
