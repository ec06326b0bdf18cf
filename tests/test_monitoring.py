"""Metrics end to end: real stage commands push to a real Pushgateway, and the alert rules do what they say.

The Pushgateway and promtool come from the system (``make tools`` installs them): no mocks of either.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from cluster_tools import require
from prometheus_client.parser import text_string_to_metric_families

from liverseg_workflows.monitoring import (
    ARGO_PREFIX,
    MAX_DAYS_WITHOUT_SUCCESS,
    TRAIN_STALL_MINUTES,
    WORKFLOW_FAILURES,
    rule_groups,
)

WORKFLOW = "liverseg-pipeline-m3tr1"


def system_tool(name: str) -> Path:
    return require(Path(shutil.which(name) or f"/usr/bin/{name}"), name, "make tools (apt: prometheus, "
                                                                        "prometheus-pushgateway)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def pushgateway(tmp_path):
    """A real Pushgateway on a free loopback port; stopped by its PID."""
    address = f"127.0.0.1:{free_port()}"
    log = (tmp_path / "pushgateway.log").open("wb")
    process = subprocess.Popen([str(system_tool("prometheus-pushgateway")), f"--web.listen-address={address}"],
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://{address}/-/ready", timeout=1) as ready:
                    if ready.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        yield address
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def scrape(address: str) -> dict[str, list]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def liverseg(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "liverseg", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, check=False, timeout=300)


def test_stage_commands_push_their_metrics_with_workflow_stage_and_case(pushgateway, store_env, tiny_dataset,
                                                                        tmp_path):
    env = {**store_env, "PATH": os.environ["PATH"], "LIVERSEG_PUSHGATEWAY": pushgateway,
           "LIVERSEG_WORKFLOW": WORKFLOW}
    assert liverseg("ingest", str(tiny_dataset), "--dataset", "tiny", env=env, cwd=tmp_path).returncode == 0
    plan = liverseg("plan", "--run-id", "m1", "--dataset", "tiny", "--profile", "default",
                    "--case-list", f"cases={tmp_path / 'cases.json'}", env=env, cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    case = json.loads((tmp_path / "cases.json").read_text())[0]
    convert = liverseg("convert", "--run-id", "m1", "--case", case, env=env, cwd=tmp_path)
    assert convert.returncode == 0, convert.stderr

    samples = scrape(pushgateway)
    # The Pushgateway adds an empty instance label to groups pushed without one.
    base = {"job": "liverseg", "instance": "", "workflow": WORKFLOW}

    def one(name: str, **labels: str):
        found = [s for s in samples.get(name, []) if s.labels == {**base, **labels}]
        assert len(found) == 1, (name, labels, samples.get(name))
        return found[0].value

    # Whole-run stage: grouped by workflow and stage; a per-case pod: also by case.
    assert one("liverseg_stage_duration_seconds", stage="plan") > 0
    assert one("liverseg_stage_duration_seconds", stage="convert", case=case) > 0
    assert one("liverseg_stage_last_success_timestamp_seconds", stage="convert", case=case) > time.time() - 600
    assert one("liverseg_stage_cases_total", stage="convert", case=case, outcome="ok") == 1
    assert one("liverseg_stage_bytes_total", stage="convert", case=case, direction="out") > 0
    assert one("liverseg_stage_case_seconds_count", stage="convert", case=case) == 1
    # The Pushgateway's own bookkeeping, which the training-stall alert reads.
    assert one("push_time_seconds", stage="convert", case=case) > time.time() - 600


# -- alert rules ------------------------------------------------------------------------------------------------
def rules_by_name() -> dict[str, dict]:
    return {r["alert"]: r for g in rule_groups() for r in g["rules"]}


@pytest.fixture
def rules_file(tmp_path) -> Path:
    path = tmp_path / "liverseg-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule_groups()}, sort_keys=False))
    return path


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(system_tool("promtool")), *args], capture_output=True, text=True, cwd=cwd,
                          check=False, timeout=60)


def test_rules_and_a_scrape_config_for_the_pushgateway_pass_promtool(rules_file, tmp_path):
    done = promtool("check", "rules", str(rules_file), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    config = {"rule_files": [rules_file.name],
              # The scrape job docs/OPERATIONS.md gives: honor_labels keeps the pushed workflow/stage/case labels.
              "scrape_configs": [{"job_name": "liverseg-pushgateway", "honor_labels": True,
                                  "static_configs": [{"targets": ["liverseg-pushgateway.liverseg.svc:9091"]}]}]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    done = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def expected(alert: str, **labels: str) -> dict:
    rule = rules_by_name()[alert]
    return {"exp_labels": {**rule["labels"], **labels}, "exp_annotations": rule["annotations"]}


def test_alerts_fire_when_they_should_and_only_then(rules_file, tmp_path):
    failures = ARGO_PREFIX + WORKFLOW_FAILURES
    train = 'job="liverseg", stage="train"'
    stall = TRAIN_STALL_MINUTES
    tests = {"rule_files": [rules_file.name], "evaluation_interval": "1m", "tests": [
        {"name": "a failed workflow alerts for an hour, counted from its first failure",
         "interval": "1m",
         "input_series": [{"series": f'{failures}{{template="liverseg-pipeline"}}', "values": "_x10 1x120 2x60"}],
         "alert_rule_test": [
             {"eval_time": "5m", "alertname": "LiversegWorkflowFailed", "exp_alerts": []},
             {"eval_time": "20m", "alertname": "LiversegWorkflowFailed",
              "exp_alerts": [expected("LiversegWorkflowFailed", template="liverseg-pipeline")]},
             {"eval_time": "100m", "alertname": "LiversegWorkflowFailed", "exp_alerts": []},
             {"eval_time": "140m", "alertname": "LiversegWorkflowFailed",
              "exp_alerts": [expected("LiversegWorkflowFailed", template="liverseg-pipeline")]}]},
        {"name": "training that stopped pushing alerts; finished training does not",
         "interval": "1m",
         "input_series": [
             # wf-stuck pushed last at t=0 and never finished; wf-done finished (last success set) at t=0.
             {"series": f'push_time_seconds{{{train}, workflow="wf-stuck"}}', "values": "0+0x400"},
             {"series": f'liverseg_stage_last_success_timestamp_seconds{{{train}, workflow="wf-stuck"}}',
              "values": "0+0x400"},
             {"series": f'push_time_seconds{{{train}, workflow="wf-done"}}', "values": "0+0x400"},
             {"series": f'liverseg_stage_last_success_timestamp_seconds{{{train}, workflow="wf-done"}}',
              "values": "1+0x400"}],
         "alert_rule_test": [
             {"eval_time": f"{stall - 10}m", "alertname": "LiversegTrainingStalled", "exp_alerts": []},
             {"eval_time": f"{stall + 15}m", "alertname": "LiversegTrainingStalled",
              "exp_alerts": [expected("LiversegTrainingStalled", workflow="wf-stuck")]}]},
        {"name": "no finished evaluation for too long alerts",
         "interval": "1m",  # samples as often as rules are evaluated, as a scrape would: none goes stale
         "input_series": [{"series": 'liverseg_stage_last_success_timestamp_seconds{job="liverseg", '
                                     'stage="evaluate", workflow="wf-1"}',
                           "values": f"3600+0x{(MAX_DAYS_WITHOUT_SUCCESS + 1) * 24 * 60}"}],
         "alert_rule_test": [
             {"eval_time": f"{MAX_DAYS_WITHOUT_SUCCESS * 24 - 2}h", "alertname": "LiversegNoRecentSuccessfulRun",
              "exp_alerts": []},
             {"eval_time": f"{MAX_DAYS_WITHOUT_SUCCESS * 24 + 4}h", "alertname": "LiversegNoRecentSuccessfulRun",
              "exp_alerts": [expected("LiversegNoRecentSuccessfulRun")]}]},
    ]}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    done = promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
