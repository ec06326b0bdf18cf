"""What a site can change in the rendered workflows: one document, the same for Hera, kustomize and Helm.

``liverseg workflows render --values FILE`` reads it (``k8s/overlays/<site>/workflows.yaml``), and the Helm chart
takes the same document under ``.Values.workflows``; tests check that both render identical objects. Keys are
camelCase like any Kubernetes document, except ``parameters``, which is keyed by the Argo parameter names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from liverseg import __version__
from liverseg_workflows.cluster import GPU_RESOURCE


class _Document(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)


class Parameters(_Document):
    """Defaults of the WorkflowTemplates' parameters; every one can still be set per submission."""

    registry: str = Field("registry.example.org/liverseg",
                          description="image registry and path; images are <registry>/liverseg-<stage>:<tag>")
    tag: str = Field(__version__, description="image tag of every stage image")
    bucket: str = Field("liverseg", description="the store bucket (LIVERSEG_BUCKET)")
    dataset: str = Field("Task03_Liver", description="an ingested dataset name (datasets/<name>/ in the store)")
    profile: str = Field("default", description="pipeline profile (services/liverseg/profiles.yaml)")
    epochs: str = Field("", description="training epochs; empty keeps the profile's value")
    overrides: str = Field("", description="more profile overrides, SECTION.FIELD=VALUE separated by ';'")
    max_cases: str = Field("0", alias="max-cases", description="use only the first N cases (0: all)")
    gpus: str = Field("1", description=f"{GPU_RESOURCE} per training pod: one training process each; 0 trains on "
                                       "the CPU")
    loader_workers: str = Field("4", alias="loader-workers", description=(
        "input-pipeline worker processes per training process (train.loader_workers); the pod's CPU, memory and "
        "/dev/shm are sized for the defaults of gpus and loader-workers"))
    model: str = Field("champion", description="model for liverseg-infer: 'champion', a version or a model key")
    send_to: str = Field("", alias="send-to", description="DICOMweb root that receives each study's SEG and "
                                                          "RTSTRUCT (liverseg-infer, liverseg-watch); empty: none")
    archive: str = Field("", description="DICOMweb root liverseg-watch asks for new CT studies, e.g. "
                                         "https://pacs.example/dicom-web")

    @field_validator("*", mode="before")
    @classmethod
    def _as_string(cls, value: object) -> object:
        # Argo parameters are strings; YAML users will write `epochs: 30` and `gpus: 2`.
        return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


class Toleration(_Document):
    key: str | None = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class GpuScheduling(_Document):
    """Where GPU steps may run. Requesting ``nvidia.com/gpu`` already limits them to nodes that have GPUs; the
    node selector picks a pool among those (e.g. ``nvidia.com/gpu.product``), and the tolerations let them onto
    GPU nodes tainted against other pods (the default tolerates the usual ``nvidia.com/gpu`` taint).

    The default selector is empty on purpose: Helm merges maps, so a site's selector would otherwise keep
    whatever default labels it did not null out."""

    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = (Toleration(key=GPU_RESOURCE, operator="Exists", effect="NoSchedule"),)


class Retrain(_Document):
    """The ``liverseg-retrain`` CronWorkflow."""

    schedules: tuple[str, ...] = ("0 2 * * 6",)  # Saturdays 02:00: the GPU is idle and a week of data is in
    timezone: str = "UTC"
    suspend: bool = False


class Watch(_Document):
    """The ``liverseg-watch`` CronWorkflow (its archive is the ``archive`` parameter). Suspended by default: a site
    names its archive first."""

    schedules: tuple[str, ...] = ("*/5 * * * *",)
    timezone: str = "UTC"
    suspend: bool = True


class WorkflowValues(_Document):
    namespace: str = "liverseg"
    # At most this many pods of one workflow run at once (per-case steps fan out over every case).
    parallelism: int = Field(8, ge=1)
    parameters: Parameters = Parameters()
    gpu: GpuScheduling = GpuScheduling()
    retrain: Retrain = Retrain()
    watch: Watch = Watch()

    @classmethod
    def from_yaml(cls, path: Path) -> WorkflowValues:
        return cls.model_validate(yaml.safe_load(Path(path).read_text()) or {})
