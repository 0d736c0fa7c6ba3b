"""The findings collector (`pdeinf.pipeline.findings`): records gathered from the notebooks'
results JSON, validated, written byte-stably, rendered as the README table."""
from __future__ import annotations

import json

import pytest

from pdeinf.analysis.verdicts import VERDICT_RULES, describe_rule
from pdeinf.errors import InputError


def _record(pde="CE", model="unet", est=1.2, low=0.8, high=1.6, verdict="reproduced", **extra):
    return {"pde": pde, "model": model, "estimate": est, "low": low, "high": high,
            "n_seeds": 3, "n_batches": 2, "verdict": verdict, "rule": "rule text",
            "paper": None, **extra}


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PDEINF_HOME", str(tmp_path))
    (tmp_path / "results").mkdir()
    (tmp_path / "notebooks").mkdir()
    for name in ("03_seed_temporal", "08_followup_dynamics_spectrum", "09_followup_rollout_link",
                 "10_followup_variants", "14_findings"):
        (tmp_path / "notebooks" / f"{name}.ipynb").write_text("{}")
    return tmp_path


def _write(home, notebook, findings, profile="smoke", **extra):
    data = {"profile": profile, "figures": [], **extra}
    if findings is not None:
        data["findings"] = findings
    (home / "results" / f"{notebook}.json").write_text(json.dumps(data))


def _populate(home):
    _write(home, "03_seed_temporal", {
        "temporal_decay": [_record(), _record(model="vit", est=-0.1, low=-0.4, high=0.2,
                                              verdict="inconclusive")],
        "inter_below_intra": [_record(est=2.0, low=1.5, high=2.5)],
    })
    _write(home, "09_followup_rollout_link", {
        "rollout_link_negative": [_record(est=-0.5, low=-0.7, high=-0.2, dt=1, paper=-0.57),
                                  _record(est=-0.1, low=-0.3, high=0.1, dt=16, paper=-0.019,
                                          verdict="inconclusive", needed=None)],
    })
    _write(home, "13_interventions", {
        "intervention_effect": [_record(est=0.05, low=None, high=None, verdict="inconclusive",
                                        recipe="pushforward")]})
    _write(home, "08_followup_dynamics_spectrum", {})
    _write(home, "07_seed_ntk", {"vit_smaller_ntk_eigenvalue": _record(model="unet-vit")},
           profile="quick")
    _write(home, "14_findings", {"temporal_decay": "not a record"})  # its own: never read


def test_collects_rows_with_rules_layers_and_paper_numbers(home):
    from pdeinf.pipeline.findings import collect_findings

    _populate(home)
    out = collect_findings("smoke")
    rows = out["findings"]
    assert out["profile"] == "smoke"
    assert len(rows) == 6
    assert out["notebooks"] == {"03_seed_temporal": 3, "08_followup_dynamics_spectrum": 0,
                                "09_followup_rollout_link": 2, "13_interventions": 1}
    # layers ordered seed paper -> follow-up -> ours; rules in VERDICT_RULES order within
    assert [r["layer"] for r in rows] == ["seed paper"] * 3 + ["follow-up"] * 2 + ["ours"]
    assert [r["finding"] for r in rows[:3]] == ["temporal_decay", "temporal_decay",
                                                "inter_below_intra"]
    td = rows[0]
    rule = VERDICT_RULES["temporal_decay"]
    assert td["paper_figure"] == rule.figures
    texts = out["rules"]["temporal_decay"]
    assert texts["claim"] == rule.claim and texts["rule"] == "rule text"
    assert texts["paper_note"] == rule.paper_note and texts["layer"] == "seed paper"
    assert "rule" not in td and "claim" not in td  # long texts once per finding
    assert set(out["rules"]) == {r["finding"] for r in rows}
    assert td["paper_value"] == pytest.approx(rule.paper_values["CE-unet"])  # from the registry
    assert (td["estimate"], td["low"], td["high"], td["n_seeds"], td["n_batches"]) == \
        (1.2, 0.8, 1.6, 3, 2)
    assert rows[1]["paper_value"] == pytest.approx(rule.paper_values["CE-vit"])
    dts = [r["dt"] for r in rows[3:5]]
    assert dts == [1, 16] and rows[3]["paper_value"] == -0.57  # the record's own number
    assert rows[5]["finding"] == "intervention_effect" and rows[5]["recipe"] == "pushforward"
    assert rows[5]["paper_value"] is None and rows[5]["low"] is None
    assert out["missing"] == {
        "07_seed_ntk": "results are of profile 'quick', not 'smoke'",
        "08_followup_dynamics_spectrum": "'findings' is empty",
        "10_followup_variants": "no results JSON (notebook not run)",
    }
    assert "temporal_decay" not in out["rules_without_record"]
    assert "class_locked" in out["rules_without_record"]


