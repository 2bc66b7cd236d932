"""docker-compose.yml is honest: generated from the topology the tests run, and referring only to
things that exist. (This machine has no Docker engine, so nothing here starts a container.)"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import yaml

from ringcast_tools.cluster import compose
from ringcast_tools.cluster.topology import local_topology, sequential_ports

ROOT = Path(__file__).resolve().parents[1]


def load() -> dict[str, object]:
    document = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(document, dict)
    return document


def test_the_compose_file_is_what_the_generator_writes_now() -> None:
    assert (ROOT / "docker-compose.yml").read_text() == compose.dump(), (
        "docker-compose.yml is stale: run `python -m ringcast_tools.cluster.compose`"
    )
    assert (ROOT / compose.PROMETHEUS_CONFIG).read_text() == compose.dump_prometheus(), (
        f"{compose.PROMETHEUS_CONFIG} is stale: run `python -m ringcast_tools.cluster.compose`"
    )


_ADDRESS = re.compile(r"(?:127\.0\.0\.1|0\.0\.0\.0|[a-z][a-z0-9-]*):(\d{4,5})")


def _without_hosts(text: str) -> str:
    """An argument with every HOST:PORT reduced to @PORT (and a bare bind address to @HOST)."""
    return "@HOST" if text in ("127.0.0.1", "0.0.0.0") else _ADDRESS.sub(r"@\1", text)


def test_the_stack_runs_the_processes_ringcast_up_runs_in_the_same_order() -> None:
    local = local_topology(
        Path("/data"),
        ports=sequential_ports(7400),
        placements=2,
        engine="redis",
        python="python",
        tls_dir=Path("/tls"),  # secure, as `ringcast up` is by default
    )
    services = load()["services"]
    assert isinstance(services, dict)
    assert list(services)[0] == compose.TLS_INIT  # the certificates first
    assert list(services)[1 : len(local.processes) + 1] == [spec.name for spec in local.processes]
    assert set(services) - {spec.name for spec in local.processes} == {
        compose.TLS_INIT,
        "otel-collector",
        "jaeger",
        "prometheus",
    }
    for spec in local.processes:
        service = services[spec.name]
        # The same program and flags; only hosts differ (service names instead of 127.0.0.1).
        assert [_without_hosts(arg) for arg in service["command"]] == [_without_hosts(arg) for arg in spec.argv]
        environment = service.get("environment", {})
        assert {key: _without_hosts(value) for key, value in spec.env.items()} == {
            key: _without_hosts(environment[key]) for key in spec.env
        }, spec.name
        assert "healthcheck" in service, spec.name


def test_everything_the_stack_refers_to_exists() -> None:
    document = load()
    services = document["services"]
    volumes = document["volumes"]
    assert isinstance(services, dict) and isinstance(volumes, dict)
    for name, service in services.items():
        if "build" in service:
            dockerfile = ROOT / service["build"]["context"] / service["build"]["dockerfile"]
            assert dockerfile.is_file(), name
        command = service.get("command", [])
        if command[:2] == ["python", "-m"]:
            assert importlib.util.find_spec(command[2]) is not None, (name, command[2])
        for dependency in service.get("depends_on", {}):
            assert dependency in services, (name, dependency)
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).is_file(), (name, source)
            else:
                assert source in volumes, (name, source)
        if service.get("image") == compose.RINGCAST_IMAGE and name != compose.TLS_INIT:
            # its own /readyz, on its metrics port, for a few ms of bash (services/common/probes.py)
            metrics_port = int(service["environment"]["RINGCAST_METRICS_LISTEN"].rsplit(":", 1)[1])
            assert service["healthcheck"]["test"] == ["CMD", "bash", "-c", compose.readyz_probe(metrics_port)], name
            assert service["environment"]["RINGCAST_TLS_DIR"] == str(compose.TLS), name
    init = services[compose.TLS_INIT]["command"][-1]
    assert init.startswith(f"ringcast certs --compose --tls-dir {compose.TLS}"), init
    for name, service in services.items():  # everything after the certificates mounts them read-only
        if name not in (compose.TLS_INIT, "otel-collector", "jaeger", "prometheus"):
            assert f"{compose.TLS_VOLUME}:{compose.TLS}:ro" in service["volumes"], name
    for source in re.findall(r"^COPY (\S+)", (ROOT / "Dockerfile").read_text(), flags=re.MULTILINE):
        assert (ROOT / source).exists(), source
    assert {port for name in ("gateway-1", "gateway-2") for port in services[name]["ports"]} == {
        "7410:7410",
        "7411:7411",
    }
    collector = yaml.safe_load((ROOT / compose.COLLECTOR_CONFIG).read_text())
    assert collector["service"]["pipelines"]["traces"]["receivers"] == ["otlp"]
