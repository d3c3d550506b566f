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
from consentsync.sdk.errors import Action, BudgetExhausted, ConnectorError, ErrorRule, ErrorTable, Fault
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
]
