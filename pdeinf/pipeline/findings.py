"""The findings table: every study's records (`pipeline.study_findings`, each an
`analysis.evaluate.evaluate_finding` record), validated, Holm-adjusted within each layer and
written to `figures/findings_<profile>.json` and its Markdown table by the `findings` stage of
`reproduce` (sorted keys, 6 significant digits, no dates: byte-identical unless a number
changes). The notebooks and the closing table of `reproduce` only show its rows.
"""
from __future__ import annotations

import json
import math
import subprocess
from collections import Counter
from pathlib import Path

from pdeinf import paths
from pdeinf.analysis import registry
from pdeinf.analysis.evaluate import VERDICT_WORDS, adjust_records
from pdeinf.atomic import write_text
from pdeinf.config import REGIME_LABELS
from pdeinf.errors import InputError
from pdeinf.pipeline.common import ProfileLike, as_profile
from pdeinf.pipeline.regime import for_sweep, regime_cards, row_regime

VERDICTS = VERDICT_WORDS
REQUIRED = ("pde", "model", "estimate", "low", "high", "per_seed", "n_seeds", "n_batches",
            "n_failed", "p", "verdict", "rule", "paper", "estimable")
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


def write_json_text(path: Path, data) -> None:
    """Write `data` to `path` as JSON (sorted keys, `SIGNIFICANT` digits, a final newline) unless
    the file holds that text already (`write_if_changed`)."""
    from pdeinf.pipeline.report import to_jsonable

    text = json.dumps(round_numbers(to_jsonable(data)), indent=1, sort_keys=True, allow_nan=False)
    write_if_changed(path, text + "\n")


def write_if_changed(path: Path, text: str) -> None:
    """Write `text` to `path` unless it holds it already: an unchanged file keeps its mtime (and
    the notebooks' cache keys)."""
    if not (path.is_file() and path.read_text() == text):
        write_text(path, text)


def _number(value, where: str, key: str, *, integer: bool = False, optional: bool = True):
    if value is None and optional:
        return None
    if not isinstance(value, int if integer else (int, float)) or isinstance(value, bool):
        kind = "an integer" if integer else "a number or null"
        raise InputError(f"{where}: {key!r} must be {kind}, got {value!r}")
    return int(value) if integer else float(value)


def validate_record(record, where: str) -> dict:
    """The record with its numbers checked; InputError naming `where` (study and key) when it
    is not a dict of the documented form."""
    if not isinstance(record, dict):
        raise InputError(f"{where}: a findings record must be a dict, got {type(record).__name__}")
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise InputError(f"{where}: record lacks {missing}")
    out = dict(record)
    for key in ("estimate", "low", "high", "p", "paper"):
        out[key] = _number(record[key], where, key)
    for key in ("n_seeds", "n_batches", "n_failed"):
        out[key] = _number(record[key], where, key, integer=True, optional=False)
    if not isinstance(record["per_seed"], list):
        raise InputError(f"{where}: 'per_seed' must be a list of numbers, got "
                         f"{record['per_seed']!r}")
    out["per_seed"] = [_number(v, where, "per_seed") for v in record["per_seed"]]
    if len(out["per_seed"]) != out["n_seeds"]:
        raise InputError(f"{where}: 'per_seed' holds {len(out['per_seed'])} values for "
                         f"{out['n_seeds']} seeds")
    if record["verdict"] not in VERDICTS:
        raise InputError(f"{where}: 'verdict' must be one of {VERDICTS}, got {record['verdict']!r}")
    if not isinstance(record["rule"], str) or not record["rule"]:
        raise InputError(f"{where}: 'rule' must be the rule's text, got {record['rule']!r}")
    for key in ("pde", "model", *(k for k in ("recipe", "cls") if k in record)):
        if not isinstance(record[key], str):
            raise InputError(f"{where}: {key!r} must be a string, got {record[key]!r}")
    if record.get("dt") is not None:
        out["dt"] = _number(record["dt"], where, "dt", integer=True)
    low, high = out["low"], out["high"]
    if low is not None and high is not None and low > high:
        raise InputError(f"{where}: 'low' {low} exceeds 'high' {high}")
    out["estimable"] = bool(record["estimable"]) and low is not None and high is not None
    return out


