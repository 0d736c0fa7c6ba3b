"""The findings table: every study notebook's `findings` records gathered into one small,
committed file (`figures/findings_<profile>.json`) and the README's table.

Each study notebook writes `results/<NN_name>.json` with a top-level `"findings"` entry
`{rule_name: record or [records]}`; a record is a dict with `pde`, `model`, `estimate`, `low`,
`high` (numbers, or null where not measurable), `n_seeds`, `n_batches` (integers), `verdict`
("reproduced" | "contradicted" | "inconclusive"), `rule` (its text), `paper` (the paper's number,
a quoted note, or null) and optionally `dt`, `needed` (the power analysis of
`pdeinf.analysis.statistics.decisive_design`: seeds x batches for a decisive verdict), `recipe`,
`note`, `n_resamples`, `random_state`. Rule names are those of
`pdeinf.analysis.verdicts.VERDICT_RULES` (a name it does not know is our own finding, layer
"ours").

`collect_findings(profile)` reads and validates them (one InputError naming the file and key of
a malformed record), `write_findings(profile)` writes the JSON (sorted keys, numbers rounded to
6 significant digits, no dates: a rerun is byte-identical unless a number changes), and
`findings_markdown` renders the table, `replace_findings_table` puts it into the README.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

from pdeinf import paths
from pdeinf.atomic import write_text
from pdeinf.errors import InputError
from pdeinf.pipeline.common import ProfileLike, as_profile

#: This notebook (it reads the others; its own results are not findings).
NOTEBOOK = "14_findings"
#: Notebooks that never carry findings records (data, the explorer, this one).
NO_FINDINGS = ("01_data", NOTEBOOK, "15_explorer")
LAYERS = ("seed paper", "follow-up", "ours")
#: The papers' findings are "reproduced" / "contradicted" / "inconclusive"; our interventions are
#: "improves" / "worsens" / "inconclusive" (rule in pdeinf.analysis.interventions).
VERDICTS = ("reproduced", "contradicted", "inconclusive", "improves", "worsens")
REQUIRED = ("pde", "model", "estimate", "low", "high", "n_seeds", "n_batches", "verdict", "rule",
            "paper")
_RESULTS = re.compile(r"^(\d\d)_[A-Za-z0-9_.\-]+$")
SIGNIFICANT = 6
#: Per-finding texts kept once in the "rules" section, not in every row.
_RULE_FIELDS = ("claim", "rule", "paper_note")


def round_numbers(value):
    """Floats (nested in dicts / lists) to `SIGNIFICANT` digits, non-finite ones to None."""
    if isinstance(value, float):
        return float(f"{value:.{SIGNIFICANT}g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): round_numbers(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [round_numbers(v) for v in value]
    return value


def _number(value, where: str, key: str, *, integer: bool = False, optional: bool = True):
    if value is None and optional:
        return None
    ok = isinstance(value, int) and not isinstance(value, bool) if integer else \
        isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        kind = "an integer" if integer else "a number or null"
        raise InputError(f"{where}: {key!r} must be {kind}, got {value!r}")
    return int(value) if integer else float(value)


def validate_record(record, where: str) -> dict:
    """The record with its numbers checked; InputError naming `where` (file and key) when it is
    not a dict of the documented form."""
    if not isinstance(record, dict):
        raise InputError(f"{where}: a findings record must be a dict, got {type(record).__name__}")
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise InputError(f"{where}: record lacks {missing}")
    out = dict(record)
    for key in ("estimate", "low", "high"):
        out[key] = _number(record[key], where, key)
    for key in ("n_seeds", "n_batches"):
        out[key] = _number(record[key], where, key, integer=True, optional=False)
    if record["verdict"] not in VERDICTS:
        raise InputError(f"{where}: 'verdict' must be one of {VERDICTS}, got {record['verdict']!r}")
    if not isinstance(record["rule"], str) or not record["rule"]:
        raise InputError(f"{where}: 'rule' must be the rule's text, got {record['rule']!r}")
    for key in ("pde", "model"):
        if not isinstance(record[key], str):
            raise InputError(f"{where}: {key!r} must be a string, got {record[key]!r}")
    paper = record["paper"]
    if paper is not None and not isinstance(paper, str):
        _number(paper, where, "paper")
    if "dt" in record and record["dt"] is not None:
        out["dt"] = _number(record["dt"], where, "dt", integer=True)
    if "recipe" in record and not isinstance(record["recipe"], str):
        raise InputError(f"{where}: 'recipe' must be a string, got {record['recipe']!r}")
    if "needed" in record and record["needed"] is not None:
        _check_needed(record["needed"], where)
    low, high = out["low"], out["high"]
    if low is not None and high is not None and low > high:
        raise InputError(f"{where}: 'low' {low} exceeds 'high' {high}")
    return out


def _check_needed(needed, where: str) -> None:
    """`needed` is a `decisive_design` summary: a dict, a known status, integer designs."""
    from pdeinf.analysis.statistics import NEEDED_STATUSES

    if not isinstance(needed, dict):
        raise InputError(f"{where}: 'needed' must be a dict or null, got {needed!r}")
    status = needed.get("status")
    if status is not None and status not in NEEDED_STATUSES:
        raise InputError(f"{where}: 'needed' status must be one of {NEEDED_STATUSES}, got "
                         f"{status!r}")
    for key in ("n_seeds", "n_batches"):
        _number(needed.get(key), where, f"needed.{key}", integer=True)


def _paper_value(rule, record: dict):
    """The record's paper number, else the rule's for (PDE-model[ dt=k]) / PDE / model."""
    paper = record.get("paper")
    if isinstance(paper, (int, float)) and not isinstance(paper, bool):
        return float(paper)
    if rule is None:
        return None
    pde, model = record["pde"], record["model"]
    keys = [f"{pde}-{model}", pde, model]
    if record.get("dt") is not None:
        keys.insert(0, f"{pde}-{model} dt={record['dt']}")
    for key in keys:
        if key in rule.paper_values:
            return float(rule.paper_values[key])
    return None


def _row(name: str, notebook: str, record: dict) -> dict:
    from pdeinf.analysis.verdicts import VERDICT_RULES

    rule = VERDICT_RULES.get(name)
    paper = record.get("paper")
    note = rule.paper_note if rule is not None else ""
    if isinstance(paper, str) and paper and not note:
        note = paper
    row = {
        "finding": name, "notebook": notebook, "layer": rule.study if rule is not None else "ours",
        "paper_figure": rule.figures if rule is not None else "",
        "claim": rule.claim if rule is not None else "",
        "pde": record["pde"], "model": record["model"],
        "estimate": record["estimate"], "low": record["low"], "high": record["high"],
        "n_seeds": record["n_seeds"], "n_batches": record["n_batches"],
        "verdict": record["verdict"], "rule": record["rule"],
        "null": float(rule.null) if rule is not None else 0.0,
        "paper_value": _paper_value(rule, record), "paper_note": note,
    }
    for key in ("dt", "recipe", "needed", "note"):
        if record.get(key) is not None:
            row[key] = record[key]
    return round_numbers(row)


def _order(row: dict):
    from pdeinf.analysis.verdicts import VERDICT_RULES

    names = list(VERDICT_RULES)
    known = row["finding"] in VERDICT_RULES
    return (LAYERS.index(row["layer"]) if row["layer"] in LAYERS else len(LAYERS),
            names.index(row["finding"]) if known else len(names), row["finding"], row["pde"],
            row["model"], row.get("dt") or 0, row.get("recipe") or "", row["notebook"])


def results_files() -> list[Path]:
    """`results/NN_*.json` of the study notebooks, sorted (this notebook's own excluded)."""
    return [p for p in sorted(paths.results_dir().glob("[0-9][0-9]_*.json"))
            if _RESULTS.match(p.stem) and p.stem not in NO_FINDINGS]


def _study_notebooks() -> list[str]:
    from pdeinf.pipeline.notebooks import notebooks_source

    found = {p.stem for p in notebooks_source().glob("[0-9][0-9]_*.ipynb")}
    return sorted(n for n in found if _RESULTS.match(n) and n not in NO_FINDINGS)


def collect_findings(profile: ProfileLike = None) -> dict:
    """Every finding record of the study notebooks' results JSON of `profile`.

    Returns `{"profile", "findings": [row ...], "rules": {finding: texts}, "notebooks":
    {notebook: number of records}, "missing": {notebook: why it has no records},
    "rules_without_record": [names]}`; a row holds the finding (rule name), notebook, layer
    ("seed paper" / "follow-up" / "ours"), paper figure, pde, model, estimate, low, high,
    n_seeds, n_batches, verdict, null, paper_value (the paper's number, None where it gives
    none), and dt / recipe / needed / note where the record has them; `rules[finding]` holds
    its layer, paper figure, claim, rule text (as the notebook's record states it) and the
    paper's note. Rows are ordered by layer, rule
    (as in VERDICT_RULES), PDE, model, dt, recipe. A notebook without records (not run, run at
    another profile, no findings) is listed under `missing`, never an error; a malformed record
    is an InputError naming its file and key."""
    from pdeinf.analysis.verdicts import VERDICT_RULES

    prof = as_profile(profile)
    rows, counts, missing = [], {}, {}
    present = set()
    for path in results_files():
        notebook = path.stem
        present.add(notebook)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise InputError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise InputError(f"{path}: expected a JSON object at the top level")
        if data.get("profile") not in (None, prof.name):
            missing[notebook] = f"results are of profile {data.get('profile')!r}, not {prof.name!r}"
            continue
        findings = data.get("findings")
        if findings is None:
            missing[notebook] = "no 'findings' entry"
            continue
        if not isinstance(findings, dict):
            raise InputError(f"{path}: 'findings' must be a dict {{rule: record or [records]}}, "
                             f"got {type(findings).__name__}")
        n = 0
        for name, records in findings.items():
            items = records if isinstance(records, list) else [records]
            for i, record in enumerate(items):
                where = f"{path} findings[{name!r}]" + (f"[{i}]" if isinstance(records, list) else "")
                rows.append(_row(str(name), notebook, validate_record(record, where)))
                n += 1
        counts[notebook] = n
        if n == 0:
            missing[notebook] = "'findings' is empty"
    for notebook in _study_notebooks():
        if notebook not in present:
            missing[notebook] = "no results JSON (notebook not run)"
    rows.sort(key=_order)
    rules = {}
    for r in rows:  # the long texts once per finding, so that the rows diff by their numbers
        text = {k: r.pop(k) for k in _RULE_FIELDS}
        rules.setdefault(r["finding"], {"layer": r["layer"], "paper_figure": r["paper_figure"],
                                        **text})
    covered = set(rules)
    return {"profile": prof.name, "findings": rows, "rules": dict(sorted(rules.items())),
            "notebooks": dict(sorted(counts.items())), "missing": dict(sorted(missing.items())),
            "rules_without_record": [n for n in VERDICT_RULES if n not in covered]}


def findings_path(profile: ProfileLike = None) -> Path:
    """`figures/findings_<profile>.json`."""
    return paths.figures_dir() / f"findings_{as_profile(profile).name}.json"


def write_findings(profile: ProfileLike = None, *, ablation=None, findings: dict | None = None) -> Path:
    """Write `figures/findings_<profile>.json`: `collect_findings(profile)` (or `findings`),
    plus `"ablation"` (JSON-ready rows, e.g. `analysis.ablation.table_records`) when given.
    Sorted keys, numbers to 6 significant digits, no timestamps (atomic write)."""
    from pdeinf.pipeline.report import to_jsonable

    data = dict(findings) if findings is not None else collect_findings(profile)
    if ablation is not None:
        data["ablation"] = to_jsonable(ablation)
    text = json.dumps(round_numbers(to_jsonable(data)), indent=1, sort_keys=True, allow_nan=False)
    return write_text(findings_path(profile), text + "\n")


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.3g}"


