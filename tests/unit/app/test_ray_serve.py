"""``exemplar serve --ray-serve``'s parts that run without Ray: options, the replicas' settings and
the deployment class itself (tests/integration/test_ray_serve.py deploys it on a real Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from exemplar.app.cli import main
from exemplar.app.ray_serve import ExemplarReplica, RayServeOptions, autoscaling_config, replica_environment
from exemplar.app.settings import Settings
from exemplar.errors import InvalidRequest


def test_autoscaling_config_from_json_or_a_file(tmp_path: Path) -> None:
    config = {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8}
    assert autoscaling_config(json.dumps(config)) == config
    path = tmp_path / "scaling.json"
    path.write_text(json.dumps(config))
    assert autoscaling_config(str(path)) == config


@pytest.mark.parametrize(("text", "says"), [
    ("{not json", "neither JSON nor a JSON file"),
    ("[1, 2]", "must be a JSON object"),
    ('{"min_replicas": 1, "max_replicaz": 4}', "no field max_replicaz; its fields: "),
    ('{"min_replicas": -1}', "invalid min_replicas"),
    ('{"min_replicas": 5, "max_replicas": 2}', "max_replicas (2) must be greater than or equal to min_replicas (5)"),
])
def test_bad_autoscaling_configs_are_refused_with_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        autoscaling_config(text)
    assert says in caught.value.message and caught.value.param == "autoscaling_config"


def test_replicas_read_this_commands_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXEMPLAR_REFRESH_S", "0.5")
    monkeypatch.setenv("UNRELATED_SECRET", "x")
    monkeypatch.chdir(tmp_path)
    settings = Settings(data_dir=Path("data"), log_level="warning", catalog_url="postgresql://db/exemplar")
    env = replica_environment(settings, RayServeOptions(autoscaling={"min_replicas": 1, "max_replicas": 6}))
    assert env["EXEMPLAR_DATA_DIR"] == str(tmp_path / "data"), "absolute: replicas start in Ray's own folders"
    assert env["EXEMPLAR_REFRESH_S"] == "0.5" and env["EXEMPLAR_LOG_LEVEL"] == "warning"
    assert env["EXEMPLAR_CATALOG_URL"] == "postgresql://db/exemplar"
    assert env["EXEMPLAR_WORKERS"] == "6", "a lone search's threads are the cores divided by the most replicas"
    assert "UNRELATED_SECRET" not in env


def test_the_deployment_class_builds_the_app_and_reports_its_health(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    environment = {"EXEMPLAR_DATA_DIR": str(tmp_path / "data"), "EXEMPLAR_REFRESH_S": "0", "EXEMPLAR_LOG_LEVEL": "warning"}
    for key in environment:  # the replica writes them into its process's environment: restore them after
        monkeypatch.setenv(key, "")
    replica = ExemplarReplica(environment)
    with pytest.raises(RuntimeError):
        replica.check_health()  # no app yet: Serve must not route to it
    app = replica.__serve_build_asgi_app__()
    with TestClient(app) as client:  # Serve runs the app's lifespan in the replica the same way
        replica.check_health()
        assert client.post("/v1/pools", json={"name": "p", "encoder": "precomputed:2"}).status_code == 201
        assert client.get("/v1/pools/nope").json()["error"]["type"] == "not_found"
    with pytest.raises(RuntimeError):
        replica.check_health()  # stopped: Serve replaces it


@pytest.mark.parametrize(("args", "says"), [
    (["--replicas", "2"], "--replicas applies to --ray-serve only"),
    (["--ray-address", "auto"], "--ray-address applies to --ray-serve only"),
    (["--ray-serve", "--workers", "2"], "--workers and --ray-serve do not mix"),
])
def test_ray_serve_options_out_of_place_are_usage_errors(args: list[str], says: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["serve", "--data-dir", str(tmp_path), *args])
    assert result.exit_code == 2 and says in result.output


def test_a_bad_autoscaling_config_stops_the_command_before_ray_starts(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["serve", "--data-dir", str(tmp_path), "--ray-serve",
                                       "--autoscaling-config", '{"max_replicaz": 3}'])
    assert result.exit_code == 1 and "invalid_request [autoscaling_config]" in result.output
    assert "Traceback" not in result.output