def _row(name: str, notebook: str, record: dict) -> dict:
    if name not in registry.FINDING_RULES:
        raise InputError(f"{notebook}: finding {name!r} is not a rule of the registry "
                         f"({', '.join(registry.FINDING_RULES)})")
    rule = registry.FINDING_RULES[name]
    row = {
        "finding": name, "notebook": notebook, "layer": rule.layer,
        "paper_figure": rule.figures, "claim": rule.claim, "paper_note": rule.paper_note,
        "unit": rule.unit, "null": float(rule.null), "paper_value": record["paper"],
        **{k: record[k] for k in ("pde", "model", "estimate", "low", "high", "per_seed",
                                   "n_seeds", "n_batches", "n_failed", "p", "verdict", "rule",
                                   "estimable")},
    }
    return row | {k: record[k] for k in ("interval", "size", "needed", "dt", "recipe", "cls", "note", "seeds")
                  if record.get(k) is not None}


def _order(row: dict):
    return (registry.LAYERS.index(row["layer"]), list(registry.FINDING_RULES).index(row["finding"]),
            row["pde"], row["model"], row.get("cls") not in (None, "all"), row.get("cls") or "",
            row.get("dt") or 0, row.get("recipe") or "", row["notebook"])


def collect_findings(profile: ProfileLike = None, *, studies: dict | None = None) -> dict:
    """Every finding record of the studies (`study_findings.STUDIES`, or `studies`: {name:
    builder(profile) -> {rule: record or [records]}}) at `profile`, Holm-adjusted within each
    layer, with the verdicts of the adjusted p. Returns {"profile", "regime_label", "findings":
    [row ...] (the record plus finding, notebook, layer, paper_figure, unit, family_size and the
    regime cards of its pairs; ordered by layer, rule, PDE, model, class, dt, recipe), "rules":
    {finding: texts}, "notebooks": {study: records}, "missing": {study: why none},
    "rules_without_record", "rules_hash", "rules_commit"}. InputError names a bad record."""
    from pdeinf.pipeline.study_findings import STUDIES, shared_reads

    prof = as_profile(profile)
    rows, counts, missing = [], {}, {}
    with shared_reads():
        for study, build in (STUDIES if studies is None else studies).items():
            findings = build(prof)
            if not isinstance(findings, dict):
                raise InputError(f"study {study}: findings must be a dict {{rule: record or "
                                 f"[records]}}, got {type(findings).__name__}")
            found = [(str(name), f"study {study} findings[{name!r}]"
                      + (f"[{i}]" if isinstance(records, list) else ""), record)
                     for name, records in findings.items()
                     for i, record in enumerate(records if isinstance(records, list) else [records])]
            rows += [_row(name, study, validate_record(record, where)) for name, where, record in found]
            counts[study] = len(found)
            if not found:
                missing[study] = "no finding rule applies at this profile"
    rows = adjust_records(sorted(rows, key=_order))
    cards = regime_cards(prof) if rows else {}  # models built and histories read once
    sweep = {k: for_sweep(c, prof) for k, c in cards.items()}
    rows = [round_numbers({**r, "regime": row_regime(r, cards if r["layer"] == "seed paper"
                                                     else sweep)}) for r in rows]
    rules = {}
    for r in rows:  # the long texts once per finding, so that the rows diff by their numbers
        text = {k: r.pop(k) for k in _RULE_FIELDS}
        rules.setdefault(r["finding"], {"layer": r["layer"], "paper_figure": r["paper_figure"],
                                        **text})
    return {"profile": prof.name, "regime_label": REGIME_LABELS.get(prof.name, "custom profile"),
            "findings": rows, "rules": dict(sorted(rules.items())),
            "notebooks": dict(sorted(counts.items())), "missing": dict(sorted(missing.items())),
            "rules_without_record": [n for n in registry.FINDING_RULES if n not in rules],
            "rules_hash": registry.rules_hash(), "rules_commit": rules_commit()}


