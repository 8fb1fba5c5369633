"""``harness models``: catalog rows and the table/JSON command."""

import json

import typer
from typer.testing import CliRunner

from harness.models import BACKBONE_CARDS, catalog
from harness.models.catalog import catalog_rows, deviation_pct, models_command

KEYS = {"name", "variant", "params_total", "params_unshared", "flops_256", "macs_256_exact", "macs_256", "sites",
        "published_params", "published_flops_256", "flops_convention", "source"}


def run(*args):
    app = typer.Typer()
    app.command()(models_command)
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_json_rows_cover_every_variant_with_real_figures():
    rows = json.loads(run("--json"))
    assert all(set(r) == KEYS for r in rows)
    pairs = {(r["name"], r["variant"]) for r in rows}
    assert {(name, "tiny") for name in BACKBONE_CARDS} <= pairs
    assert {("convir", v) for v in ("full", "s", "b", "l")} <= pairs
    by = {(r["name"], r["variant"]): r for r in rows}
    msbdn = by["msbdn", "full"]
    assert msbdn["params_total"] == 31_353_061 and msbdn["published_params"] == 31_350_000
    assert msbdn["macs_256_exact"] == msbdn["flops_256"] // 2 and abs(msbdn["macs_256_exact"] / 24.43e9 - 1) < 0.01
    # the published 41.5 G is thop's count, which charges transposed convs per output pixel
    assert msbdn["flops_convention"] == "thop" and abs(msbdn["macs_256"] / 41.5e9 - 1) < 0.01
    assert by["dehamer", "tiny"]["published_params"] is None and by["dehamer", "full"]["sites"] == 17


def test_table_shows_ours_beside_published_with_deviation(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr(catalog, "catalog_rows", lambda include_flops=True: catalog_rows(include_flops, ["convir"]))
    out = run()
    line = next(l for l in out.splitlines() if "convir" in l and " s " in l)
    # ConvIR's published MACs follow thop: compared with our thop-style 41.94 G, not the exact 38.72 G
    assert "5.531" in line and "5.530" in line and "38.72" in line and "41.94" in line and "42.10" in line
    assert "thop" in line and "-0.4%" in line


def test_rows_without_flops_and_filtered():
    rows = catalog_rows(include_flops=False, names=["convir"])
    assert [r["variant"] for r in rows] == ["full", "s", "b", "l", "tiny"]
    assert all(r["flops_256"] is None and r["macs_256"] is None for r in rows)
    assert rows[0]["params_total"] == rows[2]["params_total"] == 8_630_665


def test_deviation_pct():
    assert deviation_pct(110, 100) == 10.0
    assert deviation_pct(5, None) is None and deviation_pct(None, 5) is None
