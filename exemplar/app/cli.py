"""The ``exemplar`` command line: serve, build, select, demo.

Settings (data dir, host, port, limits...) come from ``Settings`` (``EXEMPLAR_*`` variables); an
option given on the command line overrides them. Other options also read ``EXEMPLAR_<COMMAND>_<OPTION>``
(for example ``EXEMPLAR_SELECT_K``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

import exemplar
from exemplar.app.settings import Settings
from exemplar.errors import ExemplarError, NotFound

__all__ = ["configure_logging", "main"]


def _settings(**overrides: Any) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _fail(exc: ExemplarError) -> None:
    param = f" [{exc.param}]" if exc.param else ""
    raise click.ClickException(f"{exc.type}{param}: {exc.message}")


def configure_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        from exemplar.app.observability import JsonFormatter

        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_data_dir = click.option("--data-dir", type=click.Path(path_type=Path), default=None,
                         help="Data directory [env EXEMPLAR_DATA_DIR; default ./exemplar-data].")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "EXEMPLAR"})
@click.version_option(exemplar.__version__, prog_name="exemplar")
def main() -> None:
    """Exemplar: in-context demonstration retrieval for multimodal LLMs."""


@main.command()
@_data_dir
@click.option("--host", default=None, help="Bind address [env EXEMPLAR_HOST; default 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port [env EXEMPLAR_PORT; default 8000].")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None,
              help="Log level [env EXEMPLAR_LOG_LEVEL].")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Server processes sharing the port, the catalog and the memory-mapped segments "
              "[env EXEMPLAR_SERVE_WORKERS].")
@click.option("--ray-serve", is_flag=True, default=False,
              help="Deploy the app on Ray Serve instead (a local Ray, or --ray-address): its proxy owns the port.")
@click.option("--replicas", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="Ray Serve replicas (with --ray-serve).")
@click.option("--autoscaling-config", default=None,
              help="Ray Serve autoscaling, as JSON or a JSON file, instead of --replicas "
              '(e.g. \'{"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8}\').')
@click.option("--ray-address", default=None, help="Ray cluster to deploy on (with --ray-serve) [env EXEMPLAR_RAY_ADDRESS; "
              "default: a local Ray started by this command].")
@click.option("--replica-cpus", type=click.FloatRange(0, 512), default=1.0, show_default=True,
              help="CPUs each Ray Serve replica reserves on the cluster.")
def serve(data_dir: Path | None, host: str | None, port: int | None, log_level: str | None, workers: int,
          ray_serve: bool, replicas: int, autoscaling_config: str | None, ray_address: str | None,
          replica_cpus: float) -> None:
    """Serve the HTTP API over the pools in the data directory."""
    settings = _settings(data_dir=data_dir, host=host, port=port, log_level=log_level, ray_address=ray_address)
    if not ray_serve:
        for name, given in (("--replicas", replicas != 1), ("--autoscaling-config", autoscaling_config),
                            ("--ray-address", ray_address), ("--replica-cpus", replica_cpus != 1.0)):
            if given:
                raise click.UsageError(f"{name} applies to --ray-serve only (several plain processes: --workers)")
        _serve(settings, workers=workers)
        return
    if workers != 1:
        raise click.UsageError("--workers and --ray-serve do not mix: Ray Serve runs --replicas")
    _serve_on_ray(settings, replicas=replicas, autoscaling=autoscaling_config, replica_cpus=replica_cpus)


def _serve_on_ray(settings: Settings, *, replicas: int, autoscaling: str | None, replica_cpus: float) -> None:
    from exemplar.app import ray_serve

    _refuse_open_port_without_keys(settings)
    try:
        options = ray_serve.RayServeOptions(
            replicas=replicas, replica_cpus=replica_cpus,
            autoscaling=ray_serve.autoscaling_config(autoscaling) if autoscaling else None)
        configure_logging(settings.log_level, settings.log_format)
        ray_serve.run(settings, options, on_ready=lambda address: click.echo(f"exemplar ready on Ray Serve at {address}"))
    except ExemplarError as exc:
        _fail(exc)


def _refuse_open_port_without_keys(settings: Settings) -> None:
    if not _is_loopback(settings.host) and not settings.api_keys:
        raise click.ClickException(
            f"refusing to listen on {settings.host}: no API keys are configured, so anyone who can reach the "
            "port could read and change every pool. Set EXEMPLAR_API_KEYS (see `exemplar hash-key`) or serve "
            "on 127.0.0.1."
        )


def _serve(settings: Settings, on_ready: str | None = None, workers: int = 1) -> None:
    import uvicorn

    from exemplar.app.main import create_app

    _refuse_open_port_without_keys(settings)
    configure_logging(settings.log_level, settings.log_format)
    from exemplar.app.memory import tune_allocator

    tune_allocator()  # before any pool is opened (workers apply it in create_app_from_environment)
    if workers > 1:
        # Each worker is a fresh process that reads its settings from the environment: the
        # command-line options go there first.
        os.environ.update({"EXEMPLAR_DATA_DIR": str(settings.data_dir.resolve()), "EXEMPLAR_HOST": settings.host,
                           "EXEMPLAR_PORT": str(settings.port), "EXEMPLAR_LOG_LEVEL": settings.log_level,
                           "EXEMPLAR_WORKERS": str(workers)})
        uvicorn.run("exemplar.app.main:create_app_from_environment", factory=True, workers=workers,
                    host=settings.host, port=settings.port, log_level=settings.log_level,
                    timeout_graceful_shutdown=30, access_log=False, log_config=None)
        return
    from exemplar.retrieval.index.vectors import set_search_threads

    set_search_threads(settings.search_threads, processes=settings.workers)
    app = create_app(settings, on_ready=(lambda: click.echo(on_ready)) if on_ready else None)
    # uvicorn's own access log is replaced by Exemplar's (route, status, ms, request id, key).
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            timeout_graceful_shutdown=30, access_log=False, log_config=None)
    uvicorn.Server(config).run()


@main.command()
@click.argument("pool")
@click.argument("source", type=click.Path(path_type=Path))
@_data_dir
@click.option("--encoder", default=None, help="Encoder spec, when the pool is created by this build "
              "[env EXEMPLAR_DEFAULT_ENCODER; default open_clip:exemplar-tiny].")
@click.option("--embed", type=click.Choice(["image", "text", "image+text"]), default=None,
              help="What is embedded, when the pool is created by this build [default: image].")
@click.option("--index", "index_spec", default=None,
              help="FAISS factory string or 'auto', when the pool is created by this build [default: auto].")
@click.option("--centre", is_flag=True, default=False,
              help="When the pool is created by this build: store its vectors centred (less their mean; see "
              "docs/methods.md).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "parquet", "arrow", "imagefolder", "webdataset"]),
              default=None, help="Source format (default: from the file name; a folder is an image folder, or "
              "WebDataset when it holds .tar shards).")
@click.option("--media-root", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Resolve image paths under this folder (default: the manifest's folder).")
@click.option("--mode", type=click.Choice(["replace", "upsert"]), default="replace", show_default=True,
              help="replace: the new version holds exactly the source; upsert: adds to the current version.")
@click.option("--shard-size", type=int, default=4096, show_default=True, help="Rows per checkpointed shard.")
@click.option("--workers", type=int, default=2, show_default=True, help="Image decoding threads.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default=None,
              help="Encode here or on Ray Data [env EXEMPLAR_EXECUTOR].")
@click.option("--ray-address", default=None, help="Ray cluster address [env EXEMPLAR_RAY_ADDRESS].")
def build(pool: str, source: Path, data_dir: Path | None, encoder: str | None, embed: str | None, index_spec: str | None,
          centre: bool, fmt: str | None, media_root: Path | None, mode: str, shard_size: int, workers: int,
          executor: str | None, ray_address: str | None) -> None:
    """Build a new version of POOL from SOURCE (a .jsonl, .csv or .parquet manifest, WebDataset .tar
    shards, or an image folder). A build that was killed resumes from its last completed shard when
    run again."""
    settings = _settings(data_dir=data_dir, default_encoder=encoder, executor=executor, ray_address=ray_address)
    configure_logging("warning")
    from exemplar.app.services import build_services
    from exemplar.retrieval import BuildSpec

    services = build_services(settings)  # resumes builds whose process died
    created = False
    try:
        try:
            _check_same_pool(services.pools.get(pool), encoder=encoder, embed=embed, index=index_spec,
                             centre=centre or None)
        except NotFound:
            services.pools.create(name=pool, encoder=settings.default_encoder, embed=embed or "image",
                                  index=index_spec or "auto", centre=centre)
            created = True
        active = services.jobs.list(pool=pool, states=("queued", "running"), kinds=("build",))
        if active:
            job = active[0]
            click.echo(f"resuming build {job.id} of {job.params['source']}", err=True)
        else:
            spec = BuildSpec(pool=pool, source=str(source.resolve()), format=fmt, mode=mode,  # type: ignore[arg-type]
                             media_root=str(media_root.resolve()) if media_root else None,
                             shard_size=shard_size, batch_size=max(settings.encode_batch_size, 256), workers=workers)
            job = services.builds.start(spec)
        if created:
            click.echo(f"created pool {pool!r} with encoder {settings.default_encoder}", err=True)
        job = _follow(services, job.id, f"building {pool}")
        if job.state != "succeeded":
            raise click.ClickException(f"build {job.state}: {json.dumps(job.errors)}")
        created = False
        result = job.result or {}
        for err in result.get("errors", [])[:20]:
            click.echo(f"skipped row {err['line']} ({err['item_id']}): {err['message']}", err=True)
        click.echo(json.dumps({k: result.get(k) for k in ("pool", "version", "added", "skipped", "seconds", "shards",
                                                          "resumed_shards", "index")}))
    except ExemplarError as exc:
        _fail(exc)
    finally:
        if created:  # a build that did not succeed leaves no pool behind it
            services.pools.delete(pool)
        services.close()


def _check_same_pool(record: Any, *, encoder: str | None, embed: str | None, index: str | None,  # noqa: ANN401 - PoolRecord
                     centre: bool | None = None) -> None:
    """Options that define a pool must match the existing pool's: a build never changes them silently."""
    given = {
        "--encoder": (encoder.strip() if encoder else None, record.encoder),
        "--embed": (embed, record.embed),
        "--index": (index, record.index),
        "--centre": (centre, record.centre),
    }
    differ = [f"{flag} {value!r} (the pool has {have!r})" for flag, (value, have) in given.items()
              if value is not None and value != have]
    if differ:
        raise click.ClickException(
            f"pool {record.name!r} exists with encoder {record.encoder!r}, embed {record.embed!r} and index "
            f"{record.index!r}; this build asks for {', '.join(differ)}. Build into a new pool name, or delete the "
            f"pool first (DELETE /v1/pools/{record.name}) to rebuild it with other settings."
        )


