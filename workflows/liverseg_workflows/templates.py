"""Argo templates for one ``graph.Step``, the exit handler, and the spec fields every liverseg workflow shares.

A step's template takes what its command line needs as input parameters (``run-id``, ``case`` for per-case steps,
one per ``{placeholder}`` in the step's arguments) and builds that command line with ``step.args``, the same
function the local runner calls, so the cluster and ``liverseg run`` cannot drift apart.
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from typing import Any

from hera.workflows import DAG, Container, EmptyDirVolume, Resources, Task
from hera.workflows.models import ArtifactRepositoryRef, Metadata, Mutex, PodGC, Synchronization, TTLStrategy
from hera.workflows.models import Toleration as ModelToleration

from liverseg.graph import DEFAULT_RESOURCES, Step
from liverseg.graph import Resources as StepResources
from liverseg_workflows.cluster import (
    ARTIFACT_REPOSITORIES_CONFIGMAP,
    ARTIFACT_REPOSITORY_KEY,
    GPU_RESOURCE,
    SERVICE_ACCOUNT,
    TRAINING_PRIORITY_CLASS,
    WORKFLOW_POD_LABELS,
)
from liverseg_workflows.monitoring import step_metrics, workflow_metrics
from liverseg_workflows.pods import (
    RETRY_TRANSIENT,
    input_parameter,
    liverseg_container,
    pod_security_context,
    workflow_parameter,
)
from liverseg_workflows.values import WorkflowValues

# A run id is chosen per submission; left empty, the workflow's own (unique) name is the run id, which is what a
# CronWorkflow run gets. Evaluated in the top-level DAG's task arguments: step templates only see ``run-id``.
RUN_ID = "{{=workflow.parameters['run-id'] == '' ? workflow.name : workflow.parameters['run-id']}}"
CASE = "case"
EXIT_HANDLER = "exit-handler"
RECORD_STATUS = "record-status"



def input_name(placeholder: str) -> str:
    """Argo parameter names are kebab-case: ``max_cases`` -> ``max-cases``."""
    return placeholder.replace("_", "-")


def placeholders(step: Step) -> list[str]:
    """The ``{placeholders}`` a step's arguments use, ``run_id`` first (``Step.args`` always passes it)."""
    found = {field for arg in step.extra_args for _, field, _, _ in string.Formatter().parse(arg) if field}
    return ["run_id", *sorted(found - {"run_id"})]


def step_inputs(step: Step, per_case: bool | None = None) -> list[str]:
    """Input parameter names of the step's template; ``per_case`` defaults to whether the step fans out."""
    names = [input_name(p) for p in placeholders(step)]
    return [*names, CASE] if _per_case(step, per_case) else names


def step_command(step: Step, per_case: bool | None = None) -> list[str]:
    """``step.args`` with every placeholder (and the case) taken from the template's input parameters."""
    values = {p: input_parameter(input_name(p)) for p in placeholders(step)}
    return step.args(values, case=input_parameter(CASE) if _per_case(step, per_case) else None)


def _per_case(step: Step, per_case: bool | None) -> bool:
    return step.covers != "run" if per_case is None else per_case


def resources(declared: StepResources, gpus: int = 0, workers: int = 0) -> Resources:
    """A step's declared resources as Hera's: memory request = limit (a stage that outgrows it is OOM-killed
    visibly rather than starving its node), no CPU limit (throttling only slows a batch job down). A GPU step's
    figures are per GPU (``gpus`` of them, 0 counting as one process on the CPU), each with ``workers`` loader
    workers."""
    scale = max(gpus, 1) if declared.gpu else 1
    memory = _times(per_process(declared, "memory", workers), scale)
    return Resources(cpu_request=_times(per_process(declared, "cpu", workers), scale), memory_request=memory,
                     memory_limit=memory, gpus=gpus if declared.gpu else None,
                     gpu_flag=GPU_RESOURCE if declared.gpu else None)


def per_process(declared: StepResources, field: str, workers: int) -> str:
    """One process's ``cpu``, ``memory`` or ``shm`` with its ``workers`` loader workers."""
    quantity = getattr(declared, field)
    if declared.per_worker is None or not workers:
        return quantity
    return _plus(quantity, _times(getattr(declared.per_worker, field), workers))


