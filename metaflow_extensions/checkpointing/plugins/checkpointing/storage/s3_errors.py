"""How the S3 backend tells its errors apart: missing, worth another try, or permanent.

:func:`classify` answers for :meth:`.base.Storage._classify` (the one retry and translation
point): botocore's client errors by code and HTTP status, connection and timeout errors by
type, boto3's wrappers by what they wrap.  botocore is imported only when an error needs it.
"""

from __future__ import annotations

from .base import NOT_FOUND, PERMANENT, TRANSIENT

# S3 error codes worth another try (throttling, server-side trouble, timeouts).
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "RequestTimeout",
        "RequestTimeoutException",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "InternalError",
        "ServiceUnavailable",
        "PriorRequestNotComplete",
        "OperationAborted",
    }
)
NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


def error_code(exc: BaseException) -> tuple[str, int]:
    """(error code, HTTP status) of a botocore ClientError, ("", 0) for anything else."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return "", 0
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
    return code, int(status)


def classify(exc: BaseException) -> str:
    """``NOT_FOUND``, ``TRANSIENT`` or ``PERMANENT`` for an exception of boto3 or botocore."""
    name = type(exc).__name__
    if name == "S3UploadFailedError":  # boto3 wraps the ClientError of upload_file
        inner = exc.__cause__ or exc.__context__
        return classify(inner) if inner is not None else PERMANENT
    if name == "RetriesExceededError":  # download_file after s3transfer's own retries
        return TRANSIENT
    code, status = error_code(exc)
    if code or status:
        if code in NOT_FOUND_CODES:
            return NOT_FOUND
        if code in TRANSIENT_CODES or status >= 500 or status == 429:
            return TRANSIENT
        return PERMANENT  # AccessDenied, NoSuchBucket, InvalidAccessKeyId, ...
    try:
        from botocore import exceptions as bex
    except ImportError:  # pragma: no cover - boto3 is checked at construction
        bex = None
    if bex is not None:
        if isinstance(exc, bex.SSLError):
            # A certificate that fails verification will fail again.
            return PERMANENT if "CERTIFICATE_VERIFY_FAILED" in str(exc) else TRANSIENT
        if isinstance(
            exc,
            (
                bex.ConnectionError,  # EndpointConnectionError, ConnectTimeoutError, proxy
                bex.HTTPClientError,  # ReadTimeoutError, ConnectionClosedError, streaming
                bex.IncompleteReadError,
            ),
        ):
            return TRANSIENT
    if type(exc).__module__.startswith("urllib3"):
        return TRANSIENT
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return TRANSIENT
    return PERMANENT