def _follow(services: Any, job_id: str, label: str) -> Any:  # noqa: ANN401 - Services, JobRecord
    """Show a job's progress until it ends; Ctrl-C cancels it."""
    import time

    job = services.jobs.get(job_id)
    with click.progressbar(length=job.progress.get("total") or 1, label=label, file=sys.stderr,
                           show_pos=True, show_eta=False) as bar:
        try:
            while job.state not in ("succeeded", "failed", "cancelled"):
                time.sleep(0.2)
                job = services.jobs.get(job_id)
                p = job.progress
                if p.get("total"):
                    bar.length = p["total"]
                bar.label = (f"{label}: {p.get('encoded', 0)} encoded, {p.get('skipped', 0)} skipped, "
                             f"{p.get('rate_per_s', 0):.0f}/s" + (f", ETA {p['eta_s']:.0f}s" if p.get("eta_s") else ""))
                bar.update(max(0, p.get("done", 0) - bar.pos))
        except KeyboardInterrupt:
            services.jobs.cancel(job_id)
            job = services.jobs.wait(job_id, timeout_s=60)
    return job


@main.command()
@click.argument("pool")
@_data_dir
@click.option("--text", default=None, help="Query text.")
@click.option("--image", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Query image file.")
@click.option("--item-id", default=None, help="Query by an item of the pool (excluded from the results).")
@click.option("--embedding", default=None, help="Query vector as a JSON list.")
@click.option("--strategy", default="topk", show_default=True)
@click.option("-k", "--k", "k", type=int, default=8, show_default=True)
@click.option("--k-per-class", type=int, default=None)
@click.option("--label", "labels", multiple=True, help="Only these labels (repeatable).")
@click.option("--domain", "domains", multiple=True, help="Only these domains (repeatable).")
@click.option("--exclude", "exclude_ids", multiple=True, help="Item ids to leave out (repeatable).")
@click.option("--order", type=click.Choice(["most_similar_first", "most_similar_last", "shuffle", "class_grouped"]),
              default="most_similar_first", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--offset", type=int, default=0, show_default=True)
@click.option("--invariant-base", type=click.Choice(["balanced", "topk"]), default="balanced", show_default=True)
@click.option("--fill", is_flag=True, help="Per-class quotas: let other classes take the slots of a class that runs out.")
def select(pool: str, data_dir: Path | None, text: str | None, image: Path | None, item_id: str | None,
           embedding: str | None, strategy: str, k: int, k_per_class: int | None, labels: tuple[str, ...],
           domains: tuple[str, ...], exclude_ids: tuple[str, ...], order: str, seed: int, offset: int,
           invariant_base: str, fill: bool) -> None:
    """Select demonstrations from POOL (in-process, no server needed) and print them as JSON."""
    settings = _settings(data_dir=data_dir)
    import pydantic

    from exemplar.app.schemas.select import SelectOptionsIn
    from exemplar.app.services import build_services
    from exemplar.retrieval import Query

    try:  # the same wire model and mapping as the HTTP API
        options = SelectOptionsIn(strategy=strategy, k=k, k_per_class=k_per_class, labels=list(labels) or None,
                                  domains=list(domains) or None, exclude_ids=list(exclude_ids), order=order,
                                  seed=seed, offset=offset, invariant_base=invariant_base, fill=fill).to_options()
    except pydantic.ValidationError as exc:
        raise click.UsageError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None
    services = build_services(settings)
    try:
        query = Query(
            image=image.read_bytes() if image else None,
            text=text,
            embedding=json.loads(embedding) if embedding else None,
            item_id=item_id,
        )
        result = services.selection.select(pool, query, strategy, options)
        click.echo(json.dumps({
            "pool": result.pool, "version": result.version, "encoder": result.encoder, "strategy": result.strategy,
            "demonstrations": [vars(d) for d in result.demonstrations], "shortfall": result.shortfall,
        }, indent=2))
    except ExemplarError as exc:
        _fail(exc)
    except (OSError, json.JSONDecodeError) as exc:
        raise click.ClickException(f"cannot read the query: {exc}") from None
    finally:
        services.close()


@main.group()
def items() -> None:
    """Read, list and delete a pool's items (in-process, no server needed)."""


def _print_json(data_dir: Path | None, work: Any) -> None:  # noqa: ANN401 - a callable of Services
    """Build the services, print what ``work(services)`` returns as JSON, close them."""
    from exemplar.app.services import build_services

    services = build_services(_settings(data_dir=data_dir))
    try:
        click.echo(json.dumps(work(services), indent=2))
    except ExemplarError as exc:
        _fail(exc)
    finally:
        services.close()


@items.command(name="get")
@click.argument("pool")
@click.argument("item_id")
@_data_dir
def items_get(pool: str, item_id: str, data_dir: Path | None) -> None:
    """Print one item of POOL's current version as JSON."""
    _print_json(data_dir, lambda services: vars(services.pools.item(pool, item_id)))


@items.command(name="list")
@click.argument("pool")
@_data_dir
@click.option("--label", "labels", multiple=True, help="Only these labels (repeatable).")
@click.option("--domain", "domains", multiple=True, help="Only these domains (repeatable).")
@click.option("--limit", type=int, default=100, show_default=True)
@click.option("--cursor", default=None, help="next_cursor of the previous page.")
def items_list(pool: str, data_dir: Path | None, labels: tuple[str, ...], domains: tuple[str, ...], limit: int,
               cursor: str | None) -> None:
    """Print one page of POOL's items (oldest write first) with the cursor of the next page."""
    def page(services: Any) -> dict[str, Any]:  # noqa: ANN401 - Services
        got = services.pools.list_items(pool, labels=labels or None, domains=domains or None, limit=limit, cursor=cursor)
        return {"version": got.version, "matching": got.matching, "next_cursor": got.next_cursor,
                "items": [vars(i) for i in got.items]}

    _print_json(data_dir, page)


@items.command(name="delete")
@click.argument("pool")
@click.argument("item_ids", nargs=-1, required=True)
@_data_dir
def items_delete(pool: str, item_ids: tuple[str, ...], data_dir: Path | None) -> None:
    """Delete ITEM_IDS from POOL as one new version; ids it does not hold are reported."""
    _print_json(data_dir, lambda services: vars(services.pools.delete_items(pool, list(item_ids))))


@main.command()
@click.argument("pool")
@_data_dir
def compact(pool: str, data_dir: Path | None) -> None:
    """Merge POOL's small segments and purge its deleted rows now (it also happens after writes)."""
    def run(services: Any) -> Any:  # noqa: ANN401 - Services, the job's result
        job = services.jobs.wait(services.compaction.start(pool).id, timeout_s=24 * 3600)
        if job.state != "succeeded":
            raise click.ClickException(f"compaction {job.state}: {json.dumps(job.errors)}")
        return job.result

    _print_json(data_dir, run)


def _adapter_params(pairs: tuple[str, ...]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--param")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


@main.command()
@click.argument("pool")
@_data_dir
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="CCI parameter, e.g. --param head=linear --param epochs=50 (see docs/methods.md).")
def adapt(pool: str, data_dir: Path | None, params: tuple[str, ...]) -> None:
    """Train the CCI adapter of POOL's current version (for strategy=invariant) and store it."""
    settings = _settings(data_dir=data_dir)
    configure_logging("warning")
    from exemplar.app.services import build_services

    services = build_services(settings)
    try:
        job = services.adapters.start(pool, _adapter_params(params))
        job = services.jobs.wait(job.id, timeout_s=24 * 3600)
        if job.state != "succeeded":
            raise click.ClickException(f"adapter training {job.state}: {job.errors}")
        click.echo(json.dumps(job.result))
    except ExemplarError as exc:
        _fail(exc)
    finally:
        services.close()


@main.command(name="eval")
@click.argument("pool")
@_data_dir
@click.option("-k", "--k", "k", type=int, default=8, show_default=True)
@click.option("--strategies", default=None,
              help="Comma-separated; 'invariant:topk' / 'invariant:balanced' pick invariant's base "
              "[default: random,topk,balanced,invariant:topk,invariant:balanced; without invariant with --fusion].")
@click.option("--max-queries", type=click.IntRange(1), default=None,
              help="Queries per held-out domain (sampled) [default 500; 50 with --mllm].")
@click.option("--resamples", type=int, default=2000, show_default=True, help="Bootstrap resamples.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="CCI parameter for the per-fold adapters.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--mllm", default=None, metavar="NAME",
              help="Also ask this configured model endpoint (EXEMPLAR_MLLM_ENDPOINTS) to answer every held-out query "
              "with each strategy's demonstrations, zero-shot and with perturbed labels; report its accuracy.")
@click.option("--label-arms", default="shuffled", show_default=True,
              help="With --mllm: comma-separated label perturbations, each an arm: shuffled, random, noise:P "
              "(empty for none).")
@click.option("--label-arm-strategy", default=None, help="With --mllm: the strategy whose demonstrations the label "
              "and order arms use [default: the first of --strategies].")
@click.option("--order-arms", default="", show_default=True,
              help="With --mllm: comma-separated layouts, each an arm over the same demonstrations: most_similar_last "
              "(RICES), shuffle, class_grouped (the other arms show them most similar first).")
@click.option("--instruction", default=None, help="With --mllm: added to every user turn, e.g. the question.")
@click.option("--system", default=None, help="With --mllm: the system message.")
@click.option("--no-images", is_flag=True, help="With --mllm: show texts only.")
@click.option("--concurrency", type=click.IntRange(1, 16), default=4, show_default=True,
              help="With --mllm: model calls in flight at most.")
@click.option("--fusion", type=click.FloatRange(0, 1), default=None, metavar="IMAGE_WEIGHT",
              help="Image+text pools: select by IMAGE_WEIGHT * cos(image) + (1 - IMAGE_WEIGHT) * cos(text), as a "
              "request's 'fusion' does, instead of the fused vector.")
def evaluate(pool: str, data_dir: Path | None, k: int, strategies: str | None, max_queries: int | None, resamples: int,
             seed: int, params: tuple[str, ...], as_json: bool, mllm: str | None, label_arms: str,
             label_arm_strategy: str | None, order_arms: str, instruction: str | None, system: str | None,
             no_images: bool, concurrency: int, fusion: float | None) -> None:
    """Leave-one-domain-out selection quality of each strategy on POOL, and with --mllm the downstream
    model's answer accuracy (see docs/methods.md)."""
    settings = _settings(data_dir=data_dir)
    configure_logging("warning")
    from exemplar.app.adapters import CCITrainer
    from exemplar.app.evaluation import format_model_report, format_report
    from exemplar.app.services import build_services
    from exemplar.retrieval import evaluate_lodo, evaluate_with_model
    from exemplar.retrieval.perturb import parse_demo_labels
    from exemplar.retrieval.prompting import PromptTemplate

    if strategies is None:
        strategies = "random,topk,balanced" + ("" if fusion is not None else ",invariant:topk,invariant:balanced")
    specs = [s.strip() for s in strategies.split(",") if s.strip()]
    if fusion is not None and any(s.startswith("invariant") for s in specs):
        raise click.BadParameter("invariant ranks in its adapter's space, which maps one vector per item: leave it "
                                 "out of --strategies with --fusion", param_hint="--strategies")
    services = build_services(settings)
    try:
        snap = services.snapshots.snapshot(pool)
        if fusion is not None:
            snap = snap.in_fused_space((fusion, 1.0 - fusion))
        if mllm is None:
            report = evaluate_lodo(
                snap, strategies=specs, k=k,
                trainer=CCITrainer(settings.device), adapter_params=_adapter_params(params),
                max_queries_per_domain=max_queries or 500, resamples=resamples, seed=seed,
            )
            click.echo(json.dumps(report.to_dict(), indent=2) if as_json else format_report(report))
            return
        model_report = evaluate_with_model(
            snap, services.mllms.get(mllm), strategies=specs,
            label_arms=[parse_demo_labels(a.strip(), "label-arms") for a in label_arms.split(",") if a.strip()],
            label_arm_strategy=label_arm_strategy, order_arms=[o.strip() for o in order_arms.split(",") if o.strip()],
            k=k, trainer=CCITrainer(settings.device),
            adapter_params=_adapter_params(params), max_queries_per_domain=max_queries or 50, resamples=resamples,
            seed=seed, template=PromptTemplate(system=system, instruction=instruction, include_images=not no_images),
            concurrency=concurrency,
        )
        click.echo(json.dumps(model_report.to_dict(), indent=2) if as_json else format_model_report(model_report))
        failed = [arm for arm, result in model_report.arms.items() if result.failures == model_report.queries]
        if failed:
            click.echo(f"warning: every model call failed in arm(s) {', '.join(failed)}", err=True)
    except ExemplarError as exc:
        _fail(exc)
    finally:
        services.close()


@main.command()
@click.argument("kind", type=click.Choice(["shapes", "embeddings"]))
@click.argument("out_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--per-class", type=int, default=60, show_default=True, help="Items per class and domain.")
@click.option("--seed", type=int, default=0, show_default=True)
def sample(kind: str, out_dir: Path, per_class: int, seed: int) -> None:
    """Write generated sample data with domain shift: shape images (for an open_clip pool) or
    domain-dominant embeddings (for a precomputed:64 pool). Prints the manifest path."""
    from exemplar.samples import generate_shapes, write_embedding_manifest

    if kind == "shapes":
        manifest = generate_shapes(out_dir, per_class_per_domain=per_class, seed=seed)
    else:
        manifest = write_embedding_manifest(out_dir, per_class_per_domain=per_class, seed=seed)
    click.echo(str(manifest))


@main.command(name="hash-key")
@click.option("--name", default="admin", show_default=True)
@click.option("--scope", "scopes", multiple=True, type=click.Choice(["query", "admin"]), default=("admin",),
              show_default=True)
@click.option("--key", default=None, help="Hash this key instead of making a new one (or pipe it on stdin with -).")
def hash_key_command(name: str, scopes: tuple[str, ...], key: str | None) -> None:
    """Make an API key and print it once, with the EXEMPLAR_API_KEYS entry that holds only its hash."""
    import secrets

    from exemplar.app.auth import hash_key

    if key == "-":
        key = sys.stdin.readline().strip()
    new = key is None
    key = key or "exm_" + secrets.token_urlsafe(32)
    if new:
        click.echo(f"key (shown once, give it to the client): {key}", err=True)
    click.echo(json.dumps({"name": name, "sha256": hash_key(key), "scopes": list(scopes)}))


@main.command()
@_data_dir
@click.option("--host", default=None, help="Bind address [env EXEMPLAR_HOST; default 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port [env EXEMPLAR_PORT; default 8000].")
@click.option("--per-class", type=int, default=12, show_default=True, help="Images per class and domain.")
@click.option("--fresh", is_flag=True, help="Rebuild the demo pool even if it exists.")
@click.option("--no-serve", is_flag=True, help="Build the demo pool and print the curl, without serving.")
def demo(data_dir: Path | None, host: str | None, port: int | None, per_class: int, fresh: bool, no_serve: bool) -> None:
    """Generate a labelled sample pool, build it and serve it, printing a ready-to-paste curl."""
    from exemplar.app.demo import DEMO_POOL, curl_example, prepare_demo

    settings = _settings(data_dir=data_dir, host=host, port=port)
    configure_logging("warning")
    try:
        query_id = prepare_demo(settings, per_class=per_class, fresh=fresh, echo=lambda m: click.echo(m, err=True))
    except ExemplarError as exc:
        _fail(exc)
    curl = curl_example(settings, DEMO_POOL, query_id)
    if no_serve:
        click.echo(curl)
        return
    _serve(settings, on_ready=f"\nExemplar is serving the demo pool at http://{settings.host}:{settings.port}\n"
                              f"Try:\n\n{curl}\n")
