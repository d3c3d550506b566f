"""What a connector author imports: the Connector base, the error table and the retry policy."""

from consentsync.sdk.connector import (
    ApiUsage,
    Connector,
    CrmRecord,
    Cursor,
    FieldInfo,
    RecordUpdate,
    WriteAction,
    WriteResult,
)
from consentsync.sdk.errors import (
    Action,
    BudgetExhausted,
    ConnectorError,
    ErrorRule,
    ErrorTable,
    Fault,
    network_error,
    register_secret,
)
from consentsync.sdk.retry import RetryPolicy, call

__all__ = [
    "Action",
    "ApiUsage",
    "BudgetExhausted",
    "Connector",
    "ConnectorError",
    "CrmRecord",
    "Cursor",
    "ErrorRule",
    "ErrorTable",
    "Fault",
    "FieldInfo",
    "RecordUpdate",
    "RetryPolicy",
    "WriteAction",
    "WriteResult",
    "call",
    "network_error",
    "register_secret",
]
