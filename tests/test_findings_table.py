"""The findings collector (`pdeinf.pipeline.findings`): records of the evaluator gathered from the
notebooks' results JSON, validated, Holm-adjusted within each layer, written byte-stably with the
rules' hash, rendered as the README table."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pdeinf.analysis import registry
from pdeinf.analysis.evaluate import evaluate_finding
from pdeinf.errors import InputError
from pdeinf.pipeline.report import to_jsonable


def _record(name="temporal_decay", mean=1.2, *, key="CE-unet", pde="CE", model="unet", sd=0.1,
            n_seeds=5, rng_seed=0, **extra):
    """A record as the notebooks write it: the evaluator's, through the JSON conversion."""
    values = mean + sd * np.random.default_rng(rng_seed).standard_normal((n_seeds, 2))
    scale = "fisher-z" if name.startswith("rollout") else "linear"
    return to_jsonable(evaluate_finding(name, values if scale == "linear" else values[:, 0],
                                        key=key, pde=pde, model=model, scale=scale, **extra))


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
        "temporal_decay": [_record(), _record(model="vit", key="CE-vit", mean=0.0, sd=1.0)],
        "inter_below_intra": [_record("inter_below_intra", 2.0)],
    })
    _write(home, "09_followup_rollout_link", {
        "rollout_link_negative": [_record("rollout_link_negative", -0.5, key="CE-unet dt=1",
                                          dt=1),
                                  _record("rollout_link_negative", -0.05, key="CE-unet dt=16",
                                          sd=0.2, dt=16)],
    })
    _write(home, "13_interventions", {
        "intervention_effect": [_record("intervention_effect", 0.05, key=None, n_seeds=1,
                                        recipe="pushforward")]})
    _write(home, "08_followup_dynamics_spectrum", {})
    _write(home, "07_seed_ntk", {"vit_smaller_ntk_eigenvalue": _record(
        "vit_smaller_ntk_eigenvalue", 0.5, key="CE", model="unet-vit")}, profile="quick")
    _write(home, "14_findings", {"temporal_decay": "not a record"})  # its own: never read


def test_collects_rows_with_layers_adjusted_p_and_the_rules_hash(home):
    from pdeinf.pipeline.findings import collect_findings

    _populate(home)
    out = collect_findings("smoke")
    rows = out["findings"]
    assert [(r["layer"], r["finding"]) for r in rows] == [
        ("seed paper", "temporal_decay"), ("seed paper", "temporal_decay"),
        ("seed paper", "inter_below_intra"), ("follow-up", "rollout_link_negative"),
        ("follow-up", "rollout_link_negative"), ("ours", "intervention_effect")]
    first = rows[0]
    assert first["paper_value"] == pytest.approx(
        registry.FINDING_RULES["temporal_decay"].paper_values["CE-unet"])
    assert len(first["per_seed"]) == first["n_seeds"] == 5
    # Holm within the seed-paper layer: three records, the smallest p times 3
    seed_rows = [r for r in rows if r["layer"] == "seed paper"]
    assert all(r["family_size"] == 3 for r in seed_rows)
    smallest = min(seed_rows, key=lambda r: r["p"])
    assert smallest["p_adjusted"] == pytest.approx(min(1.0, 3 * smallest["p"]), rel=1e-5)
    assert rows[-1]["verdict"] == "not estimable"  # one seed
    assert out["rules_hash"] == registry.rules_hash()
    assert "07_seed_ntk" in out["missing"] and "14_findings" not in out["notebooks"]
    assert out["rules"]["temporal_decay"]["rule"] == registry.describe_rule("temporal_decay")


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
    ({"per_seed": [1.0]}, "'per_seed' holds 1 values for 5 seeds"),
])
def test_malformed_record_names_notebook_and_key(home, bad, message):
    from pdeinf.pipeline.findings import collect_findings

    good = _record("class_locked", key="CE-unet")
    _write(home, "04_seed_classes", {"class_locked": [good, {**good, **bad}]})
    with pytest.raises(InputError) as err:
        collect_findings("smoke")
    text = str(err.value)
    assert "04_seed_classes.json" in text and "findings['class_locked'][1]" in text
    assert message in text


def test_missing_key_unknown_rule_and_non_dict_records_are_named(home):
    from pdeinf.pipeline.findings import collect_findings

    rec = _record("similarity_decay", -0.3, key=None)
    del rec["n_batches"]
    _write(home, "05_seed_similarity", {"similarity_decay": rec})
    with pytest.raises(InputError, match=r"05_seed_similarity\.json findings\['similarity_decay'\]: "
                                         r"record lacks \['n_batches'\]"):
        collect_findings("smoke")
    _write(home, "05_seed_similarity", {"no_such_rule": _record()})
    with pytest.raises(InputError, match="not a rule of the registry"):
        collect_findings("smoke")
    _write(home, "05_seed_similarity", ["not", "a", "dict"])
    with pytest.raises(InputError, match="'findings' must be a dict"):
        collect_findings("smoke")