def rules_commit() -> str | None:
    """The last commit that changed the rules file (None outside a git checkout)."""
    rules_file = Path(registry.__file__)
    try:
        out = subprocess.run(["git", "log", "-1", "--format=%H", "--", rules_file.name],
                             cwd=rules_file.parent, capture_output=True, text=True, timeout=10,
                             check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def findings_path(profile: ProfileLike = None) -> Path:
    """`findings_<profile>.json` in the profile's figures folder."""
    name = as_profile(profile).name
    return paths.figures_dir(name) / f"findings_{name}.json"


def write_findings(profile: ProfileLike = None, *, ablation=None, findings: dict | None = None) -> Path:
    """Write `findings_path(profile)`: `collect_findings(profile)` (or `findings`), plus
    `"ablation"` (rows of `analysis.ablation.table_records`) when given, and its Markdown table
    beside it (`.md`). A file that would not change is not rewritten."""
    from pdeinf.pipeline.report import to_jsonable

    data = dict(findings) if findings is not None else collect_findings(profile)
    if ablation is not None:
        data["ablation"] = to_jsonable(ablation)
    path = findings_path(profile)
    label = data.get("regime_label") or REGIME_LABELS.get(as_profile(profile).name, "custom profile")
    table = (f"# Findings of the {data.get('profile', as_profile(profile).name)} profile\n\n"
             f"{label[0].upper() + label[1:]}. Written by `make reproduce` from `{path.name}` "
             "(rules: `pdeinf/analysis/registry.py`, SHA-256 "
             f"{str(data.get('rules_hash', ''))[:12]}...; definitions: docs/method.md).\n\n"
             + findings_markdown(round_numbers(to_jsonable(data))))
    if data.get("ablation"):
        table += "\n\n## Ablation: which model departures mattered\n\n" + ablation_markdown(data["ablation"])
    write_if_changed(path.with_suffix(".md"), table)
    write_json_text(path, data)
    return path


def findings_stage(profile: ProfileLike = None, *, progress: bool = False) -> Path:
    """The `findings` stage of `reproduce` (after every other stage, before the notebooks):
    `write_findings` with the profile's ablation rows."""
    from pdeinf.pipeline.study_findings import ablation_records

    return write_findings(profile, ablation=ablation_records(profile))


def load_findings(profile: ProfileLike = None, notebook: str | None = None) -> dict:
    """The written findings table of `profile` (`findings_stage` runs first where the file is
    absent); with `notebook`, only the rows of that study."""
    path = findings_path(profile)
    if not path.exists():
        findings_stage(profile)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err}); delete it to recompute") from None
    if notebook is not None:
        data["findings"] = [r for r in data["findings"] if r["notebook"] == notebook]
    return data


def row_name(row: dict) -> str:
    """A row's finding, pair and the class / dt / recipe that tell it apart."""
    return " ".join([row["finding"], f"{row['pde']}-{row['model']}",
                     *(f"{k}={row[k]}" for k in ("cls", "dt", "recipe")
                       if row.get(k) not in (None, "all"))])


def finding_lines(rows: list[dict]) -> list[str]:
    """One line per row of the findings table: `row_name`, ours with its interval, the paper's
    number and the Holm-adjusted two-part verdict."""
    lines = []
    for r in rows:
        interval = (f"[{_fmt(r['low'])}, {_fmt(r['high'])}]" if r.get("estimable") else "(no interval)")
        paper = "" if r.get("paper_value") is None else f"; paper {_fmt(r['paper_value'])}"
        lines.append(f"{row_name(r)}: {_fmt(r['estimate'])} {interval} over {r['n_seeds']} seeds x "
                     f"{r['n_batches']} batches{paper} -> {r['verdict']} (Holm p {_fmt(r['p_adjusted'])})")
    return lines


def finding_summary(rows: list[dict], *names: str) -> str:
    """Per finding of `names`: the paper's claim and figures, then `finding_lines` of its rows
    in `rows`, or a line saying it has none here. InputError naming an unknown finding."""
    unknown = [n for n in names if n not in registry.FINDING_RULES]
    if unknown:
        raise InputError(f"finding {unknown[0]!r}: not a rule of pdeinf.analysis.registry; "
                         f"known: {', '.join(registry.FINDING_RULES)}")
    blocks = []
    for name in names:
        rule = registry.FINDING_RULES[name]
        lines = finding_lines([r for r in rows if r.get("finding") == name])
        blocks.append("\n".join([f"{name} ({rule.layer}, {rule.figures}): {rule.claim}",
                                  *(f"  {line}" for line in lines or ["no row at this profile"])]))
    return "\n\n".join(blocks)


def _fmt(x, spec: str = ".3g") -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:{spec}}"


def _interval(low, high) -> str:
    both = low is not None and high is not None and math.isfinite(low) and math.isfinite(high)
    return f" [{_fmt(low)}, {_fmt(high)}]" if both else " (no interval)"