def test_no_results_at_all_is_not_an_error(home):
    from pdeinf.pipeline.findings import collect_findings, findings_markdown

    out = collect_findings("smoke")
    assert out["findings"] == [] and set(out["missing"]) == {
        "03_seed_temporal", "08_followup_dynamics_spectrum", "09_followup_rollout_link",
        "10_followup_variants"}
    assert "Without findings records" in findings_markdown(out)


@pytest.mark.parametrize("bad, message", [
    ({"verdict": "maybe"}, "'verdict' must be one of"),
    ({"estimate": "big"}, "'estimate' must be a number"),
    ({"n_seeds": 2.5}, "'n_seeds' must be an integer"),
    ({"low": 3.0, "high": 1.0}, "'low' 3.0 exceeds 'high' 1.0"),
])
def test_malformed_record_names_notebook_and_key(home, bad, message):
    from pdeinf.pipeline.findings import collect_findings

    _write(home, "04_seed_classes", {"class_locked": [_record(), {**_record(), **bad}]})
    with pytest.raises(InputError) as err:
        collect_findings("smoke")
    text = str(err.value)
    assert "04_seed_classes.json" in text and "findings['class_locked'][1]" in text
    assert message in text


def test_missing_key_and_non_dict_records_are_named(home):
    from pdeinf.pipeline.findings import collect_findings

    rec = _record()
    del rec["n_batches"]
    _write(home, "05_seed_similarity", {"similarity_decay": rec})
    with pytest.raises(InputError, match=r"05_seed_similarity\.json findings\['similarity_decay'\]: "
                                         r"record lacks \['n_batches'\]"):
        collect_findings("smoke")
    _write(home, "05_seed_similarity", ["not", "a", "dict"])
    with pytest.raises(InputError, match="'findings' must be a dict"):
        collect_findings("smoke")


def test_markdown_table_rows(home):
    from pdeinf.pipeline.findings import collect_findings, findings_markdown

    _populate(home)
    text = findings_markdown(collect_findings("smoke"))
    lines = text.splitlines()
    assert lines[0].startswith("| Finding | Layer | Paper figure | PDE / model | Paper | Ours")
    body = [line for line in lines[2:] if line.startswith("| ")]
    assert len(body) == 6  # one row per finding and (PDE, model) (and dt / recipe)
    first = body[0].split(" | ")
    assert first[0] == "| temporal_decay" and first[1] == "seed paper"
    assert first[2] == VERDICT_RULES["temporal_decay"].figures and first[3] == "CE / unet"
    assert first[4] == f"{VERDICT_RULES['temporal_decay'].paper_values['CE-unet']:.3g}"
    assert first[5] == "1.2 [0.8, 1.6]" and first[6] == "3 x 2" and first[7] == "reproduced"
    assert lines[0].endswith("| Verdict | Seeds x batches for a decisive verdict |")
    assert first[8] == "– |"  # a record without `needed`
    assert any("rollout_link_negative (dt=16)" in line for line in body)
    assert any("intervention_effect (pushforward)" in line and "(no interval)" in line
               for line in body)
    assert "07_seed_ntk (results are of profile 'quick'" in text


def test_write_is_byte_identical_on_rerun_and_changes_with_numbers(home):
    from pdeinf.pipeline.findings import findings_path, write_findings

    _populate(home)
    ablation = [{"finding": "class_locked", "change": 0.1234567891, "low": float("nan")}]
    path = write_findings("smoke", ablation=ablation)
    assert path == findings_path("smoke") == home / "figures" / "findings_smoke.json"
    first = path.read_bytes()
    assert write_findings("smoke", ablation=ablation).read_bytes() == first
    data = json.loads(first)
    assert list(data) == sorted(data)  # stable key order
    assert data["ablation"][0]["change"] == 0.123457 and data["ablation"][0]["low"] is None
    assert not any(k in first.decode() for k in ("date", "time\"", "created"))
    rec = json.loads((home / "results" / "03_seed_temporal.json").read_text())
    rec["findings"]["temporal_decay"][0]["estimate"] = 1.3
    (home / "results" / "03_seed_temporal.json").write_text(json.dumps(rec))
    assert write_findings("smoke", ablation=ablation).read_bytes() != first


