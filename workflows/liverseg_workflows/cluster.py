"""Names of the cluster objects the workflow pods rely on.

The WorkflowTemplates refer to these objects by name; ``k8s/base`` and the Helm chart create them under the same
names (tests check both), and ``liverseg preflight`` looks for them. Plain constants: no Kubernetes client needed.
"""

from __future__ import annotations

from liverseg.dicomweb import ENV_PASSWORD, ENV_TOKEN, ENV_USERNAME
from liverseg.settings import ENV_ACCESS_KEY, ENV_SECRET_KEY

SERVICE_ACCOUNT = "liverseg-workflow"
# The store credentials. Created by the user (never committed): see docs/OPERATIONS.md. The same Secret holds the
# Argo artifact repository's credentials and, in the dev overlay, the MinIO root user.
STORE_SECRET = "liverseg-store"
# Environment variable -> key in STORE_SECRET. The key names follow Argo's MinIO examples (accesskey/secretkey).
STORE_SECRET_KEYS: dict[str, str] = {ENV_ACCESS_KEY: "accesskey", ENV_SECRET_KEY: "secretkey"}
# Non-secret store settings and the Pushgateway address, as LIVERSEG_* variables (env-from on every pod).
SETTINGS_CONFIGMAP = "liverseg-settings"
# Optional: the CA certificate of a store whose TLS certificate a private CA signed (key ca.crt). Mounted on every
# pod when it exists; set LIVERSEG_S3_CA_BUNDLE to STORE_CA_MOUNT + "/ca.crt" in SETTINGS_CONFIGMAP to use it.
STORE_CA_CONFIGMAP = "liverseg-store-ca"
STORE_CA_MOUNT = "/etc/liverseg/store-ca"
# The DICOMweb archive's credentials (docs/OPERATIONS.md), created by the user; every key optional: basic
# (username + password) or bearer (token), or none for an archive that needs none. The dev overlay's Orthanc reads
# its one user from the same Secret. Only the pods that talk to the archive (segment-study, watch) get them.
ARCHIVE_SECRET = "liverseg-dicomweb"
ARCHIVE_SECRET_KEYS: dict[str, str] = {ENV_USERNAME: "username", ENV_PASSWORD: "password", ENV_TOKEN: "token"}
# Optional: the CA of an archive whose TLS certificate a private CA signed (key ca.crt), mounted on those pods; set
# LIVERSEG_DICOMWEB_CA_BUNDLE to ARCHIVE_CA_MOUNT + "/ca.crt" in SETTINGS_CONFIGMAP to use it.
ARCHIVE_CA_CONFIGMAP = "liverseg-dicomweb-ca"
ARCHIVE_CA_MOUNT = "/etc/liverseg/dicomweb-ca"
# Argo's artifact repository (pod logs are archived there, so podGC can delete pods that succeeded).
ARTIFACT_REPOSITORIES_CONFIGMAP = "artifact-repositories"
ARTIFACT_REPOSITORY_KEY = "liverseg"
TRAINING_PRIORITY_CLASS = "liverseg-training"
PUSHGATEWAY = "liverseg-pushgateway"
# Labels every workflow pod carries (spec.podMetadata); the NetworkPolicies select pods by them.
WORKFLOW_POD_LABELS: dict[str, str] = {"app.kubernetes.io/part-of": "liverseg",
                                       "app.kubernetes.io/component": "workflow"}
# The uid/gid the stage images run as (their Dockerfiles create this user).
RUN_AS_USER = 10001
GPU_RESOURCE = "nvidia.com/gpu"
# The Argo CRDs a liverseg namespace uses: the templates, what they create, and what the executor reports into.
ARGO_CRDS = ("workflows.argoproj.io", "workflowtemplates.argoproj.io", "cronworkflows.argoproj.io",
             "workflowtaskresults.argoproj.io")
