"""Real deployment over gRPC: ``GrpcFleet`` (server) and ``run_site`` (site connector).

Sites dial out to the server over mutual TLS; see ``federation.proto`` for the wire
protocol (phases, chunked vectors, heartbeats).
"""

from consortia.fleet.grpc.client import SiteConnectionError, run_site
from consortia.fleet.grpc.server import GrpcFleet, SitesTimeoutError

__all__ = ["GrpcFleet", "SiteConnectionError", "SitesTimeoutError", "run_site"]