def findings_markdown(findings: dict) -> str:
    """The README table: one row per finding and (PDE, model) (and class / dt / recipe): layer,
    the paper's number, ours with its 95% t-interval, ours against the paper's (ratio "x" or
    difference "Δ" with its interval), the verdict, the Holm-adjusted p, seeds x batches and
    the seeds x batches a decisive direction would need. Studies without records follow."""
    rows = findings.get("findings") if isinstance(findings, dict) else None
    if rows is None:
        raise InputError("findings: expected the dict of collect_findings (with 'findings')")
    lines = [("| Finding | Layer | PDE / model | Paper | Ours (95% CI) | Ours vs paper | "
              "Verdict | Adjusted p | Seeds x batches | Decisive design |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        extra = [f"class {r['cls']}"] if r.get("cls") else []
        extra += [f"dt={r['dt']}"] if r.get("dt") is not None else []
        extra += [r["recipe"]] if r.get("recipe") else []
        name = r["finding"] + (f" ({', '.join(extra)})" if extra else "")
        size = r.get("size")
        size_text = "–"
        if size and size.get("value") is not None:
            word = "x" if size["kind"] == "ratio" else "Δ"
            size_text = f"{word} {_fmt(size['value'])}"
            if size["low"] is not None and size["high"] is not None:
                size_text += f" [{_fmt(size['low'])}, {_fmt(size['high'])}]"
        need = (r.get("needed") or {}).get("n_seeds")
        need_text = "–" if need is None else f"{need} x {r['n_batches']}"
        lines.append(f"| {name} | {r['layer']} | {r['pde']} / {r['model']} | "
                     f"{_fmt(r['paper_value'])} | {_fmt(r['estimate'])}{_interval(r['low'], r['high'])}"
                     f" | {size_text} | {r['verdict']} | {_fmt(r.get('p_adjusted'), '.2g')} | "
                     f"{r['n_seeds']} x {r['n_batches']} | {need_text} |")
    missing = findings.get("missing") or {}
    if missing:
        lines += ["", "Without findings records: "
                  + "; ".join(f"{k} ({v})" for k, v in missing.items()) + "."]
    return "\n".join(lines) + "\n"


_TABLE_START = "| Finding | Layer |"
_TABLE_END = "Without findings records:"


def replace_findings_table(text: str, findings: dict) -> str:
    """`text` (the README) with its findings table (header through last row, and the "Without
    findings records" line right after it) replaced by `findings_markdown(findings)`.
    InputError when `text` has no such table."""
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
    lines = [("| PDE / model | Configuration | Finding | Baseline | Ablated | Change (95% CI) | "
              "Seed std (base / ablated) | Exceeds noise |"), "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['pde']} / {r['model']} | {r['config']} | {r['finding']} | "
                     f"{_fmt(r['baseline_value'])} | {_fmt(r['value'])} | "
                     f"{_fmt(r['change'])}{_interval(r.get('low'), r.get('high'))} | "
                     f"{_fmt(r['seed_std_baseline'])} / {_fmt(r['seed_std'])} | "
                     f"{'yes' if r['exceeds_noise'] else 'no'} |")
    return "\n".join(lines) + "\n"


_ROW_KEY = ("finding", "pde", "model", "cls", "dt", "recipe")


def verdict_changes(old: dict, new: dict) -> dict:
    """How the verdicts of two findings tables (as written by `write_findings`) differ, row by
    row, matched on (finding, PDE, model, class, dt, recipe).

    Returns `{"changed": [{key..., "old", "new"}], "same": n, "only_old": [keys],
    "only_new": [keys], "transitions": {"old -> new": count}}`. InputError when either
    argument has no 'findings' list."""
    rows = {}
    for name, table in (("old", old), ("new", new)):
        found = table.get("findings") if isinstance(table, dict) else None
        if not isinstance(found, list):
            raise InputError(f"{name}: expected a findings table with a 'findings' list")
        rows[name] = {tuple(r.get(k) for k in _ROW_KEY): r for r in found}
    common = [k for k in rows["new"] if k in rows["old"]]
    changed = [{**dict(zip(_ROW_KEY, k)), "old": rows["old"][k]["verdict"],
                "new": rows["new"][k]["verdict"]}
               for k in common if rows["old"][k]["verdict"] != rows["new"][k]["verdict"]]
    transitions = Counter(f"{c['old']} -> {c['new']}" for c in changed)
    return {"changed": changed, "same": len(common) - len(changed),
            "only_old": [dict(zip(_ROW_KEY, k)) for k in rows["old"] if k not in rows["new"]],
            "only_new": [dict(zip(_ROW_KEY, k)) for k in rows["new"] if k not in rows["old"]],
            "transitions": dict(sorted(transitions.items(), key=lambda kv: -kv[1]))}
