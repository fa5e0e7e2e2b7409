"""``exemplar serve --ray-serve``: the same app, deployed as a Ray Serve application.

Each Serve replica is a Ray actor that builds the whole app (services, routes, error envelope) from
the ``EXEMPLAR_*`` settings this command hands it, exactly as a ``--workers`` process does, and runs
its lifespan (pools loaded, refresher and job keeper started) before Serve routes a request to it.
Ray Serve's proxy owns the port and spreads requests over the replicas; replicas scale by
``--replicas N`` or by an autoscaling config. Replicas share the catalog and the data directory like
any other replicas: on several nodes that means a PostgreSQL catalog and a shared file system
(docs/deployment.md). Plain ``exemplar serve`` processes behind a proxy stay the main path; this
option is for teams whose models already run on Ray (benchmarks/ray_serve.py measures its cost).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from exemplar.app.settings import Settings
from exemplar.errors import InvalidRequest

__all__ = ["APP_NAME", "ExemplarReplica", "RayServeOptions", "autoscaling_config", "build_application", "run"]

log = logging.getLogger(__name__)

APP_NAME = "exemplar"
NEEDS_SERVE = "--ray-serve needs Ray Serve: pip install 'exemplar[serve]'"
SHUTDOWN_S = 45.0  # the replicas' graceful_shutdown_timeout_s, and some


class ExemplarReplica:
    """One Serve replica: the app of one server process, built in the actor from ``environment``."""

    def __init__(self, environment: Mapping[str, str]) -> None:
        os.environ.update(environment)  # the replica's process is Ray's worker: settings come from here
        self._app: Any = None

    def __serve_build_asgi_app__(self) -> Any:  # noqa: ANN401 - a FastAPI app; Serve calls this after __init__
        from exemplar.app.main import create_app_from_environment

        self._app = create_app_from_environment()
        return self._app

    def check_health(self) -> None:
        """Serve's periodic probe: a replica whose services have stopped is replaced."""
        if self._app is None or not self._app.state.services.ready:
            raise RuntimeError("exemplar replica is not ready")


class RayServeOptions:
    """How the deployment scales and what each replica reserves on the Ray cluster."""

    def __init__(self, *, replicas: int = 1, autoscaling: dict[str, Any] | None = None, replica_cpus: float = 1.0,
                 max_ongoing_requests: int = 64) -> None:
        self.replicas = replicas
        self.autoscaling = autoscaling
        self.replica_cpus = replica_cpus
        self.max_ongoing_requests = max_ongoing_requests

    @property
    def most_replicas(self) -> int:
        """The most replicas that may run at once (each divides a node's cores by it for searches)."""
        if self.autoscaling is not None:
            return int(self.autoscaling.get("max_replicas", self.replicas))
        return self.replicas


def autoscaling_config(text: str) -> dict[str, Any]:
    """``--autoscaling-config``: Serve's autoscaling fields as JSON, or a path to a JSON file."""
    source = Path(text)
    try:
        raw = source.read_text() if not text.lstrip().startswith("{") and source.is_file() else text
        config = json.loads(raw)
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"--autoscaling-config is neither JSON nor a JSON file: {exc.__class__.__name__}",
                             param="autoscaling_config") from None
    if not isinstance(config, dict):
        raise InvalidRequest("--autoscaling-config must be a JSON object such as "
                             '{"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8}',
                             param="autoscaling_config")
    try:
        from ray.serve.config import AutoscalingConfig
    except ImportError:
        raise InvalidRequest(NEEDS_SERVE, param="ray_serve") from None
    fields = sorted(AutoscalingConfig.model_fields)
    unknown = sorted(set(config) - set(fields))
    if unknown:
        raise InvalidRequest(f"--autoscaling-config has no field {', '.join(unknown)}; its fields: {', '.join(fields)}",
                             param="autoscaling_config")
    try:
        AutoscalingConfig(**config)
    except ValueError as exc:  # pydantic's ValidationError: the fields it names, or its check across fields
        problems = [str(e["loc"][0]) if e.get("loc") else str(e.get("msg", "")) for e in exc.errors()]  # type: ignore[attr-defined]
        raise InvalidRequest(f"--autoscaling-config: invalid {'; '.join(problems) or 'values'}",
                             param="autoscaling_config") from None
    return config


