"""The findings collector (`pdeinf.pipeline.findings`): records of the evaluator gathered from the
studies' builders, validated, Holm-adjusted within each layer, written byte-stably with the
rules' hash, read back per study, rendered as the README table."""
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
    return tmp_path


def _studies(**records):
    """Builders `{study: profile -> findings}` returning the given findings (None: {})."""
    return {study: (lambda prof, found=found: {} if found is None else found)
            for study, found in records.items()}


def _populated(**overrides):
    found = {
        "03_seed_temporal": {
            "temporal_decay": [_record(), _record(model="vit", key="CE-vit", mean=0.0, sd=1.0)],
            "inter_below_intra": [_record("inter_below_intra", 2.0)],
        },
        "09_followup_rollout_link": {
            "rollout_link_negative": [_record("rollout_link_negative", -0.5, key="CE-unet dt=1",
                                              dt=1),
                                      _record("rollout_link_negative", -0.05, key="CE-unet dt=16",
                                              sd=0.2, dt=16)],
        },
        "13_interventions": {
            "intervention_effect": [_record("intervention_effect", 0.05, key=None, n_seeds=1,
                                            recipe="pushforward")]},
        "07_seed_ntk": None,
    }
    return _studies(**{**found, **overrides})


def test_collects_rows_with_layers_adjusted_p_and_the_rules_hash(home):
    from pdeinf.pipeline.findings import collect_findings

    out = collect_findings("smoke", studies=_populated())
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
    assert "07_seed_ntk" in out["missing"] and out["notebooks"]["03_seed_temporal"] == 3
    assert out["rules"]["temporal_decay"]["rule"] == registry.describe_rule("temporal_decay")


def test_no_results_at_all_is_not_an_error(home):
    from pdeinf.pipeline.findings import collect_findings, findings_markdown

    out = collect_findings("smoke", studies=_studies(**{"03_seed_temporal": None,
                                                        "09_followup_rollout_link": {}}))
    assert out["findings"] == [] and set(out["missing"]) == {"03_seed_temporal",
                                                             "09_followup_rollout_link"}
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
    studies = _studies(**{"04_seed_classes": {"class_locked": [good, {**good, **bad}]}})
    with pytest.raises(InputError) as err:
        collect_findings("smoke", studies=studies)
    text = str(err.value)
    assert "study 04_seed_classes findings['class_locked'][1]" in text
    assert message in text


def test_missing_key_unknown_rule_and_non_dict_records_are_named(home):
    from pdeinf.pipeline.findings import collect_findings

    rec = _record("similarity_decay", -0.3, key=None)
    del rec["n_batches"]
    with pytest.raises(InputError, match=r"study 05_seed_similarity findings\['similarity_decay'\]: "
                                         r"record lacks \['n_batches'\]"):
        collect_findings("smoke", studies=_studies(**{"05_seed_similarity": {"similarity_decay": rec}}))
    with pytest.raises(InputError, match="not a rule of the registry"):
        collect_findings("smoke", studies=_studies(**{"05_seed_similarity": {"no_such_rule": _record()}}))
    with pytest.raises(InputError, match="findings must be a dict"):
        collect_findings("smoke", studies=_studies(**{"05_seed_similarity": ["not", "a", "dict"]}))


def test_markdown_table_rows(home):
    from pdeinf.pipeline.findings import collect_findings, findings_markdown

    findings = collect_findings("smoke", studies=_populated())
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
    assert "07_seed_ntk (no finding rule applies at this profile)" in "\n".join(lines)


def test_write_is_byte_identical_on_rerun_and_changes_with_numbers(home):
    from pdeinf.pipeline.findings import collect_findings, findings_path, write_findings

    ablation = [{"pde": "CE", "model": "vit", "config": "increment", "finding": "class_locked",
                 "baseline_value": 0.5, "value": 0.62, "change": 0.1234567891, "low": float("nan"),
                 "high": float("nan"), "seed_std_baseline": 0.1, "seed_std": 0.2,
                 "exceeds_noise": False}]
    path = write_findings("smoke", ablation=ablation,
                          findings=collect_findings("smoke", studies=_populated()))
    assert path == findings_path("smoke") == home / "results" / "figures" / "smoke" / "findings_smoke.json"
    first, written_at = path.read_bytes(), path.stat().st_mtime_ns
    assert write_findings("smoke", ablation=ablation,
                          findings=collect_findings("smoke", studies=_populated())).read_bytes() == first
    assert path.stat().st_mtime_ns == written_at  # an unchanged table is not rewritten
    data = json.loads(first)
    assert list(data) == sorted(data)  # stable key order
    assert data["regime_label"] == "test run: not the paper's regime"
    table = path.with_suffix(".md").read_text()
    assert table.startswith("# Findings of the smoke profile\n\nTest run: not the paper's regime.")
    assert "| Finding | Layer |" in table and data["rules_hash"][:12] in table
    assert "## Ablation" in table and "| CE / vit | increment | class_locked |" in table
    assert data["ablation"][0]["change"] == 0.123457 and data["ablation"][0]["low"] is None
    assert data["rules_hash"] == registry.rules_hash()
    assert not any(k in first.decode() for k in ("date", "time\"", "created"))
    changed = _populated(**{"03_seed_temporal": {"temporal_decay": [_record(mean=1.3)]}})
    assert write_findings("smoke", ablation=ablation,
                          findings=collect_findings("smoke", studies=changed)).read_bytes() != first


def test_readme_table_is_replaced_by_the_rendered_one(home):
    from pdeinf.pipeline.findings import collect_findings, findings_markdown, replace_findings_table

    findings = collect_findings("smoke", studies=_populated())
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

    rows = collect_findings("smoke", studies=_populated())["findings"]
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


