"""The command line, in-process through click's runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from exemplar.app.cli import main
from exemplar.samples import generate_shapes


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.mark.parametrize("command", [[], ["serve"], ["build"], ["select"], ["demo"], ["adapt"], ["eval"], ["sample"]])
def test_every_command_has_help(runner: CliRunner, command: list[str]) -> None:
    result = runner.invoke(main, [*command, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_build_then_select(runner: CliRunner, tmp_path: Path) -> None:
    manifest = generate_shapes(tmp_path / "src", per_class_per_domain=3)
    data = tmp_path / "data"
    result = runner.invoke(main, ["build", "shapes", str(manifest), "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["version"] == 1 and report["added"] == 36 and report["skipped"] == 0
    result = runner.invoke(main, ["select", "shapes", "--data-dir", str(data), "--item-id", "site-a-circle-0000",
                                  "--strategy", "balanced", "--k-per-class", "2", "--domain", "site-b"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert len(body["demonstrations"]) == 8
    assert {d["domain"] for d in body["demonstrations"]} == {"site-b"}
    assert sorted({d["label"] for d in body["demonstrations"]}) == ["circle", "cross", "square", "triangle"]


def test_data_dir_and_options_come_from_the_environment(runner: CliRunner, tmp_path: Path) -> None:
    manifest = generate_shapes(tmp_path / "src", per_class_per_domain=2)
    env = {"EXEMPLAR_DATA_DIR": str(tmp_path / "envdata"), "EXEMPLAR_SELECT_K": "3"}
    assert runner.invoke(main, ["build", "p", str(manifest)], env=env).exit_code == 0
    assert (tmp_path / "envdata" / "catalog.sqlite3").is_file()
    result = runner.invoke(main, ["select", "p", "--text", "a circle"], env=env)
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["demonstrations"]) == 3


def test_errors_are_reported_without_tracebacks(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["select", "missing", "--data-dir", str(tmp_path), "--text", "x"])
    assert result.exit_code == 1 and "not_found [pool]: pool 'missing' does not exist" in result.output
    result = runner.invoke(main, ["build", "p", str(tmp_path / "none.jsonl"), "--data-dir", str(tmp_path)])
    assert result.exit_code == 1 and "does not exist" in result.output


def test_demo_builds_the_sample_pool_and_prints_a_curl(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["demo", "--no-serve", "--data-dir", str(tmp_path), "--port", "8123", "--per-class", "2"])
    assert result.exit_code == 0, result.output
    curl = result.stdout.strip().splitlines()[-1]
    assert curl.startswith("curl -s -X POST http://127.0.0.1:8123/v1/pools/demo/select")
    assert '"strategy": "balanced"' in curl
    again = runner.invoke(main, ["demo", "--no-serve", "--data-dir", str(tmp_path), "--port", "8123"])
    assert again.exit_code == 0 and "built pool" not in again.output, "an existing demo pool is reused"


def test_sample_adapt_and_eval(runner: CliRunner, tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    manifest = runner.invoke(main, ["sample", "embeddings", str(tmp_path / "emb"), "--per-class", "15"]).stdout.strip()
    assert Path(manifest).is_file()
    assert runner.invoke(main, ["build", "emb", manifest, "--encoder", "precomputed:64", "--data-dir", data]).exit_code == 0
    result = runner.invoke(main, ["adapt", "emb", "--data-dir", data, "--param", "epochs=5", "--param", "head=mlp"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["version"] == 1
    result = runner.invoke(main, ["eval", "emb", "--data-dir", data, "--json", "--resamples", "100",
                                  "--strategies", "topk,invariant:topk", "--param", "epochs=30"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report["metrics"]) == {"topk", "invariant:topk"} and report["queries"] == 360
    table = runner.invoke(main, ["eval", "emb", "--data-dir", data, "--resamples", "100", "--strategies", "random,topk"])
    assert "| topk |" in table.stdout and "topk - random" in table.stdout
    bad = runner.invoke(main, ["adapt", "emb", "--data-dir", data, "--param", "head"])
    assert bad.exit_code == 2 and "KEY=VALUE" in bad.output
    shapes = runner.invoke(main, ["sample", "shapes", str(tmp_path / "shapes"), "--per-class", "1"])
    assert shapes.exit_code == 0 and Path(shapes.stdout.strip()).is_file()


def _pools(data: Path) -> list[str]:
    from exemplar.retrieval.store.catalog import Catalog

    catalog = Catalog(data / "catalog.sqlite3")
    try:
        return [p.name for p in catalog.pools()]
    finally:
        catalog.close()


def test_a_build_that_fails_creates_no_pool(runner: CliRunner, tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = runner.invoke(main, ["build", "derm", str(tmp_path / "missing.jsonl"), "--data-dir", str(data)])
    assert result.exit_code != 0 and "does not exist" in result.output
    assert _pools(data) == []


def test_build_options_that_differ_from_the_existing_pool_are_refused(runner: CliRunner, tmp_path: Path) -> None:
    manifest = generate_shapes(tmp_path / "src", per_class_per_domain=1)
    data = tmp_path / "data"
    assert runner.invoke(main, ["build", "derm", str(manifest), "--data-dir", str(data)]).exit_code == 0
    for option in (["--encoder", "open_clip:ViT-B-32@laion2b_s34b_b79k"], ["--embed", "text"], ["--index", "HNSW32"]):
        result = runner.invoke(main, ["build", "derm", str(manifest), "--data-dir", str(data), *option])
        assert result.exit_code != 0, option
        assert f"{option[0]} {option[1]!r}" in result.output and "open_clip:exemplar-tiny" in result.output
        assert "new pool name" in result.output
    # The same settings as the pool's are fine; the pool still has its one build's version.
    same = ["--encoder", "open_clip:exemplar-tiny", "--embed", "image", "--index", "auto", "--mode", "upsert"]
    result = runner.invoke(main, ["build", "derm", str(manifest), "--data-dir", str(data), *same])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["version"] == 2


@pytest.mark.parametrize("strategy,extra,per_label", [("random", ["--k-per-class", "1"], 1),
                                                      ("balanced", ["--k-per-class", "1"], 1)])
def test_select_k_per_class_from_the_command_line(runner: CliRunner, tmp_path: Path, strategy: str, extra: list[str],
                                                  per_label: int) -> None:
    manifest = generate_shapes(tmp_path / "src", per_class_per_domain=1)
    data = tmp_path / "data"
    assert runner.invoke(main, ["build", "p", str(manifest), "--data-dir", str(data)]).exit_code == 0
    result = runner.invoke(main, ["select", "p", "--data-dir", str(data), "--item-id", "site-a-circle-0000",
                                  "--strategy", strategy, *extra])
    assert result.exit_code == 0, result.output
    labels = [d["label"] for d in json.loads(result.stdout)["demonstrations"]]
    assert sorted(labels) == sorted(set(labels)) * per_label and len(set(labels)) == 4
    refused = runner.invoke(main, ["select", "p", "--data-dir", str(data), "--item-id", "site-a-circle-0000",
                                   "--strategy", "topk", "--k-per-class", "1"])
    assert refused.exit_code != 0 and "k_per_class" in refused.output


def test_items_get_list_and_delete(runner: CliRunner, tmp_path: Path) -> None:
    manifest = generate_shapes(tmp_path / "src", per_class_per_domain=1)
    data = ["--data-dir", str(tmp_path / "data")]
    assert runner.invoke(main, ["build", "p", str(manifest), *data]).exit_code == 0
    got = runner.invoke(main, ["items", "get", "p", "site-a-circle-0000", *data])
    assert got.exit_code == 0, got.output
    assert json.loads(got.stdout)["label"] == "circle"
    first = json.loads(runner.invoke(main, ["items", "list", "p", "--limit", "5", *data]).stdout)
    rest = json.loads(runner.invoke(main, ["items", "list", "p", "--cursor", first["next_cursor"], *data]).stdout)
    ids = [i["id"] for i in first["items"] + rest["items"]]
    assert len(ids) == len(set(ids)) == first["matching"] == 12 and rest["next_cursor"] is None
    deleted = runner.invoke(main, ["items", "delete", "p", "site-a-circle-0000", "ghost", *data])
    assert deleted.exit_code == 0, deleted.output
    assert json.loads(deleted.stdout) == {"version": 2, "deleted": ["site-a-circle-0000"], "missing": ["ghost"]}
    gone = runner.invoke(main, ["items", "get", "p", "site-a-circle-0000", *data])
    assert gone.exit_code != 0 and "not_found" in gone.output


def test_compact_from_the_command_line(runner: CliRunner, tmp_path: Path) -> None:
    manifest = generate_shapes(tmp_path / "src", per_class_per_domain=1)
    data = ["--data-dir", str(tmp_path / "data")]
    assert runner.invoke(main, ["build", "p", str(manifest), *data]).exit_code == 0
    assert runner.invoke(main, ["items", "delete", "p", *[f"site-a-{s}-0000" for s in ("circle", "cross", "square")],
                                *data]).exit_code == 0
    result = runner.invoke(main, ["compact", "p", *data])
    assert result.exit_code == 0, result.output
    merges = json.loads(result.stdout)["merges"]
    assert merges and merges[0]["purged"] == 3 and merges[0]["rows"] == 9


def test_eval_with_fusion_weighs_the_modalities(runner: CliRunner, tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    manifest = runner.invoke(main, ["sample", "shapes", str(tmp_path / "shapes"), "--per-class", "4"]).stdout.strip()
    built = runner.invoke(main, ["build", "it", manifest, "--encoder", "open_clip:exemplar-tiny", "--embed", "image+text",
                                 "--data-dir", data])
    assert built.exit_code == 0, built.output

    def precision(*extra: str) -> float:
        result = runner.invoke(main, ["eval", "it", "--data-dir", data, "--json", "--resamples", "50",
                                      "--strategies", "topk", *extra])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["metrics"]["topk"]["precision_at_k"]["mean"]

    # The sample's captions name the class ("a circle imaged at site-a") and differ from the query's
    # only in the site, so text alone beats the images of another site: the weights move the figure.
    assert precision("--fusion", "0") > precision("--fusion", "1")
    bad = runner.invoke(main, ["eval", "it", "--data-dir", data, "--fusion", "1.5"])
    assert bad.exit_code == 2
    defaults = runner.invoke(main, ["eval", "it", "--data-dir", data, "--json", "--resamples", "20", "--fusion", "0.5"])
    assert defaults.exit_code == 0, defaults.output
    assert set(json.loads(defaults.stdout)["metrics"]) == {"random", "topk", "balanced"}  # invariant left out
    invariant = runner.invoke(main, ["eval", "it", "--data-dir", data, "--fusion", "0.5", "--strategies", "invariant:topk"])
    assert invariant.exit_code == 2 and "adapter" in invariant.output
    plain = runner.invoke(main, ["build", "img", manifest, "--encoder", "open_clip:exemplar-tiny", "--data-dir", data])
    assert plain.exit_code == 0, plain.output
    refused = runner.invoke(main, ["eval", "img", "--data-dir", data, "--fusion", "0.5", "--strategies", "topk"])
    assert refused.exit_code != 0 and "fusion" in refused.output
