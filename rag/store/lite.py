"""Milvus Lite's in-process gRPC server, made to accept pymilvus' keepalive pings.

pymilvus pings every 10 s, even between calls; milvus-lite 3's in-process gRPC server
keeps gRPC's defaults (a ping at most every 5 minutes without data, 2 strikes), so a
connection idle for ~30 s gets GOAWAY "too_many_pings", and reconnecting can fail
("Fail connecting to server ... Too many pings"). Measured here: it killed a whole
benchmark part and failed a test that reused a client; a chat UI that sits idle
between questions would hit it too. The server is created from ``grpc.server`` inside
``milvus_lite.adapter.grpc.server``, so that module's ``grpc`` gets ping-tolerant
options before the first Lite database is opened.
"""

from __future__ import annotations

from typing import Any

LITE_KEEPALIVE_OPTIONS = (
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5000),
    ("grpc.http2.max_ping_strikes", 0),
)


class _KeepaliveGrpc:
    """The grpc module as milvus_lite's server module sees it, with ping-tolerant servers."""

    def __init__(self, module: Any) -> None:
        self._module = module

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)

    def server(self, *args: Any, options: Any = (), **kwargs: Any) -> Any:
        return self._module.server(*args, options=[*options, *LITE_KEEPALIVE_OPTIONS], **kwargs)


def tolerate_lite_keepalive() -> None:
    """Idempotent; a no-op when milvus-lite (or its layout) is not there."""
    try:
        import grpc
        from milvus_lite.adapter.grpc import server as lite_server
    except ImportError:
        return
    if isinstance(getattr(lite_server, "grpc", None), _KeepaliveGrpc):
        return
    lite_server.grpc = _KeepaliveGrpc(grpc)  # type: ignore[assignment]