def test_load_findings_reads_the_written_table_per_study_and_lines_name_the_verdict(home):
    from pdeinf.pipeline.findings import (
        collect_findings,
        finding_lines,
        load_findings,
        write_findings,
    )

    write_findings("smoke", findings=collect_findings("smoke", studies=_populated()))
    every = load_findings("smoke")
    rollout = load_findings("smoke", "09_followup_rollout_link")
    assert len(every["findings"]) == 6
    assert [r["dt"] for r in rollout["findings"]] == [1, 16]
    lines = finding_lines(rollout["findings"])
    for line, row in zip(lines, rollout["findings"]):
        assert line.startswith(f"rollout_link_negative CE-unet dt={row['dt']}: ")
        assert line.endswith(f"-> {row['verdict']} (Holm p {row['p_adjusted']:.3g})")
    one_seed = finding_lines(load_findings("smoke", "13_interventions")["findings"])
    assert one_seed[0].startswith("intervention_effect CE-unet recipe=pushforward: ")
    assert "(no interval)" in one_seed[0] and "not estimable" in one_seed[0]


def test_finding_summary_gives_the_claim_then_that_findings_rows_only(home):
    from pdeinf.analysis.registry import FINDING_RULES
    from pdeinf.pipeline.findings import collect_findings, finding_lines, finding_summary

    rows = collect_findings("smoke", studies=_populated())["findings"]
    text = finding_summary(rows, "rollout_link_negative", "class_locked")
    link, locked = text.split("\n\n")
    rule = FINDING_RULES["rollout_link_negative"]
    assert link.splitlines()[0] == f"rollout_link_negative ({rule.layer}, {rule.figures}): {rule.claim}"
    wanted = finding_lines([r for r in rows if r["finding"] == "rollout_link_negative"])
    assert link.splitlines()[1:] == [f"  {line}" for line in wanted] and len(wanted) == 2
    assert locked.splitlines()[1:] == ["  no row at this profile"]
    with pytest.raises(InputError, match="finding 'nope': not a rule"):
        finding_summary(rows, "nope")


def test_findings_stage_comes_after_every_other_stage_and_studies_are_named():
    from pdeinf.pipeline.reproduce import stage_tasks
    from pdeinf.pipeline.study_findings import study_records

    tasks = stage_tasks("smoke", progress=False)
    assert tasks[-1].name == "findings"
    assert set(tasks[-1].after) == {t.name for t in tasks[:-1]}
    with pytest.raises(InputError, match="study='nope': expected one of 02_training"):
        study_records("smoke", "nope")


def test_a_corrupt_findings_table_is_one_clear_error(home):
    from pdeinf.pipeline.findings import findings_path, load_findings

    path = findings_path("smoke")
    path.parent.mkdir(parents=True)
    path.write_text('{"findings": [')  # truncated
    with pytest.raises(InputError, match=r"findings_smoke\.json: not valid JSON .*delete it to recompute"):
        load_findings("smoke")
    assert path.read_text() == '{"findings": ['  # left as it was: nothing half-rewritten


@pytest.mark.slow
def test_smoke_findings_table_is_consistent_and_its_ablation_rows_current(smoke_home):
    """The smoke run's table: verdicts are words of the evaluator; a "reproduced" finding has
    an adjusted p below 5% and an interval wholly on the paper's side of the null; one Markdown
    line per row; the ablation rows are those of the current ablation study; in the ablation the
    baseline changes by nothing and every change is the difference of values."""
    from pdeinf.analysis import ablation as ab
    from pdeinf.pipeline import findings as pf
    from pdeinf.pipeline import study_findings as sf

    findings = pf.load_findings("smoke")
    for row in findings["findings"]:
        assert row["verdict"] in pf.VERDICTS, row
        rule = registry.FINDING_RULES[row["finding"]]
        if row["verdict"] == "reproduced":
            side = row["low"] > rule.null if rule.paper_sign > 0 else row["high"] < rule.null
            assert side and row["p_adjusted"] < 0.05, row
    table_lines = [line for line in pf.findings_markdown(findings).splitlines()[2:] if line.startswith("| ")]
    assert len(table_lines) == len(findings["findings"])
    tables = sf.ablation_tables("smoke")
    recomputed = [row for (pde, model), table in tables.items() for row in ab.table_records(table, pde=pde, model=model)]
    assert findings["ablation"] == pf.round_numbers(to_jsonable(recomputed))  # the table is current
    for table in tables.values():
        base = table.attrs["baseline"]
        base_change = table["change"].sel(config=base).values
        assert np.all(base_change[np.isfinite(base_change)] == 0.0)
        assert np.all(np.isfinite(table["change"].sel(ci="estimate", config=base)))
        np.testing.assert_allclose(table["change"].sel(ci="estimate"),
                                   table["value"] - table["value"].sel(config=base), atol=1e-12)
        assert not table["exceeds_noise"].sel(config=base).any()


def test_seed_paper_studies_share_one_read_per_pair(monkeypatch):
    """Within `shared_reads` (as in `collect_findings`) each pair's seed-paper influence is read
    once for all five seed-paper studies; outside it, every call reads, and nothing is held."""
    from types import SimpleNamespace

    from pdeinf.pipeline import study_findings as sf

    reads = []
    monkeypatch.setattr(sf, "ensure_seed_paper", lambda prof, pde, model, progress: reads.append(
        (pde, model)) or object())
    prof = SimpleNamespace(pairs=lambda: [("CE", "unet"), ("NS", "vit")])
    with sf.shared_reads():
        first, second = sf._seed_paper(prof), sf._seed_paper(prof)
    assert first == second and reads == [("CE", "unet"), ("NS", "vit")]
    assert sf._seed_paper(prof) != first and len(reads) == 4 and sf._seed_paper_held is None
