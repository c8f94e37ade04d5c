#!/usr/bin/env python3
"""Checks deploy/grafana-dashboard.json and deploy/prometheus-alerts.yml against the relay.

    python3 deploy/check.py

- the dashboard parses, uses a `datasource` template variable for every panel and query;
- every PromQL expression (panels, template variables, alert rules) names only metrics the
  relay exports (the constants in src/observe/metrics.rs, with _bucket/_sum/_count for histograms)
  or Prometheus' own `up`;
- every metric the relay exports is shown on the dashboard;
- every alert rule has an expr, a severity and a summary.

- with promtool on PATH (or $PROMTOOL), the dashboard's expressions parse: they are checked
  as recording rules, with $__rate_interval as 5m and the other variables as ".*".

Syntax of the alert rules themselves: `promtool check rules` / `promtool test rules` (see the
comments at the top of prometheus-alerts.yml). Exits 1 with a list of problems.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
problems = []


def exported_metrics():
    src = (ROOT / "src/observe/metrics.rs").read_text()
    consts = dict(re.findall(r'pub const (\w+): &str = "(outbox_\w+)";', src))
    histograms = set(re.findall(r"describe_histogram!\(\s*(\w+)", src))
    names = set()
    for const, name in consts.items():
        if const in histograms:
            names |= {name + "_bucket", name + "_sum", name + "_count"}
        else:
            names.add(name)
    if not names:
        sys.exit("no metric constants found in src/observe/metrics.rs")
    return names, {consts[c] for c in histograms}


# Words in PromQL that are not metric names: functions are followed by "(" and dropped
# separately; these are keywords, modifiers and aggregation clauses.
KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan",
}


def metric_names(expr):
    """Metric names used in a PromQL expression (also one with Grafana variables)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, regexes)
    e = re.sub(r"\$\{?\w+\}?", "1", e)  # Grafana variables ($__rate_interval, ${job})
    e = re.sub(r"\{[^{}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # ranges and subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\boffset\s+-?\w+", " ", e)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        word = m.group(0)
        if word.lower() in KEYWORDS:
            continue
        if e[m.end():].lstrip().startswith("("):
            continue  # a function or aggregation
        if re.fullmatch(r"\d+[smhdwy]", word) or re.fullmatch(r"e\d+", word):
            continue
        names.add(word)
    return names


DASHBOARD_EXPRS = []


def check_expr(where, expr, known, used):
    if not expr or not expr.strip():
        problems.append(f"{where}: empty expression")
        return
    if not where.startswith("rule "):
        DASHBOARD_EXPRS.append((where, expr))
    for name in metric_names(expr):
        if name == "up":
            continue
        if name not in known:
            problems.append(f"{where}: unknown metric {name!r} in {expr!r}")
        used.add(name)


def check_dashboard(known, histograms, used):
    path = ROOT / "deploy/grafana-dashboard.json"
    try:
        dash = json.loads(path.read_text())
    except ValueError as e:
        problems.append(f"{path.name}: does not parse: {e}")
        return
    variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append("dashboard: no `datasource` template variable of Prometheus type")
    want_ds = "${datasource}"
    for v in variables.values():
        if v.get("type") == "query":
            if v.get("datasource", {}).get("uid") != want_ds:
                problems.append(f"variable {v['name']}: datasource is not {want_ds}")
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", q or "")
            check_expr(f"variable {v['name']}", inner.group(1) if inner else q, known, used)
    ids = set()
    panels = list(dash.get("panels", []))
    for p in panels:
        panels.extend(p.get("panels", []))  # collapsed rows
    for p in panels:
        title = p.get("title", "?")
        if p.get("id") in ids:
            problems.append(f"panel {title}: duplicate id {p.get('id')}")
        ids.add(p.get("id"))
        if p.get("type") == "row":
            continue
        if p.get("datasource", {}).get("uid") != want_ds:
            problems.append(f"panel {title}: datasource is not {want_ds}")
        if not p.get("targets"):
            problems.append(f"panel {title}: no queries")
        for t in p.get("targets", []):
            if t.get("datasource", {}).get("uid") != want_ds:
                problems.append(f"panel {title} query {t.get('refId')}: datasource is not {want_ds}")
            check_expr(f"panel {title!r}", t.get("expr"), known, used)
            if "_bucket" in t.get("expr", "") and "histogram_quantile" not in t["expr"]:
                problems.append(f"panel {title}: a histogram's buckets outside histogram_quantile")
    def family(n):
        base = re.sub(r"_(bucket|sum|count)$", "", n)
        return base if base in histograms else n

    for name in sorted({family(n) for n in known} - {family(n) for n in used}):
        problems.append(f"dashboard: metric {name} is not shown")
    print(f"dashboard: {len([p for p in panels if p.get('type') != 'row'])} panels checked")


