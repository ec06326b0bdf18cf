"""The ``liverseg-pipeline`` WorkflowTemplate: every step of ``graph.PIPELINE``, as one Argo DAG.

``plan`` writes the run's case lists as output parameters (``--case-list COVERS=PATH``). Steps that cover cases
(``covers``) are grouped into one nested DAG per case list, fanned out with ``withParam`` (one DAG, and so one pod
per step, for each case):

    plan ─▶ each-case[convert ─▶ group ─▶ preprocess] ─▶ train ─▶ each-held-out-case[infer] ─▶ evaluate ─▶ …

The shape comes from the graph's ``needs`` and ``covers`` alone: a step added to the graph appears here.
"""

from __future__ import annotations

from dataclasses import dataclass

from hera.workflows import DAG, Container, Parameter, Task, WorkflowTemplate
from hera.workflows.models import ValueFrom

from liverseg.graph import PIPELINE, Covers, Step, topological
from liverseg_workflows.pods import TMP, input_parameter, workflow_parameter
from liverseg_workflows.templates import CASE, RUN_ID, exit_handler, step_inputs, step_template, workflow_spec
from liverseg_workflows.values import WorkflowValues

NAME = "liverseg-pipeline"
ENTRYPOINT = "pipeline"
PLAN = "plan"
DEADLINE_SECONDS = 3 * 86400


@dataclass(frozen=True)
class CaseList:
    """The case ids of one ``covers`` value: ``plan`` writes them (``--case-list COVERS=FILE``) as the output
    parameter ``output``, and the nested per-case DAG ``dag`` fans out over them."""

    covers: Covers
    output: str
    dag: str

    @property
    def path(self) -> str:
        return f"{TMP}/outputs/{self.output}.json"

    @property
    def items(self) -> str:
        return f"{{{{tasks.{PLAN}.outputs.parameters.{self.output}}}}}"


CASE_LISTS: dict[Covers, CaseList] = {
    "cases": CaseList("cases", "cases", "each-case"),
    "test": CaseList("test", "test-cases", "each-held-out-case"),
}

# Where the DAG takes each step input from. Epochs are an override like any other, given their own parameter.
OVERRIDES = ("{{=workflow.parameters.overrides + (workflow.parameters.epochs == '' ? '' : "
             "';train.epochs=' + workflow.parameters.epochs)}}")
SOURCES = {"run-id": RUN_ID, "overrides": OVERRIDES, "dataset": workflow_parameter("dataset"),
           "profile": workflow_parameter("profile"), "max-cases": workflow_parameter("max-cases")}
# Workflow parameters whose defaults are the site's values (values.Parameters), besides ``run-id``.
SITE_PARAMETERS = ("dataset", "profile", "epochs", "overrides", "max-cases", "gpus", "loader-workers", "bucket",
                   "registry", "tag")


def node_name(step: Step) -> str:
    """The top-level DAG task a step runs in: its own, or its case list's fan-out."""
    return step.name if step.covers == "run" else CASE_LISTS[step.covers].dag


def inputs_of(steps: list[Step]) -> list[str]:
    return list(dict.fromkeys(i for s in steps for i in step_inputs(s)))


def top_level_nodes(steps: list[Step]) -> dict[str, set[str]]:
    """Top-level task -> the tasks it depends on, in an order Argo can run (fails if the grouping made a cycle:
    a per-case step that needs a whole-run step that needs an earlier per-case step of the same list)."""
    by_name = {s.name: s for s in steps}
    needs: dict[str, set[str]] = {}
    for step in steps:
        needs.setdefault(node_name(step), set()).update(node_name(by_name[n]) for n in step.needs)
    fans_out = {node_name(s) for s in steps if s.covers != "run"}
    for node, deps in needs.items():
        deps.discard(node)
        if node in fans_out:
            deps.add(PLAN)  # withParam reads plan's output: a dependency even where the graph implies it
    ordered: dict[str, set[str]] = {}
    while len(ordered) < len(needs):
        ready = [n for n, deps in needs.items() if n not in ordered and deps <= ordered.keys()]
        if not ready:
            raise ValueError(f"per-case grouping makes a cycle among {sorted(set(needs) - set(ordered))}")
        ordered.update((n, needs[n]) for n in ready)
    # Each task names only what it does not already wait for through another (every step reads the plan).
    before: dict[str, set[str]] = {}
    for node, deps in ordered.items():
        before[node] = set(deps).union(*(before[d] for d in deps))
    return {node: {d for d in deps if not any(d in before[other] for other in deps - {d})
                   or (d == PLAN and node in fans_out)} for node, deps in ordered.items()}


def plan_outputs() -> dict:
    """The plan step's extra arguments and output parameters: one file per case list."""
    lists = CASE_LISTS.values()
    return {"extra_args": [a for c in lists for a in ("--case-list", f"{c.covers}={c.path}")],
            "outputs": [Parameter(name=c.output, value_from=ValueFrom(path=c.path)) for c in lists]}


def fan_out_dag(case_list: CaseList, steps: list[Step], templates: dict[str, Container]) -> DAG:
    """One case's steps, in dependency order; the case and the step inputs come in as DAG inputs."""
    names = {s.name for s in steps}
    with DAG(name=case_list.dag, inputs=[Parameter(name=i) for i in inputs_of(steps)]) as dag:
        for step in steps:
            Task(name=step.name, template=templates[step.name],
                 arguments={i: input_parameter(i) for i in step_inputs(step)},
                 depends=" && ".join(n for n in step.needs if n in names) or None)
    return dag


def parameters(values: WorkflowValues) -> list[Parameter]:
    defaults = values.parameters.model_dump(by_alias=True)
    fields = type(values.parameters).model_fields
    descriptions = {f.alias or name: f.description for name, f in fields.items()}
    run_id = Parameter(name="run-id", value="", description="run id (runs/<run-id>/ in the store); empty: the "
                                                            "workflow's name. An existing run id resumes that run")
    return [run_id, *(Parameter(name=p, value=defaults[p], description=descriptions[p]) for p in SITE_PARAMETERS)]


def pipeline_template(values: WorkflowValues, steps: tuple[Step, ...] = PIPELINE) -> WorkflowTemplate:
    ordered = topological(steps)
    with WorkflowTemplate(name=NAME, entrypoint=ENTRYPOINT, arguments=parameters(values),
                          **workflow_spec(values, NAME, DEADLINE_SECONDS)) as wt:
        templates = {s.name: step_template(s, values, **(plan_outputs() if s.name == PLAN else {}))
                     for s in ordered}
        nodes = top_level_nodes(ordered)
        members = {node: [s for s in ordered if node_name(s) == node] for node in nodes}
        case_lists = {node: CASE_LISTS.get(group[0].covers) for node, group in members.items()}
        # Nested DAG templates are built before the DAG that calls them (Hera adds each to the workflow as made).
        node_templates = {node: fan_out_dag(case_lists[node], group, templates) if case_lists[node] else
                          templates[node] for node, group in members.items()}
        with DAG(name=ENTRYPOINT):
            for node, needs in nodes.items():
                case_list = case_lists[node]
                Task(name=node, template=node_templates[node], with_param=case_list.items if case_list else None,
                     depends=" && ".join(sorted(needs)) or None,
                     arguments={i: "{{item}}" if i == CASE else SOURCES[i] for i in inputs_of(members[node])})
        # Any stage image has the liverseg command; the plan's is the one every run has already pulled.
        exit_handler(next(s.image.name for s in ordered if s.name == PLAN))
    return wt