def test_markdown_table_rows(home):
    from pdeinf.pipeline.findings import collect_findings, findings_markdown

    _populate(home)
    findings = collect_findings("smoke")
    lines = findings_markdown(findings).splitlines()
    assert lines[0] == ("| Finding | Layer | PDE / model | Paper | Ours (95% CI) | Ours vs paper | "
                        "Verdict | Adjusted p | Seeds x batches | Decisive design |")
    body = [line for line in lines[2:] if line.startswith("| ")]
    assert len(body) == len(findings["findings"]) == 6
    cells = body[0].split(" | ")
    row = findings["findings"][0]
    assert cells[0] == "| temporal_decay" and cells[1] == "seed paper" and cells[2] == "CE / unet"
    assert cells[3] == f"{row['paper_value']:.3g}"
    assert cells[4] == f"{row['estimate']:.3g} [{row['low']:.3g}, {row['high']:.3g}]"
    assert cells[5].startswith("x ") and cells[6] == row["verdict"]
    assert cells[8] == "5 x 2"
    assert any("rollout_link_negative (dt=16)" in line for line in body)
    assert any("intervention_effect (pushforward)" in line and "(no interval)" in line
               for line in body)
    assert "07_seed_ntk (results are of profile 'quick'" in "\n".join(lines)


def test_write_is_byte_identical_on_rerun_and_changes_with_numbers(home):
    from pdeinf.pipeline.findings import findings_path, write_findings

    _populate(home)
    ablation = [{"finding": "class_locked", "change": 0.1234567891, "low": float("nan")}]
    path = write_findings("smoke", ablation=ablation)
    assert path == findings_path("smoke") == home / "results" / "figures" / "smoke" / "findings_smoke.json"
    first = path.read_bytes()
    assert write_findings("smoke", ablation=ablation).read_bytes() == first
    data = json.loads(first)
    assert list(data) == sorted(data)  # stable key order
    assert data["regime_label"] == "test run: not the paper's regime"
    table = path.with_suffix(".md").read_text()
    assert table.startswith("# Findings of the smoke profile\n\nTest run: not the paper's regime.")
    assert "| Finding | Layer |" in table and data["rules_hash"][:12] in table
    assert data["ablation"][0]["change"] == 0.123457 and data["ablation"][0]["low"] is None
    assert data["rules_hash"] == registry.rules_hash()
    assert not any(k in first.decode() for k in ("date", "time\"", "created"))
    rec = json.loads((home / "results" / "03_seed_temporal.json").read_text())
    rec["findings"]["temporal_decay"][0]["estimate"] = 1.3
    (home / "results" / "03_seed_temporal.json").write_text(json.dumps(rec))
    assert write_findings("smoke", ablation=ablation).read_bytes() != first


def test_readme_table_is_replaced_by_the_rendered_one(home):
    from pdeinf.pipeline.findings import collect_findings, findings_markdown, replace_findings_table

    _populate(home)
    findings = collect_findings("smoke")
    old = ("| Finding | Layer | PDE / model | Paper | Ours (95% CI) | "
           "Verdict |\n|---|---|\n| old row | 1 |\n\n"
           "Without findings records: 08 (none).\n")
    readme = "# Title\n\nIntro.\n\n" + old + "\n\n**Next section.**\n"
    out = replace_findings_table(readme, findings)
    assert out == "# Title\n\nIntro.\n\n" + findings_markdown(findings) + "\n\n**Next section.**\n"
    assert replace_findings_table(out, findings) == out  # idempotent
    with pytest.raises(InputError, match="one findings table"):
        replace_findings_table("# no table\n", findings)


def test_every_row_carries_the_regime_of_its_pairs(home):
    from pdeinf.pipeline.findings import collect_findings

    _populate(home)
    rows = collect_findings("smoke")["findings"]
    for row in rows:
        cards = row["regime"]
        assert cards and all({"p_over_m", "optimizer_steps", "estimator", "seeds"} <= set(c)
                             for c in cards)
        assert all(c["pde"] in row["pde"] and c["model"] in row["model"] for c in cards)
    seed_paper = next(r for r in rows if r["layer"] == "seed paper")
    follow_up = next(r for r in rows if r["layer"] == "follow-up")
    assert seed_paper["regime"][0]["batches"] == 1  # the smoke profile's seed-paper batches
    assert follow_up["regime"][0]["estimator"] == "subspace"


def test_verdict_changes_match_rows_and_count_transitions():
    from pdeinf.pipeline.findings import verdict_changes

    def row(finding, verdict, **extra):
        return {"finding": finding, "pde": "CE", "model": "vit", "verdict": verdict, **extra}

    old = {"findings": [row("a", "reproduced"), row("b", "reproduced"), row("c", "inconclusive"),
                        row("gone", "reproduced"), row("d", "reproduced", dt=1)]}
    new = {"findings": [row("a", "same direction, smaller"), row("b", "reproduced"),
                        row("c", "same direction, smaller"), row("d", "inconclusive", dt=1),
                        row("d", "reproduced", dt=2), row("fresh", "contradicted")]}
    out = verdict_changes(old, new)
    assert out["same"] == 1
    assert [(c["finding"], c["old"], c["new"]) for c in out["changed"]] == [
        ("a", "reproduced", "same direction, smaller"),
        ("c", "inconclusive", "same direction, smaller"),
        ("d", "reproduced", "inconclusive")]
    assert out["transitions"] == {"reproduced -> same direction, smaller": 1,
                                  "inconclusive -> same direction, smaller": 1,
                                  "reproduced -> inconclusive": 1}
    assert [r["finding"] for r in out["only_old"]] == ["gone"]
    assert [(r["finding"], r["dt"]) for r in out["only_new"]] == [("d", 2), ("fresh", None)]
    with pytest.raises(InputError, match="findings"):
        verdict_changes({}, new)
