"""Real deployment over gRPC: ``GrpcFleet`` (server) and ``run_site`` (site connector).

Sites dial out to the server over mutual TLS; see ``federation.proto`` for the wire
protocol (generic payloads of any registered kind, chunked arrays, heartbeats, job end).
"""

from consortia.fleet.grpc.client import JobEnded, SiteConnectionError, run_site
from consortia.fleet.grpc.server import GrpcFleet, SitesTimeoutError

__all__ = ["GrpcFleet", "JobEnded", "SiteConnectionError", "SitesTimeoutError", "run_site"]
