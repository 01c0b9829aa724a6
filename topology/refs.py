"""How flows name services: 'ssh', 'modbus/write' (a function class) or 'tcp/502'."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from topology.fields import suggest
from topology.model import Service, Transport


@dataclass(frozen=True)
class ServiceSpec:
    """A flow's service: always a transport and port; a catalog name when one fits."""

    transport: Transport
    port: int
    service: str | None = None
    function_class: str | None = None

    def __str__(self) -> str:
        if self.service is None:
            return f"{self.transport}/{self.port}"
        return self.service + (f"/{self.function_class}" if self.function_class else "")


def parse_service_spec(spec: str, services: Mapping[str, Service]) -> ServiceSpec | tuple[str, str]:
    """Parse a service spec; on failure return (message, hint) instead of raising."""
    head, sep, tail = spec.partition("/")
    if head in ("tcp", "udp") and sep:
        if not tail.isdigit() or not 1 <= int(tail) <= 65535:
            return (f"'{spec}' has no valid port", "write e.g. tcp/502")
        port = int(tail)
        transport: Transport = "tcp" if head == "tcp" else "udp"
        for candidate in services.values():
            if candidate.transport == transport and port in candidate.ports:
                return ServiceSpec(transport, port, candidate.name)
        return ServiceSpec(transport, port)
    svc = services.get(head)
    if svc is None:
        if "-" in head:
            base, _, cls = head.rpartition("-")
            if base in services and cls in services[base].classes:
                return (f"unknown service '{spec}'", f"did you mean '{base}/{cls}'?")
        return (f"unknown service '{spec}'", suggest(head, services))
    if sep:
        if tail not in svc.classes:
            if not svc.classes:
                return (f"service '{head}' has no function classes", "")
            return (f"service '{head}' has no function class '{tail}'", suggest(tail, svc.classes))
        return ServiceSpec(svc.transport, svc.ports[0], svc.name, tail)
    return ServiceSpec(svc.transport, svc.ports[0], svc.name)
