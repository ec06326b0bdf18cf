"""The Argo objects Hera renders from the stage graph: schema-valid, wired like the local runner, locked down.

The wiring test plays Argo's part: it resolves workflow parameters, DAG arguments, ``withParam`` items and
template inputs exactly as the controller would substitute them, and checks that every pod would run the command
line that ``liverseg run`` runs for the same step, the same values and the same case.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest
import yaml
from cluster_tools import REPO, argo_errors

from liverseg import runner
from liverseg.cli import main
from liverseg.graph import CT, GROUP_IMAGE, GROUPS, INFER_IMAGE, PIPELINE, STEPS, SUMMARY, Output, Step
from liverseg.runner import RunSpec
from liverseg_workflows import infer, pipeline, retrain, watch
from liverseg_workflows.cluster import (
    ARCHIVE_CA_CONFIGMAP,
    ARCHIVE_CA_MOUNT,
    ARCHIVE_SECRET,
    ARCHIVE_SECRET_KEYS,
    RUN_AS_USER,
    SERVICE_ACCOUNT,
    SETTINGS_CONFIGMAP,
    STORE_CA_CONFIGMAP,
    STORE_CA_MOUNT,
    STORE_SECRET,
    STORE_SECRET_KEYS,
    TRAINING_PRIORITY_CLASS,
)
from liverseg_workflows.contract import container_calls
from liverseg_workflows.render import render_all
from liverseg_workflows.values import WorkflowValues

SITES = {"default": None, "dev": REPO / "k8s/overlays/dev/workflows.yaml",
         "hospital": REPO / "k8s/overlays/hospital/workflows.yaml"}
CHART_FILES = REPO / "charts" / "liverseg" / "files" / "rendered"


def site_values(site: str) -> WorkflowValues:
    return WorkflowValues.from_yaml(SITES[site]) if SITES[site] else WorkflowValues()


@pytest.fixture(scope="module", params=list(SITES))
def rendered(request) -> dict[str, dict[str, Any]]:
    return render_all(site_values(request.param))


def objects(rendered, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in rendered.values() if o["kind"] == kind}


def templates(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in obj["spec"]["templates"]}


# -- schema ---------------------------------------------------------------------------------------------------
def test_every_argo_object_validates_against_argos_schema(rendered):
    argo = [o for o in rendered.values() if o["apiVersion"] == "argoproj.io/v1alpha1"]
    assert {o["kind"] for o in argo} == {"WorkflowTemplate", "CronWorkflow"}
    for obj in argo:
        assert argo_errors(obj) == [], obj["metadata"]["name"]


def test_the_schema_check_rejects_unknown_and_misplaced_fields():
    wt = render_all()[f"workflowtemplate-{pipeline.NAME}.yaml"]
    train = templates(wt)["train"]
    train["container"]["gpus"] = 1                      # unknown field in a container
    train["nodeSelector"] = "gpu"                        # wrong type
    wt["spec"]["cronSchedule"] = "0 2 * * *"             # field of another kind
    errors = "\n".join(argo_errors(wt))
    assert "'gpus' was unexpected" in errors and "'cronSchedule' was unexpected" in errors
    assert "nodeSelector: 'gpu' is not of type 'object'" in errors


# -- wiring: the same commands as the local runner --------------------------------------------------------------
def _expr_to_python(expr: str) -> str:
    """Argo's expr syntax, as far as liverseg's templates use it, as Python."""
    expr = re.sub(r"workflow\.parameters(?:\['([^']+)'\]|\.(\w+))",
                  lambda m: f"S['workflow.parameters.{m.group(1) or m.group(2)}']", expr)
    expr = expr.replace("workflow.name", "S['workflow.name']")
    ternary = re.compile(r"([^()?:]+?)\s*\?\s*([^()?:]+?)\s*:\s*([^()?:]+)")
    while "?" in expr:
        expr = ternary.sub(lambda m: f"(({m.group(2)}) if ({m.group(1)}) else ({m.group(3)}))", expr, count=1)
    return expr


def resolve(text: str, scope: dict[str, str]) -> str:
    """Substitute a template tag the way the Argo controller does: expression tags evaluated, simple tags
    replaced; a variable that is not in scope is an error (Argo would fail the workflow)."""
    if text.startswith("{{=") and text.endswith("}}"):
        return str(eval(_expr_to_python(text[3:-2]), {"S": scope}))
    return re.sub(r"\{\{\s*([^{}\s]+)\s*\}\}", lambda m: scope[m.group(1)], text)


def pods_argo_would_run(wt: dict[str, Any], submitted: dict[str, str], workflow_name: str,
                        outputs: dict[str, list[str]]) -> dict[str, list[list[str]]]:
    """Template name -> the argument lists of the pods a run of ``wt`` would start (``outputs``: what plan
    writes, by output parameter name)."""
    params = {p["name"]: p.get("value") for p in wt["spec"]["arguments"]["parameters"]} | submitted
    scope = {f"workflow.parameters.{k}": v for k, v in params.items()} | {
        "workflow.name": workflow_name,
        "workflow.parameters": json.dumps([{"name": k, "value": v} for k, v in params.items()]),
        # what the exit handler sees
        "workflow.status": "Succeeded", "workflow.duration": "3600.5"}
    by_name = templates(wt)
    pods: dict[str, list[list[str]]] = {}

    def run(template: dict[str, Any], inputs: dict[str, str]) -> None:
        local = scope | {f"inputs.parameters.{k}": v for k, v in inputs.items()}
        assert sorted(inputs) == sorted(p["name"] for p in template.get("inputs", {}).get("parameters", []))
        if "container" in template:
            pods.setdefault(template["name"], []).append([resolve(a, local) for a in template["container"]["args"]])
            return
        for task in template["dag"]["tasks"]:
            task_scope = local | {f"tasks.{n}.outputs.parameters.{k}": json.dumps(v) for n in ("plan",)
                                  for k, v in outputs.items()}
            items = json.loads(resolve(task["withParam"], task_scope)) if "withParam" in task else [None]
            for item in items:
                arguments = {a["name"]: resolve(a["value"], task_scope | {"item": item})
                             for a in task.get("arguments", {}).get("parameters", [])}
                run(by_name[task["template"]], arguments)

    run(by_name[wt["spec"]["entrypoint"]], {})
    run(by_name[wt["spec"]["onExit"]], {})
    return pods


CASES, TEST_CASES = ["liver_0", "liver_1", "liver_2"], ["liver_2"]
OUTPUTS = {"cases": CASES, "test-cases": TEST_CASES}


# What each step's pods run, written out for the first submission below (r1, tiny, seed, one override, 3 cases):
# the command lines a person reads in ``kubectl get pod -o yaml``, not rebuilt from the code under test.
EXPECTED_R1 = {
    "plan": [["plan", "--run-id", "r1", "--dataset", "tiny", "--profile", "seed", "--overrides", "train.lr=0.01",
              "--max-cases", "3"]],
    **{step: [[step, "--run-id", "r1", "--case", case] for case in CASES] for step in ("convert", "group",
                                                                                       "preprocess")},
    "train": [["train", "--run-id", "r1"]],
    "infer": [["infer", "--run-id", "r1", "--case", "liver_2"]],
    "evaluate": [["evaluate", "--run-id", "r1"]],
    "promote": [["promote", "--run-id", "r1"]],
}


@pytest.mark.parametrize("submitted, spec", [
    ({"run-id": "r1", "dataset": "tiny", "profile": "seed", "overrides": "train.lr=0.01", "max-cases": "3"},
     RunSpec("r1", "tiny", "seed", ["train.lr=0.01"], 3)),
    # The epochs parameter is an override like the others; no run id: the workflow's name.
    ({"epochs": "50", "overrides": "train.lr=0.01"},
     RunSpec("liverseg-pipeline-x7k2p", "Task03_Liver", "default", ["train.lr=0.01", "train.epochs=50"])),
    ({}, RunSpec("liverseg-pipeline-x7k2p", "Task03_Liver", "default")),
    ({"gpus": "2", "loader-workers": "6"}, RunSpec("liverseg-pipeline-x7k2p", "Task03_Liver", "default")),
    ({"gpus": "0"}, RunSpec("liverseg-pipeline-x7k2p", "Task03_Liver", "default")),
])
def test_every_pod_runs_what_the_local_runner_runs_for_its_step(submitted, spec):
    """The pods' command lines (rendered YAML, Argo's substitution) against the local runner's (its child process
    command lines), and, for the first submission, both against the lines written out above."""
    wt = render_all()[f"workflowtemplate-{pipeline.NAME}.yaml"]
    pods = pods_argo_would_run(wt, submitted, "liverseg-pipeline-x7k2p", OUTPUTS)
    for step in PIPELINE:
        cases = {"run": [None], "cases": CASES, "test": TEST_CASES}[step.covers]
        expected = [runner.step_command(step, spec, case)[3:] for case in cases]  # less python -m liverseg
        got = pods.pop(step.name)
        if step.name == pipeline.PLAN:
            # plan also writes the case lists Argo fans out over; the rest of its command line is the runner's.
            assert all(a[-4:] == ["--case-list", "cases=/tmp/outputs/cases.json", "--case-list",
                                  "test=/tmp/outputs/test-cases.json"] for a in got)
            got = [a[:-4] for a in got]
        if step.resources.gpu:
            # A GPU step also runs one process per GPU (0: one, on the CPU) with the workers its pod is sized for
            # (the gpus and loader-workers parameters); locally the profile says so.
            assert all(a[-4:] == ["--gpus", submitted.get("gpus", "1"), "--loader-workers",
                                  submitted.get("loader-workers", "4")] for a in got)
            got = [a[:-4] for a in got]
        if "--overrides" in expected[0]:
            # The runner joins overrides with ';'; plan splits on ';' and drops empty items.
            at = expected[0].index("--overrides") + 1
            split = [[o for o in args[at].split(";") if o] for args in (expected[0], got[0])]
            assert split[0] == split[1]
            got[0][at] = expected[0][at]
        assert got == expected, step.name
        if spec.run_id == "r1":
            assert got == EXPECTED_R1[step.name], step.name
    assert set(pods) == {"record-status"}  # only the exit handler is left, which the runner has no need for


def test_plan_outputs_are_the_lists_per_case_steps_fan_out_over():
    wt = render_all()[f"workflowtemplate-{pipeline.NAME}.yaml"]
    plan = templates(wt)["plan"]
    assert {p["name"]: p["valueFrom"]["path"] for p in plan["outputs"]["parameters"]} == {
        "cases": "/tmp/outputs/cases.json", "test-cases": "/tmp/outputs/test-cases.json"}
    tasks = {t["name"]: t for t in templates(wt)["pipeline"]["dag"]["tasks"]}
    assert tasks["each-case"]["withParam"] == "{{tasks.plan.outputs.parameters.cases}}"
    assert tasks["each-held-out-case"]["withParam"] == "{{tasks.plan.outputs.parameters.test-cases}}"
    nested = [t["name"] for t in templates(wt)["each-case"]["dag"]["tasks"]]
    assert nested == [s.name for s in PIPELINE if s.covers == "cases"]
    assert tasks["train"]["depends"] == "each-case"


def test_a_step_added_to_the_graph_appears_without_editing_the_workflows():
    report = Step("report", INFER_IMAGE, "s", reads=(SUMMARY,), extra_args=("--dataset", "{dataset}"))
    check = Step("check", GROUP_IMAGE, "s", covers="cases", reads=(GROUPS,))
    wt = pipeline.pipeline_template(WorkflowValues(), (*PIPELINE, report, check)).to_dict()
    assert templates(wt)["report"]["container"]["args"] == [
        "report", "--run-id", "{{inputs.parameters.run-id}}", "--dataset", "{{inputs.parameters.dataset}}"]
    tasks = {t["name"]: t for t in templates(wt)["pipeline"]["dag"]["tasks"]}
    assert "evaluate" in tasks["report"]["depends"]
    assert {a["name"]: a["value"] for a in tasks["report"]["arguments"]["parameters"]}["dataset"] == \
        "{{workflow.parameters.dataset}}"
    nested = {t["name"]: t for t in templates(wt)["each-case"]["dag"]["tasks"]}
    assert nested["check"]["depends"] == "group"
    assert argo_errors(wt) == []


def test_a_grouping_that_would_make_a_cycle_is_refused():
    table = Output("whole", "table", "table.json", per_case=False)
    whole = Step("whole", GROUP_IMAGE, "s", reads=(CT,), writes=(table,))
    after = Step("after", GROUP_IMAGE, "s", covers="cases", reads=(table,))
    with pytest.raises(ValueError, match="cycle"):
        pipeline.pipeline_template(WorkflowValues(), (*PIPELINE, whole, after))


def test_infer_template_segments_each_study_with_the_chosen_model():
    wt = render_all()[f"workflowtemplate-{infer.NAME}.yaml"]
    studies = ["a=incoming/a.nii.gz", "incoming/dicom/b/", "https://pacs.example/dicom-web/studies/1.2.3"]
    pods = pods_argo_would_run(wt, {"studies": json.dumps(studies)}, "liverseg-infer-abc", {})
    assert pods.pop(infer.TEMPLATE) == [
        ["infer", "--run-id", "liverseg-infer-abc", "--model", "champion", "--study", s, "--send-to", ""]
        for s in studies]
    sent = pods_argo_would_run(wt, {"studies": json.dumps(studies[2:]), "send-to": "https://pacs.example/dicom-web"},
                               "liverseg-infer-abc", {})[infer.TEMPLATE]
    assert sent == [["infer", "--run-id", "liverseg-infer-abc", "--model", "champion", "--study", studies[2],
                     "--send-to", "https://pacs.example/dicom-web"]]
    assert set(pods) == {"record-status"}
    assert "value" not in wt["spec"]["arguments"]["parameters"][0]  # studies: required at submission
    assert templates(wt)[infer.TEMPLATE]["container"]["image"].endswith(f"/liverseg-{STEPS['infer'].image.name}:"
                                                                         "{{workflow.parameters.tag}}")


def test_exit_handler_records_the_outcome_under_the_run_id():
    wt = render_all()[f"workflowtemplate-{pipeline.NAME}.yaml"]
    (args,) = pods_argo_would_run(wt, {"run-id": "r9"}, "wf", OUTPUTS)["record-status"]
    assert args[:9] == ["record-status", "--run-id", "r9", "--workflow", "wf", "--status", "Succeeded",
                        "--duration", "3600.5"]
    parameters = json.loads(args[args.index("--parameters") + 1])
    assert {"name": "run-id", "value": "r9"} in parameters


# -- GPU, schedule, security ------------------------------------------------------------------------------------
def test_train_requests_gpus_and_runs_where_the_site_says():
    values = site_values("hospital")
    wt = render_all(values)[f"workflowtemplate-{pipeline.NAME}.yaml"]
    (gpu_step,) = [s for s in PIPELINE if s.resources.gpu]
    train = templates(wt)[gpu_step.name]
    resources = train["container"]["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == "1"
    assert train["nodeSelector"] == {"nvidia.com/gpu.present": "true", "hospital.example/node-pool": "gpu-research"}
    assert train["tolerations"] == [t.model_dump(exclude_none=True) for t in values.gpu.tolerations]
    assert len(train["tolerations"]) == 2
    # The per-submission GPU count: a pod spec patch, since Argo cannot template a resource quantity.
    patch = json.loads(train["podSpecPatch"])["containers"][0]
    assert patch["name"] == "main"
    assert patch["resources"]["requests"]["nvidia.com/gpu"] == patch["resources"]["limits"]["nvidia.com/gpu"] == \
        "{{workflow.parameters.gpus}}"
    assert train["priorityClassName"] == TRAINING_PRIORITY_CLASS
    shm = next(v for v in train["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in train["container"]["volumeMounts"]
    retry = train["retryStrategy"]
    assert retry["limit"] == 3 and "lastRetry.status == 'Error'" in retry["expression"]
    # Only GPU steps get GPUs and GPU nodes.
    for step in PIPELINE:
        if not step.resources.gpu:
            assert "nvidia.com/gpu" not in json.dumps(templates(wt)[step.name]["container"]["resources"])
            assert "nodeSelector" not in templates(wt)[step.name]


@pytest.mark.parametrize("gpus, workers, cpu, memory, shm", [
    ("1", "4", "6", "32Gi", "3Gi"),          # per GPU: 2 CPUs, 24Gi, 1Gi; per worker 1 CPU, 2Gi, 512Mi
    ("2", "6", "16", "72Gi", "8Gi"),
    ("0", "2", "4", "28Gi", "2Gi"),          # on the CPU: one process
])
def test_the_training_pod_is_sized_for_its_processes_and_loader_workers(gpus, workers, cpu, memory, shm):
    values = WorkflowValues.model_validate({"parameters": {"gpus": gpus, "loader-workers": workers}})
    wt = render_all(values)[f"workflowtemplate-{pipeline.NAME}.yaml"]
    train = templates(wt)["train"]
    requests, limits = train["container"]["resources"]["requests"], train["container"]["resources"]["limits"]
    assert (requests["cpu"], requests["memory"], limits["memory"]) == (cpu, memory, memory)
    assert "cpu" not in limits
    assert next(v for v in train["volumes"] if v["name"] == "dshm")["emptyDir"]["sizeLimit"] == shm
    (args,) = pods_argo_would_run(wt, {}, "wf", OUTPUTS)["train"]
    assert args[-4:] == ["--gpus", gpus, "--loader-workers", workers]
    assert argo_errors(wt) == []


def test_only_promote_holds_the_champion_lock(rendered):
    """Two runs promoting at once could both gate against the old champion and crown the worse challenger."""
    wt = objects(rendered, "WorkflowTemplate")[pipeline.NAME]
    locked = {name: t["synchronization"] for name, t in templates(wt).items() if "synchronization" in t}
    assert locked == {"promote": {"mutexes": [{"name": "liverseg-champion"}]}}


def test_retrain_cron_runs_the_pipeline_template_on_the_sites_schedule_one_at_a_time(rendered):
    cron = objects(rendered, "CronWorkflow")[retrain.NAME]
    spec = cron["spec"]
    assert "schedule" not in spec and spec["schedules"] and all(len(s.split()) == 5 for s in spec["schedules"])
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] == retrain.STARTING_DEADLINE_SECONDS
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    assert spec["workflowSpec"] == {"workflowTemplateRef": {"name": pipeline.NAME}}
    assert spec["timezone"]


def test_every_pod_is_locked_down_and_gets_its_settings_by_reference(rendered):
    for wt in objects(rendered, "WorkflowTemplate").values():
        spec = wt["spec"]
        assert spec["serviceAccountName"] == SERVICE_ACCOUNT
        assert spec["securityContext"] == {"runAsNonRoot": True, "runAsUser": RUN_AS_USER, "runAsGroup": RUN_AS_USER,
                                           "fsGroup": RUN_AS_USER, "seccompProfile": {"type": "RuntimeDefault"}}
        assert spec["podGC"]["strategy"] == "OnPodSuccess" and spec["ttlStrategy"]["secondsAfterSuccess"] > 0
        assert {m["name"] for m in spec["metrics"]["prometheus"]} == {"liverseg_workflow_duration_seconds",
                                                                     "liverseg_workflow_failures"}
        containers = [t for t in spec["templates"] if "container" in t]
        assert containers
        for template in containers:
            c = template["container"]
            assert c["securityContext"] == {
                "runAsNonRoot": True, "runAsUser": RUN_AS_USER, "runAsGroup": RUN_AS_USER,
                "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}, template["name"]
            assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
            assert {"name": "tmp", "emptyDir": {}} in template["volumes"]
            # A private CA for the store's TLS, when the site has one (optional: pods start without it).
            assert {"name": STORE_CA_CONFIGMAP, "mountPath": STORE_CA_MOUNT, "readOnly": True} in c["volumeMounts"]
            assert {"name": STORE_CA_CONFIGMAP, "configMap": {"name": STORE_CA_CONFIGMAP, "optional": True}} \
                in template["volumes"]
            assert c["command"] == ["liverseg"]
            env = {e["name"]: e for e in c["env"]}
            for var, key in STORE_SECRET_KEYS.items():
                assert env[var] == {"name": var, "valueFrom": {"secretKeyRef": {"name": STORE_SECRET, "key": key}}}
            assert c["envFrom"] == [{"configMapRef": {"name": SETTINGS_CONFIGMAP}}]
            assert env["LIVERSEG_WORKFLOW"]["value"] == "{{workflow.name}}"
            assert c["resources"]["requests"]["memory"] == c["resources"]["limits"]["memory"]


# -- contract helper, values, chart copy, CLI --------------------------------------------------------------------
CONTRACT_VALUES = {"registry": "localhost", "tag": "dev", "run-id": "r1", "case": "liver_0", "dataset": "tiny",
                   "profile": "default", "overrides": "", "max-cases": "0", "model": "champion",
                   "study": "s=incoming/s.nii.gz", "bucket": "liverseg", "send-to": "", "archive": "http://pacs/dw",
                   "workflow.name": "wf", "workflow.status": "Succeeded", "workflow.duration": "1.5",
                   "workflow.parameters": "[]", "gpus": "0", "loader-workers": "1"}


def test_container_calls_give_each_templates_image_and_command_with_values_filled_in():
    calls = {(c.workflow, c.template): c for c in container_calls(CONTRACT_VALUES)}
    assert {t for w, t in calls if w == pipeline.NAME} == {s.name for s in PIPELINE} | {"record-status"}
    train = calls[(pipeline.NAME, "train")]
    assert train.image == "localhost/liverseg-train:dev"
    assert train.command == ["liverseg"] and train.args == ["train", "--run-id", "r1", "--gpus", "0",
                                                             "--loader-workers", "1"]
    assert calls[(infer.NAME, infer.TEMPLATE)].args[-4:] == ["--study", "s=incoming/s.nii.gz", "--send-to", ""]
    assert calls[(watch.NAME, watch.WATCH)].args[:3] == ["watch", "--archive", "http://pacs/dw"]
    assert train.env["LIVERSEG_BUCKET"] == "liverseg" and "LIVERSEG_S3_SECRET_KEY" not in train.env
    for call in calls.values():
        assert "{{" not in " ".join([call.image, *call.args, *call.env.values()])
    with pytest.raises(KeyError, match="case"):
        container_calls({k: v for k, v in CONTRACT_VALUES.items() if k != "case"})


def test_values_documents_reject_unknown_keys_and_accept_numbers(tmp_path):
    path = tmp_path / "values.yaml"
    path.write_text("parameters: {epochs: 30, gpus: 2}\n")
    values = WorkflowValues.from_yaml(path)
    assert (values.parameters.epochs, values.parameters.gpus) == ("30", "2")
    path.write_text("gpu: {nodeSelctor: {a: b}}\n")
    with pytest.raises(ValueError, match="nodeSelctor"):
        WorkflowValues.from_yaml(path)


def test_the_charts_copy_of_the_rendering_is_fresh():
    fresh = render_all()
    committed = {p.relative_to(CHART_FILES).as_posix(): yaml.safe_load(p.read_text())
                 for p in CHART_FILES.rglob("*.yaml")}
    assert committed == fresh, "charts/liverseg/files/rendered is stale: run `make render` and commit it"


def test_render_command_writes_one_file_per_object(tmp_path, capsys):
    assert main(["workflows", "render", "--out", str(tmp_path / "out"), "--values", str(SITES["hospital"])]) == 0
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.yaml"))
    assert written == sorted(render_all()) and "monitoring/prometheusrule-liverseg.yaml" in written
    cron = yaml.safe_load((tmp_path / "out" / f"cronworkflow-{retrain.NAME}.yaml").read_text())
    assert cron["spec"]["timezone"] == "Europe/Berlin"
    (tmp_path / "bad.yaml").write_text("paralelism: 3\n")
    assert main(["workflows", "render", "--out", str(tmp_path / "x"), "--values", str(tmp_path / "bad.yaml")]) == 2


def test_record_status_writes_how_the_workflow_ended_to_the_store(store, store_env, capsys):
    parameters = json.dumps([{"name": "run-id", "value": ""}, {"name": "dataset", "value": "tiny"}])
    assert main(["record-status", "--run-id", "r1", "--workflow", "liverseg-pipeline-abc", "--status", "Failed",
                 "--duration", "12.34", "--parameters", parameters]) == 0
    record = store.get_json("runs/r1/workflows/liverseg-pipeline-abc.json")
    assert record["status"] == "Failed" and record["duration_seconds"] == 12.3
    assert record["parameters"] == {"run-id": "", "dataset": "tiny"}
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["key"] == \
        "runs/r1/workflows/liverseg-pipeline-abc.json"


def test_every_workflow_parameter_says_what_it_is(rendered):
    for wt in objects(rendered, "WorkflowTemplate").values():
        for p in wt["spec"]["arguments"]["parameters"]:
            assert p["description"], p["name"]


def test_the_liverseg_command_starts_in_a_stage_image_without_the_ops_extra():
    """Stage images install no Hera or Kubernetes client: the commands registered from liverseg_workflows must
    not import them until they run (the exit handler's record-status runs in a stage image)."""
    code = ("import sys\n"
            "for name in ('hera', 'kubernetes', 'jsonschema'): sys.modules[name] = None\n"
            "from liverseg.cli import main\n"
            "sys.exit(main(['record-status', '--help']))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "--workflow" in done.stdout


# -- the hospital loop: liverseg-watch ----------------------------------------------------------------------------
def test_watch_fans_out_to_the_infer_templates_pod_in_the_run_the_watch_names(rendered):
    wt = objects(rendered, "WorkflowTemplate")[watch.NAME]
    segment = templates(objects(rendered, "WorkflowTemplate")[infer.NAME])[infer.TEMPLATE]
    dag = {t["name"]: t for t in templates(wt)[watch.ENTRYPOINT]["dag"]["tasks"]}
    fan_out = dag[infer.TEMPLATE]
    assert fan_out["templateRef"] == {"name": infer.NAME, "template": infer.TEMPLATE}  # by reference, not a copy
    assert fan_out["depends"] == watch.WATCH
    assert fan_out["withParam"] == "{{tasks.watch.outputs.parameters.studies}}"
    passed = {a["name"]: a["value"] for a in fan_out["arguments"]["parameters"]}
    assert set(passed) == {p["name"] for p in segment["inputs"]["parameters"]}
    assert passed["run-id"] == "{{tasks.watch.outputs.parameters.run-id}}" and passed["study"] == "{{item}}"
    # The referenced template reads these workflow parameters: the watch workflow must have them.
    used = set(re.findall(r"\{\{workflow\.parameters\.([\w-]+)\}\}", json.dumps(segment)))
    declared = {p["name"] for p in wt["spec"]["arguments"]["parameters"]}
    assert used <= declared, used - declared
    watcher = templates(wt)[watch.WATCH]
    assert watcher["container"]["args"][:3] == ["watch", "--archive", "{{workflow.parameters.archive}}"]
    assert {p["name"]: p["valueFrom"]["path"] for p in watcher["outputs"]["parameters"]} == {
        "studies": "/tmp/outputs/studies.json", "run-id": "/tmp/outputs/run-id"}
    assert "onExit" not in wt["spec"]
    cron = objects(rendered, "CronWorkflow")[watch.NAME]["spec"]
    assert cron["concurrencyPolicy"] == "Forbid"
    assert cron["workflowSpec"] == {"workflowTemplateRef": {"name": watch.NAME}}
    assert all(len(s.split()) == 5 for s in cron["schedules"])


def test_only_the_pods_that_talk_to_the_archive_get_its_credentials_and_they_by_reference(rendered):
    archive_pods = {(infer.NAME, infer.TEMPLATE), (watch.NAME, watch.WATCH)}
    for wt in objects(rendered, "WorkflowTemplate").values():
        for template in (t for t in wt["spec"]["templates"] if "container" in t):
            env = {e["name"]: e for e in template["container"]["env"]}
            talks = (wt["metadata"]["name"], template["name"]) in archive_pods
            assert (set(ARCHIVE_SECRET_KEYS) <= set(env)) == talks, template["name"]
            if not talks:
                assert not set(ARCHIVE_SECRET_KEYS) & set(env)
                continue
            for var, key in ARCHIVE_SECRET_KEYS.items():
                assert env[var] == {"name": var, "valueFrom": {"secretKeyRef": {
                    "name": ARCHIVE_SECRET, "key": key, "optional": True}}}
            assert {"name": ARCHIVE_CA_CONFIGMAP, "mountPath": ARCHIVE_CA_MOUNT, "readOnly": True} in \
                template["container"]["volumeMounts"]


def test_site_values_set_the_archive_and_the_watch_schedule():
    dev, hospital = (render_all(site_values(s)) for s in ("dev", "hospital"))
    for rendered, archive in ((dev, "http://liverseg-orthanc:8042/dicom-web"),
                              (hospital, "https://pacs.hospital.example/dicom-web")):
        wt = objects(rendered, "WorkflowTemplate")[watch.NAME]
        defaults = {p["name"]: p["value"] for p in wt["spec"]["arguments"]["parameters"]}
        assert defaults["archive"] == defaults["send-to"] == archive
        assert objects(rendered, "CronWorkflow")[watch.NAME]["spec"]["suspend"] is False
    assert objects(render_all(), "CronWorkflow")[watch.NAME]["spec"]["suspend"] is True  # no archive named yet