def load_rules(text):
    try:
        import yaml  # PyYAML, when installed
    except ImportError:
        yaml = None
    if yaml:
        return yaml.safe_load(text)["groups"]
    # Fallback: the alert names and expressions, by indentation.
    rules, cur, block = [], None, None
    for line in text.splitlines():
        m = re.match(r"\s*- alert: (\S+)", line)
        if m:
            cur = {"alert": m.group(1), "expr": "", "labels": {}, "annotations": {}}
            rules.append(cur)
            block = None
            continue
        if cur is None:
            continue
        m = re.match(r"(\s*)expr: (.*)", line)
        if m:
            if m.group(2).strip() in ("|", ">", "|-", ">-"):
                block = len(m.group(1))
            else:
                cur["expr"] = m.group(2)
            continue
        if block is not None:
            if line.strip() and len(line) - len(line.lstrip()) > block:
                cur["expr"] += line.strip() + "\n"
                continue
            block = None
        m = re.match(r"\s*severity: (\S+)", line)
        if m:
            cur["labels"]["severity"] = m.group(1)
        m = re.match(r"\s*summary: (.+)", line)
        if m:
            cur["annotations"]["summary"] = m.group(1)
    return [{"name": "(parsed without PyYAML)", "rules": rules}]


def check_rules(known, used):
    path = ROOT / "deploy/prometheus-alerts.yml"
    groups = load_rules(path.read_text())
    names = []
    for g in groups:
        for r in g.get("rules", []):
            name = r.get("alert") or r.get("record")
            names.append(name)
            check_expr(f"rule {name}", r.get("expr"), known, used)
            if "alert" in r:
                if not r.get("labels", {}).get("severity"):
                    problems.append(f"rule {name}: no severity label")
                if not r.get("annotations", {}).get("summary"):
                    problems.append(f"rule {name}: no summary annotation")
    if len(set(names)) != len(names):
        problems.append("rules: duplicate names")
    print(f"alert rules: {len(names)} checked: {', '.join(names)}")


def check_syntax_with_promtool():
    promtool = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not promtool:
        print("promtool not found: the dashboard's PromQL syntax was not checked")
        return
    rules = []
    for i, (where, expr) in enumerate(DASHBOARD_EXPRS):
        e = expr.replace("$__rate_interval", "5m").replace("$__range", "1h")
        e = re.sub(r"\$\{?\w+\}?", ".*", e)
        rules.append({"record": f"dashboard_check_{i}", "expr": e})
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)  # JSON is YAML
    try:
        out = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    if out.returncode != 0:
        problems.append("promtool rejects a dashboard expression:\n" + out.stdout + out.stderr)
    else:
        print(f"promtool: the dashboard's {len(rules)} expressions parse")


def self_test():
    assert metric_names('sum by (sink, le) (rate(x_bucket{job=~"$job"}[$__rate_interval]))') == {"x_bucket"}
    assert metric_names("a / b > 0.5 and c offset 15m") == {"a", "b", "c"}
    assert metric_names('absent(up{job="x"} == 1)') == {"up"}
    assert metric_names('histogram_quantile(0.99, sum without (instance) (rate(h_bucket[5m])))') == {"h_bucket"}


def main():
    self_test()
    known, histograms = exported_metrics()
    dash_used, rule_used = set(), set()
    check_dashboard(known, histograms, dash_used)
    check_rules(known, rule_used)
    check_syntax_with_promtool()
    if problems:
        print("\n".join(problems))
        sys.exit(1)
    print(f"ok: every expression uses only the relay's {len(known)} series names (and up)")


if __name__ == "__main__":
    main()
