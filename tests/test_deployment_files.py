"""The deployment files agree with each other and with the image: the compose variant's replicas
share one catalog and one data volume, and its proxy points at exactly those replicas on the
image's port (tests/integration/test_proxy.py runs that proxy configuration for real)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _compose(name: str) -> dict:
    return yaml.safe_load((ROOT / "docker" / name).read_text())


def _image_port() -> str:
    match = re.search(r"EXEMPLAR_PORT=(\d+)", (ROOT / "Dockerfile").read_text())
    assert match, "the Dockerfile sets EXEMPLAR_PORT"
    return match.group(1)


def test_the_replicas_share_one_catalog_and_one_volume() -> None:
    services = _compose("compose.replicas.yaml")["services"]
    replicas = sorted(name for name in services if name.startswith("exemplar-"))
    assert replicas == ["exemplar-1", "exemplar-2"]
    envs = [services[name]["environment"] for name in replicas]
    assert envs[0] == envs[1]
    assert re.match(r"postgresql://exemplar:.+@db:5432/exemplar$", envs[0]["EXEMPLAR_CATALOG_URL"])
    assert all(services[name]["volumes"] == ["exemplar-data:/data"] for name in replicas)
    assert all(services[name]["depends_on"]["db"]["condition"] == "service_healthy" for name in replicas)
    db = services["db"]["environment"]
    assert (db["POSTGRES_USER"], db["POSTGRES_DB"]) == ("exemplar", "exemplar")
    assert "${EXEMPLAR_API_KEYS:?" in envs[0]["EXEMPLAR_API_KEYS"], "0.0.0.0 in a container needs keys"


def test_the_proxy_balances_over_exactly_those_replicas_on_the_images_port() -> None:
    services = _compose("compose.replicas.yaml")["services"]
    conf = (ROOT / "docker" / "nginx.conf").read_text()
    upstreams = re.findall(r"server (exemplar-\d+):(\d+)", conf)
    port = _image_port()
    assert sorted(upstreams) == [("exemplar-1", port), ("exemplar-2", port)]
    assert re.search(rf"listen {port};", conf)
    proxy = services["proxy"]
    assert proxy["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in proxy["volumes"]
    # Reads are retried on the other replica; writes are never sent twice.
    select = conf[conf.index("location ~ ^/v1/pools/[^/]+/select"):]
    assert "non_idempotent" in select.split("}")[0]
    assert "non_idempotent" not in conf[conf.index("location / {"):].split("}")[0]


def test_the_single_host_compose_file_still_builds_the_same_image() -> None:
    one = _compose("compose.yaml")["services"]["exemplar"]
    two = _compose("compose.replicas.yaml")["services"]["exemplar-1"]
    assert one["build"]["dockerfile"] == two["build"]["dockerfile"] == "Dockerfile"
    assert one["image"] == two["image"]