def replica_environment(settings: Settings, options: RayServeOptions) -> dict[str, str]:
    """What each replica reads its settings from: this process's ``EXEMPLAR_*`` variables, then the
    command line's options (the data directory as an absolute path: replicas start elsewhere)."""
    env = {k: v for k, v in os.environ.items() if k.startswith("EXEMPLAR_") or k in ("HF_HUB_OFFLINE", "HF_HOME")}
    env.update({"EXEMPLAR_DATA_DIR": str(settings.data_dir.resolve()), "EXEMPLAR_LOG_LEVEL": settings.log_level,
                "EXEMPLAR_WORKERS": str(options.most_replicas)})
    if settings.catalog_url:
        env["EXEMPLAR_CATALOG_URL"] = settings.catalog_url
    return env


def build_application(settings: Settings, options: RayServeOptions) -> Any:  # noqa: ANN401 - a Serve Application
    from ray import serve

    ingress = serve.ingress()(ExemplarReplica)
    scaling: dict[str, Any] = (
        {"autoscaling_config": options.autoscaling} if options.autoscaling is not None
        else {"num_replicas": options.replicas}
    )
    deployment = serve.deployment(
        ingress, name="Exemplar", ray_actor_options={"num_cpus": options.replica_cpus},
        max_ongoing_requests=options.max_ongoing_requests, graceful_shutdown_timeout_s=30,
        health_check_period_s=5, **scaling,
    )
    return deployment.bind(replica_environment(settings, options))


def run(settings: Settings, options: RayServeOptions, *, on_ready: Callable[[str], None] | None = None) -> None:
    """Deploy the app on Ray Serve and hold it until SIGINT or SIGTERM, then take it down again."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise InvalidRequest(NEEDS_SERVE, param="ray_serve") from None

    local = settings.ray_address is None
    ray.init(address=settings.ray_address, include_dashboard=False, logging_level=logging.WARNING,
             ignore_reinit_error=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    deployed = False
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        deployed = True
        serve.run(build_application(settings, options), name=APP_NAME, route_prefix="/", blocking=False,
                  # Exemplar logs each request itself (route, status, ms, request id, key).
                  logging_config={"enable_access_log": False})
        address = f"http://{settings.host}:{settings.port}"
        log.info("exemplar on Ray Serve at %s: %s", address,
                 f"autoscaling {options.autoscaling}" if options.autoscaling else f"{options.replicas} replicas")
        if on_ready is not None:
            on_ready(address)
        while not stop.wait(1.0):
            pass
    finally:
        if deployed:
            _bounded(_take_down(serve, local), SHUTDOWN_S)
        ray.shutdown()


def _take_down(serve: Any, local: bool) -> Callable[[], None]:  # noqa: ANN401 - the ray.serve module
    def take_down() -> None:
        # Replicas drain and run their lifespan's end (leases handed back). On a cluster the
        # application is this command's to remove; Serve itself is the cluster's.
        try:
            serve.delete(APP_NAME)
            if local:
                serve.shutdown()
        except Exception:  # noqa: BLE001 - shutting down: report and go on to ray.shutdown()
            log.warning("taking the Ray Serve application down failed", exc_info=True)

    return take_down


def _bounded(step: Callable[[], None], timeout_s: float) -> None:
    """Run ``step``, giving up after ``timeout_s``: a supervisor that signals the whole process group
    (systemd's default, ``timeout``) has already stopped the local Ray's own processes, and a call to
    the Serve controller then never returns; the replicas' leases run out in the catalog instead."""
    worker = threading.Thread(target=step, name="exemplar-serve-shutdown", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        log.warning("Ray Serve did not take the application down in %.0f s; leaving it to Ray", timeout_s)
