"""What a connector author imports: the Connector base, the error table, the retry policy, and
the pieces every connector needs (settings base, HTTP client, OAuth token request)."""

from consentsync.sdk.auth import SharedLogin, request_token
from consentsync.sdk.batches import write_in_passes
from consentsync.sdk.clock import CrmClock
from consentsync.sdk.connector import (
    ApiUsage,
    Connector,
    CrmRecord,
    Cursor,
    FieldInfo,
    RecordUpdate,
    WriteAction,
    WriteResult,
    rewound_plain,
)
from consentsync.sdk.errors import (
    Action,
    BudgetExhausted,
    ConnectorError,
    ErrorRule,
    ErrorTable,
    Fault,
    RunBudgetSpent,
    host_of,
    mask_userinfo,
    network_error,
    register_secret,
)
from consentsync.sdk.http import (
    HttpClient,
    endpoint_kind,
    http_session,
    json_or_none,
    response_error,
    retry_after,
    retry_after_value,
)
from consentsync.sdk.journal import STATE_DIR_ENV, Journal, state_dir
from consentsync.sdk.objects import config_error, require_fields, require_object
from consentsync.sdk.retry import RetryPolicy, call
from consentsync.sdk.settings import (
    ConnectorSettings,
    DailyBudget,
    ExistingFile,
    RunBudget,
    SettingProblem,
    WebUrl,
)

__all__ = [
    "STATE_DIR_ENV",
    "Action",
    "ApiUsage",
    "BudgetExhausted",
    "Connector",
    "ConnectorError",
    "ConnectorSettings",
    "CrmClock",
    "CrmRecord",
    "Cursor",
    "DailyBudget",
    "ErrorRule",
    "ErrorTable",
    "ExistingFile",
    "Fault",
    "FieldInfo",
    "HttpClient",
    "Journal",
    "RecordUpdate",
    "RetryPolicy",
    "RunBudget",
    "RunBudgetSpent",
    "SettingProblem",
    "SharedLogin",
    "WebUrl",
    "WriteAction",
    "WriteResult",
    "call",
    "config_error",
    "endpoint_kind",
    "host_of",
    "http_session",
    "json_or_none",
    "mask_userinfo",
    "network_error",
    "register_secret",
    "request_token",
    "require_fields",
    "require_object",
    "response_error",
    "retry_after",
    "retry_after_value",
    "rewound_plain",
    "state_dir",
    "write_in_passes",
]
