"""What every liverseg pod gets: the image, the store settings (and the store's CA, if the site has one), a
locked-down container, a writable /tmp.

Stage images run ``liverseg`` as uid 10001 on a read-only root filesystem; the only writable place is the /tmp
emptyDir, which is also where Argo's emissary executor picks up output parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

from hera.workflows import (
    ConfigMapEnvFrom,
    ConfigMapVolume,
    Container,
    EmptyDirVolume,
    Env,
    Parameter,
    SecretEnv,
)
from hera.workflows.models import (
    Backoff,
    Capabilities,
    PodSecurityContext,
    RetryStrategy,
    SeccompProfile,
    SecurityContext,
)

from liverseg.settings import ENV_BUCKET, ENV_HOME, ENV_WORKFLOW
from liverseg_workflows.cluster import (
    ARCHIVE_CA_CONFIGMAP,
    ARCHIVE_CA_MOUNT,
    ARCHIVE_SECRET,
    ARCHIVE_SECRET_KEYS,
    RUN_AS_USER,
    SETTINGS_CONFIGMAP,
    STORE_CA_CONFIGMAP,
    STORE_CA_MOUNT,
    STORE_SECRET,
    STORE_SECRET_KEYS,
)

ENTRYPOINT = "liverseg"
TMP = "/tmp"


def workflow_parameter(name: str) -> str:
    return f"{{{{workflow.parameters.{name}}}}}"


def input_parameter(name: str) -> str:
    return f"{{{{inputs.parameters.{name}}}}}"


def image(name: str) -> str:
    """The stage image, from the workflow's registry and tag parameters."""
    return f"{workflow_parameter('registry')}/liverseg-{name}:{workflow_parameter('tag')}"


def pod_security_context() -> PodSecurityContext:
    """Pod level: also covers Argo's init and wait containers, which the workflow does not define."""
    return PodSecurityContext(run_as_non_root=True, run_as_user=RUN_AS_USER, run_as_group=RUN_AS_USER,
                              fs_group=RUN_AS_USER, seccomp_profile=SeccompProfile(type="RuntimeDefault"))


def container_security_context() -> SecurityContext:
    return SecurityContext(run_as_non_root=True, run_as_user=RUN_AS_USER, run_as_group=RUN_AS_USER,
                           read_only_root_filesystem=True, allow_privilege_escalation=False,
                           capabilities=Capabilities(drop=["ALL"]),
                           seccomp_profile=SeccompProfile(type="RuntimeDefault"))


def store_env() -> list[Env | SecretEnv]:
    """Credentials by Secret key reference (values never appear in a template); the bucket from the parameter."""
    secrets = [SecretEnv(name=var, secret_name=STORE_SECRET, secret_key=key) for var, key in STORE_SECRET_KEYS.items()]
    return [*secrets,
            Env(name=ENV_BUCKET, value=workflow_parameter("bucket")),
            Env(name=ENV_WORKFLOW, value="{{workflow.name}}"),  # metrics grouping key
            # Anything that wants a home or a cache (torch, MONAI, matplotlib) writes under /tmp.
            Env(name="HOME", value=TMP),
            Env(name=ENV_HOME, value=f"{TMP}/liverseg")]


def archive_access() -> dict[str, list]:
    """Template fields of a pod that talks to the DICOMweb archive: its credentials, each an optional key of the
    Secret (values never in a template), and its private CA when the site has one (an optional ConfigMap)."""
    return {"env": [SecretEnv(name=var, secret_name=ARCHIVE_SECRET, secret_key=key, optional=True)
                    for var, key in ARCHIVE_SECRET_KEYS.items()],
            "volumes": [ConfigMapVolume(name=ARCHIVE_CA_CONFIGMAP, mount_path=ARCHIVE_CA_MOUNT, read_only=True,
                                        optional=True)]}


# Transient failures are worth another pod: Argo-level errors (node lost, pod evicted or deleted) and exit code 1
# (the stage could not run: store unreachable after its own retries). Exit code 2 is a usage or configuration
# error that a retry would only repeat. Stages are idempotent (manifests), and train resumes from its checkpoint.
RETRY_TRANSIENT = RetryStrategy(limit=3, retry_policy="Always",
                                expression="lastRetry.status == 'Error' || asInt(lastRetry.exitCode) == 1",
                                backoff=Backoff(duration="1m", factor=2, max_duration="30m"))


def liverseg_container(name: str, image_name: str, args: Sequence[str], inputs: Sequence[str],
                       **template: object) -> Container:
    """A container template running ``liverseg ARGS`` in a stage image, hardened, with the store settings.

    ``inputs`` are the template's input parameter names; ``template`` passes any other Hera template field
    (resources, outputs, retries, GPU scheduling, metrics, extra volumes and environment variables).
    """
    volumes = [EmptyDirVolume(name="tmp", mount_path=TMP),
               ConfigMapVolume(name=STORE_CA_CONFIGMAP, mount_path=STORE_CA_MOUNT, read_only=True, optional=True),
               *template.pop("volumes", [])]
    return Container(name=name, image=image(image_name), command=[ENTRYPOINT], args=list(args),
                     inputs=[Parameter(name=n) for n in inputs], env=[*store_env(), *template.pop("env", [])],
                     env_from=[ConfigMapEnvFrom(name=SETTINGS_CONFIGMAP)],
                     security_context=container_security_context(), volumes=volumes,
                     **template)