_BINARY = {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def _split(quantity: str) -> tuple[int, str]:
    number = quantity.rstrip("KMGTPEi")
    return int(number), quantity[len(number):]


def _times(quantity: str, factor: int) -> str:
    """``"4Gi"`` × 2 = ``"8Gi"``: a Kubernetes quantity (an integer with an optional binary suffix) scaled."""
    number, suffix = _split(quantity)
    return f"{number * factor}{suffix}"


def _plus(a: str, b: str) -> str:
    """``"1Gi"`` + ``"512Mi"`` = ``"1536Mi"``: in the largest binary unit that holds the sum exactly."""
    total = sum(n * _BINARY[suffix] for n, suffix in map(_split, (a, b)))
    suffix = next(s for s in ("Ti", "Gi", "Mi", "Ki", "") if total % _BINARY[s] == 0)
    return f"{total // _BINARY[suffix]}{suffix}"


def step_template(step: Step, values: WorkflowValues, *, name: str | None = None, per_case: bool | None = None,
                  extra_args: Sequence[str] = (), extra_inputs: Sequence[str] = (), **template: Any) -> Container:
    """The container template of ``step``: ``liverseg <step.args> <extra_args>`` in the step's image."""
    if step.resources.gpu:
        template.update(gpu_scheduling(step, values))
        extra_args = [*extra_args, *PROCESS_ARGS]
    if step.mutex:
        template["synchronization"] = Synchronization(mutexes=[Mutex(name=step.mutex)])
    template.setdefault("resources", resources(step.resources))
    return liverseg_container(name or step.name, step.image.name, [*step_command(step, per_case), *extra_args],
                              [*step_inputs(step, per_case), *extra_inputs], retry_strategy=RETRY_TRANSIENT,
                              metrics=step_metrics(name or step.name), **template)


# A GPU step runs one process per GPU it gets (one on the CPU when it gets none), each with the loader workers the
# pod is sized for: its command line says so, whatever the profile's train.processes and train.loader_workers.
PROCESS_ARGS = ("--gpus", workflow_parameter("gpus"), "--loader-workers", workflow_parameter("loader-workers"))


def gpu_scheduling(step: Step, values: WorkflowValues) -> dict[str, Any]:
    """Template fields of a GPU step: the GPUs, where they are, /dev/shm, and the training priority class."""
    gpus, workers = int(values.parameters.gpus), int(values.parameters.loader_workers)
    # Argo cannot template a resource quantity (it parses it before substituting), so the template carries the
    # site's default count and this patch applies the ``gpus`` parameter of each submission.
    per_run = {GPU_RESOURCE: workflow_parameter("gpus")}
    patch = {"containers": [{"name": "main", "resources": {"requests": per_run, "limits": per_run}}]}
    return {
        "resources": resources(step.resources, gpus, workers),
        "pod_spec_patch": json.dumps(patch, sort_keys=True),
        "node_selector": dict(values.gpu.node_selector) or None,
        "tolerations": [ModelToleration(**t.model_dump(exclude_none=True)) for t in values.gpu.tolerations] or None,
        "priority_class_name": TRAINING_PRIORITY_CLASS,
        # DataLoader workers share batches through /dev/shm; the container default (64 MiB) is far too small.
        "volumes": [EmptyDirVolume(name="dshm", mount_path="/dev/shm", medium="Memory",
                                   size_limit=_times(per_process(step.resources, "shm", workers), max(gpus, 1)))]
        if step.resources.shm else [],
    }


def record_status_template(image_name: str) -> Container:
    """The exit handler's container: writes how the workflow ended to the store (``liverseg record-status``)."""
    args = [RECORD_STATUS, "--run-id", input_parameter("run-id"), "--workflow", "{{workflow.name}}",
            "--status", "{{workflow.status}}", "--duration", "{{workflow.duration}}",
            "--parameters", "{{workflow.parameters}}"]
    return liverseg_container(RECORD_STATUS, image_name, args, ["run-id"], resources=resources(DEFAULT_RESOURCES),
                              retry_strategy=RETRY_TRANSIENT)


def exit_handler(image_name: str) -> DAG:
    """Runs after every workflow, whatever its outcome (``spec.onExit``)."""
    record = record_status_template(image_name)
    with DAG(name=EXIT_HANDLER) as dag:
        Task(name=RECORD_STATUS, template=record, arguments={"run-id": RUN_ID})
    return dag


def workflow_spec(values: WorkflowValues, template: str, deadline_seconds: int) -> dict[str, Any]:
    """Spec fields shared by every liverseg WorkflowTemplate (Hera ``Workflow`` keyword arguments)."""
    return {
        "namespace": values.namespace,
        "labels": {"app.kubernetes.io/part-of": "liverseg"},
        "service_account_name": SERVICE_ACCOUNT,
        "security_context": pod_security_context(),
        "pod_metadata": Metadata(labels=dict(WORKFLOW_POD_LABELS)),
        "parallelism": values.parallelism,
        "active_deadline_seconds": deadline_seconds,
        # Failed pods stay for `kubectl logs` and `describe`; logs of all pods are archived to the store anyway.
        "pod_gc": PodGC(strategy="OnPodSuccess"),
        "ttl_strategy": TTLStrategy(seconds_after_success=2 * 86400, seconds_after_failure=7 * 86400),
        "artifact_repository_ref": ArtifactRepositoryRef(config_map=ARTIFACT_REPOSITORIES_CONFIGMAP,
                                                         key=ARTIFACT_REPOSITORY_KEY),
        "on_exit": EXIT_HANDLER,
        "metrics": workflow_metrics(template),
    }