def _label(row: dict) -> str:
    extra = [f"dt={row['dt']}"] if row.get("dt") is not None else []
    extra += [row["recipe"]] if row.get("recipe") else []
    return row["finding"] + (f" ({', '.join(extra)})" if extra else "")


def findings_markdown(findings: dict) -> str:
    """The README table: one row per finding and (PDE, model) (and dt / recipe): layer, paper
    figure, the paper's number, ours with its 95% interval and seeds x batches, the verdict, and
    the seeds x batches its measured effect and spread would need for a decisive verdict
    (`pdeinf.analysis.statistics.describe_needed` of the record's `needed`; "–" without one).
    Notebooks without records are listed below it."""
    from pdeinf.analysis.statistics import describe_needed

    rows = findings.get("findings") if isinstance(findings, dict) else None
    if rows is None:
        raise InputError("findings: expected the dict of collect_findings (with 'findings')")
    header = ("| Finding | Layer | Paper figure | PDE / model | Paper | Ours (95% CI) | "
              "Seeds x batches | Verdict | Seeds x batches for a decisive verdict |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ours = _fmt(r["estimate"])
        if r["low"] is not None and r["high"] is not None:
            ours += f" [{_fmt(r['low'])}, {_fmt(r['high'])}]"
        else:
            ours += " (no interval)"
        paper = _fmt(r["paper_value"]) if r["paper_value"] is not None else "–"
        lines.append(f"| {_label(r)} | {r['layer']} | {r['paper_figure'] or '–'} | "
                     f"{r['pde']} / {r['model']} | {paper} | {ours} | "
                     f"{r['n_seeds']} x {r['n_batches']} | {r['verdict']} | "
                     f"{describe_needed(r.get('needed'))} |")
    missing = findings.get("missing") or {}
    if missing:
        lines.append("")
        lines.append("Without findings records: " + "; ".join(f"{k} ({v})" for k, v in missing.items())
                     + ".")
    return "\n".join(lines) + "\n"


_TABLE_START = "| Finding | Layer | Paper figure |"
_TABLE_END = "Without findings records:"


def replace_findings_table(text: str, findings: dict) -> str:
    """`text` (the README) with its findings table replaced by `findings_markdown(findings)`:
    from the table's header line through the table's last row, and the "Without findings
    records" line right after it when there is one. InputError when `text` has no such table."""
    lines = text.split("\n")
    starts = [i for i, line in enumerate(lines) if line.startswith(_TABLE_START)]
    if len(starts) != 1:
        raise InputError(f"text: expected one findings table (a line starting "
                         f"{_TABLE_START!r}), found {len(starts)}")
    end = starts[0]
    while end + 1 < len(lines) and lines[end + 1].startswith("|"):
        end += 1
    if end + 2 < len(lines) and lines[end + 1] == "" and lines[end + 2].startswith(_TABLE_END):
        end += 2
    table = findings_markdown(findings).rstrip("\n").split("\n")
    return "\n".join(lines[:starts[0]] + table + lines[end + 1:])


def ablation_markdown(rows: list[dict]) -> str:
    """The ablation table (rows of `analysis.ablation.table_records`) as Markdown."""
    header = ("| PDE / model | Configuration | Finding | Baseline | Ablated | Change (95% CI) | "
              "Seed std (base / ablated) | Exceeds noise |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ci = (f" [{_fmt(r['low'])}, {_fmt(r['high'])}]"
              if r.get("low") is not None and r.get("high") is not None
              and math.isfinite(r["low"]) and math.isfinite(r["high"]) else " (no interval)")
        lines.append(f"| {r['pde']} / {r['model']} | {r['config']} | {r['finding']} | "
                     f"{_fmt(_finite(r['baseline_value']))} | {_fmt(_finite(r['value']))} | "
                     f"{_fmt(_finite(r['change']))}{ci} | "
                     f"{_fmt(_finite(r['seed_std_baseline']))} / {_fmt(_finite(r['seed_std']))} | "
                     f"{'yes' if r['exceeds_noise'] else 'no'} |")
    return "\n".join(lines) + "\n"


def _finite(x):
    return x if x is not None and math.isfinite(x) else None