def test_rule_text_of_real_producers_is_accepted(home):
    """A record as `seed_paper_findings.finding_record` writes it passes validation."""
    import xarray as xr

    from pdeinf.analysis.seed_paper_findings import finding_record
    from pdeinf.pipeline.findings import collect_findings

    ci = xr.DataArray([1.0, 0.5, 1.5], dims="ci", coords={"ci": ["estimate", "low", "high"]},
                      attrs={"n_seeds": 3, "n_batches": 2, "n_resamples": 1000, "random_state": 0})
    rec = finding_record("class_locked", ci, pde="NS", model="vit", key="NS-vit")
    _write(home, "04_seed_classes", {"class_locked": [rec]})
    row = collect_findings("smoke")["findings"][0]
    out = collect_findings("smoke")
    assert out["rules"]["class_locked"]["rule"] == describe_rule("class_locked")
    assert row["verdict"] == "reproduced"
    assert row["paper_value"] == pytest.approx(VERDICT_RULES["class_locked"].paper_values["NS-vit"],
                                               rel=1e-5)


def test_table_column_for_a_decisive_verdict(home):
    """Each `needed` status is worded in the table's last column, from the record's summary."""
    from pdeinf.pipeline.findings import collect_findings, findings_markdown

    base = {"effect": 0.1, "s_seed": 0.2, "s_batch": 0.3, "criterion": None}
    needed = [
        {**base, "n_seeds": 3, "n_batches": 2, "status": "decisive at the measured design"},
        {**base, "n_seeds": 8, "n_batches": 3, "status": "larger design"},
        {**base, "n_seeds": None, "n_batches": None, "status": "beyond the grid",
         "largest": [20, 36]},
        {**base, "n_seeds": None, "n_batches": None, "status": "not estimable",
         "reason": "1 seed(s): no between-seed spread"},
        {**base, "n_seeds": None, "n_batches": None},  # an older summary without a status
    ]
    _write(home, "03_seed_temporal", {"temporal_decay": [
        _record(est=float(i), needed=n) for i, n in enumerate(needed)]})
    text = findings_markdown(collect_findings("smoke"))
    last = [line.split(" | ")[-1] for line in text.splitlines()[2:] if line.startswith("| ")]
    assert last == ["decisive at 3 x 2 (as measured) |", "8 x 3 |",
                    "beyond the grid (> 20 x 36) |",
                    "not estimable (1 seed(s): no between-seed spread) |", "beyond the grid |"]
    _write(home, "03_seed_temporal", {"temporal_decay": [
        _record(needed={**base, "n_seeds": 2, "n_batches": 1, "status": "maybe"})]})
    with pytest.raises(InputError, match="'needed' status must be one of"):
        collect_findings("smoke")
    _write(home, "03_seed_temporal", {"temporal_decay": [
        _record(needed={**base, "n_seeds": 2.5, "n_batches": 1, "status": "larger design"})]})
    with pytest.raises(InputError, match="needed.n_seeds"):
        collect_findings("smoke")


def test_readme_table_is_replaced_by_the_rendered_one(home):
    from pdeinf.pipeline.findings import collect_findings, findings_markdown, replace_findings_table

    _populate(home)
    findings = collect_findings("smoke")
    old = ("| Finding | Layer | Paper figure | PDE / model | Paper | Ours (95% CI) | "
           "Seeds x batches | Verdict |\n|---|---|\n| old row | 1 |\n\n"
           "Without findings records: 08 (none).\n")
    readme = "# Title\n\nIntro.\n\n" + old + "\n\n**Next section.**\n"
    out = replace_findings_table(readme, findings)
    assert out == "# Title\n\nIntro.\n\n" + findings_markdown(findings) + "\n\n**Next section.**\n"
    assert replace_findings_table(out, findings) == out  # idempotent
    with pytest.raises(InputError, match="one findings table"):
        replace_findings_table("# no table\n", findings)
