"""deploy/: the Prometheus alerting rules and the Grafana dashboard.

- `promtool check rules` and `promtool test rules` (the rules' own unit tests: each alert fires
  on the series a sick host exports and stays quiet on a healthy one) run in the suite; with
  CI=true a missing promtool FAILS (Debian's `prometheus` package ships it; ./dev installs it),
  locally it skips;
- every alert has a unit test, and the dashboard's queries parse (as recording rules);
- every metric the rules and the dashboard name is one a real agent on a real stack exports,
  so a renamed metric cannot leave an alert that never fires.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import IN_CI, wait_until
from tests.test_metrics_clients import TIMED, agent_for  # noqa: F401 - a fixture

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "stackmon.rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "stackmon.rules.test.yml"
DASHBOARD = DEPLOY / "grafana" / "stackmon-dashboard.json"
METRIC = re.compile(r"\bstackmon_[a-z0-9_]+\b")


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        message = "promtool not found (apt-get install prometheus)"
        if IN_CI:
            pytest.fail(f"{message} (CI=true: the rule tests are required here)", pytrace=False)
        pytest.skip(message)
    return path


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


def dashboard_queries() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    out = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    out += [v["query"]["query"] for v in doc["templating"]["list"]
            if isinstance(v.get("query"), dict)]
    return out


def rule_expressions() -> list[str]:
    """The expr of every rule, one line or a `|` block (the lines indented deeper than
    `expr:`), read without a YAML library."""
    exprs: list[list[str]] = []
    block_indent: int | None = None
    for line in RULES.read_text().splitlines():
        indent = len(line) - len(line.lstrip())
        if block_indent is not None and line.strip() and indent > block_indent:
            exprs[-1].append(line.strip())
            continue
        block_indent = None
        m = re.match(r"^(\s*)expr:\s*(.*)$", line)
        if m:
            exprs.append([] if m.group(2) == "|" else [m.group(2)])
            block_indent = len(m.group(1)) if m.group(2) == "|" else None
    return [" ".join(e) for e in exprs]


def test_rules_pass_promtool_check():
    proc = run_promtool("check", "rules", str(RULES), cwd=RULES.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_rules_pass_their_unit_tests():
    proc = run_promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_promtool_rule_tests_catch_a_wrong_threshold(tmp_path):
    """The unit tests bite: the same tests against rules with the 5xx rate raised fail."""
    mutated = tmp_path / "stackmon.rules.yml"
    mutated.write_text(RULES.read_text().replace(
        "sum by (host, cause) (rate(stackmon_upstream_failures_total[5m])) >= 1",
        "sum by (host, cause) (rate(stackmon_upstream_failures_total[5m])) >= 5"))
    assert mutated.read_text() != RULES.read_text()
    (tmp_path / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    proc = run_promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert proc.returncode != 0
    assert "StackmonUpstreamFailures" in proc.stdout + proc.stderr


def test_every_alert_has_a_unit_test():
    alerts = set(re.findall(r"^\s*- alert: (\w+)", RULES.read_text(), re.M))
    tested = set(re.findall(r"^\s*alertname: (\w+)", RULE_TESTS.read_text(), re.M))
    assert len(alerts) >= 10
    assert alerts - tested == set()
    assert tested - alerts == set()


def test_rule_expressions_are_all_read():
    exprs = rule_expressions()
    assert len(exprs) == len(re.findall(r"^\s*expr:", RULES.read_text(), re.M))
    assert all(METRIC.search(e) for e in exprs), exprs


def test_the_dashboard_is_valid_json_and_its_queries_parse(tmp_path):
    queries = dashboard_queries()
    assert len(queries) >= 12
    as_rules = tmp_path / "dashboard.rules.yml"
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, q in enumerate(queries):
        if q.startswith("label_values("):
            q = q[len("label_values("):].split(",")[0]
        expr = json.dumps(q.replace("$host", ".*"))
        lines += [f"      - record: dashboard:q{i}", f"        expr: {expr}"]
    as_rules.write_text("\n".join(lines) + "\n")
    proc = run_promtool("check", "rules", str(as_rules), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def exported_names(text: str) -> set[str]:
    """Every metric name a scrape offers, as PromQL sees it: counters with `_total`."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        if family.samples:  # a counter family "x" has series "x_total" (and "x_created")
            names.update(s.name for s in family.samples)
        else:  # declared, no series this scrape (no upstream failure yet)
            names.add(family.name + "_total" if family.type == "counter" else family.name)
    return names


def test_every_metric_in_the_rules_and_dashboard_is_exported_by_a_real_agent(fresh_stack,
                                                                            agent_for):  # noqa: F811
    used = {m for e in rule_expressions() for m in METRIC.findall(e)}
    used |= {m for q in dashboard_queries() for m in METRIC.findall(q)}
    assert "stackmon_upstream_failures_total" in used
    assert "stackmon_http_responses_by_status_total" in used
    st = fresh_stack(workers=2, threads=1, name="prom-names", nginx_log_format=TIMED)
    agent = agent_for(st, health=f"{st.base_url}/healthz", health_interval=1.0)
    for _ in range(3):
        httpx.get(f"{st.base_url}/", trust_env=False, timeout=5)

    last: set[str] = set()

    def scrape() -> bool:
        resp = httpx.get(agent.url + "/metrics", trust_env=False, timeout=10,
                         headers={"Authorization": "Bearer metrics-clients-token-0123456789abcdef"})
        assert resp.status_code == 200
        last.clear()
        last.update(exported_names(resp.text))
        # the probe and the access log's timing need a poll or two to show up
        return used <= last

    wait_until(scrape, timeout=20,
               message=lambda: f"the agent to export {sorted(used - last)} (named in deploy/)")
