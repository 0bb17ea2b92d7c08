"""What an S3 store is handed: its root URL and the client settings of :class:`S3Config`.

``common/settings.py`` fills an :class:`S3Config` from Metaflow's settings; without one, plain
boto3 defaults apply (:func:`boto3_client`).  Nothing here imports boto3 until a client is made.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..errors import CheckpointConfigError


def boto3_client(
    service: str,
    role_arn: Optional[str] = None,
    session_vars: Optional[Mapping] = None,
    client_params: Optional[Mapping] = None,
) -> Any:
    """A client from a plain boto3 session: the :class:`S3Config` default (no Metaflow).

    Raises
    ------
    CheckpointConfigError
        If ``role_arn`` is given: assuming a role needs a client factory that can (Metaflow's,
        which ``common.settings.s3_config`` hands over).
    """
    if role_arn:
        raise CheckpointConfigError(
            "Assuming the role %s needs a client factory that can: open the store through "
            "common.settings (which uses Metaflow's AWS client provider) or pass "
            "S3Config(client_factory=...)." % role_arn
        )
    import boto3

    session = boto3.session.Session(**dict(session_vars or {}))
    return session.client(service, **dict(client_params or {}))


#: ``factory(service, role_arn=..., session_vars=..., client_params=...) -> client``, as
#: Metaflow's ``get_aws_client``; module-level functions keep a store picklable.
ClientFactory = Callable[..., Any]


@dataclass(frozen=True)
class S3Config:
    """What an S3 store takes from its environment (``common.settings.s3_config`` fills it
    from Metaflow's settings).

    Attributes
    ----------
    client_params : mapping
        boto3 client arguments (``endpoint_url``, ``verify``, ``config``...): Metaflow's
        ``DATATOOLS_CLIENT_PARAMS``.  A store's own ``client_params`` are merged over them.
    session_vars : mapping
        boto3 session arguments: Metaflow's ``DATATOOLS_SESSION_VARS``.
    server_side_encryption : str, optional
        ``ServerSideEncryption`` of every put (``METAFLOW_S3_SERVER_SIDE_ENCRYPTION``).
    client_factory : callable
        Builds the client (:data:`ClientFactory`); default :func:`boto3_client`, Metaflow's
        ``get_aws_client`` when filled from Metaflow (its credential providers apply).
    """

    client_params: Mapping = field(default_factory=dict)
    session_vars: Mapping = field(default_factory=dict)
    server_side_encryption: Optional[str] = None
    client_factory: ClientFactory = boto3_client


def parse_s3_url(url: str) -> tuple[str, str]:
    """Split ``s3://bucket/prefix`` into ``(bucket, prefix)`` (prefix without edge slashes).

    Raises
    ------
    CheckpointConfigError
        If ``url`` is not an ``s3://`` URL with a bucket name.
    """
    scheme, sep, rest = url.partition("://")
    bucket, _, prefix = rest.partition("/")
    if not sep or scheme.lower() != "s3" or not bucket:
        raise CheckpointConfigError(
            "Invalid S3 checkpoint root %r: expected s3://<bucket>[/<prefix>]." % url
        )
    return bucket, prefix.strip("/")
