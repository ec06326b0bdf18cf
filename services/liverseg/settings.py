"""Where the store is and how to reach it, from environment variables.

The names are the ones the Kubernetes Secret and ConfigMap set on every workflow pod (k8s/base), so a stage reads
its settings the same way on a laptop and in the cluster. When they are absent, the embedded store's settings file
(written by ``liverseg store up``) is used, so local commands need no exports.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from liverseg.errors import SettingsError

ENV_ENDPOINT = "LIVERSEG_S3_ENDPOINT"
ENV_ACCESS_KEY = "LIVERSEG_S3_ACCESS_KEY"
ENV_SECRET_KEY = "LIVERSEG_S3_SECRET_KEY"
ENV_SECURE = "LIVERSEG_S3_SECURE"
ENV_CA_BUNDLE = "LIVERSEG_S3_CA_BUNDLE"
ENV_REGION = "LIVERSEG_S3_REGION"
ENV_BUCKET = "LIVERSEG_BUCKET"
ENV_HOME = "LIVERSEG_HOME"
ENV_PUSHGATEWAY = "LIVERSEG_PUSHGATEWAY"
ENV_WORKFLOW = "LIVERSEG_WORKFLOW"
ENV_WORKER = "LIVERSEG_WORKER"
# The DICOMweb archive's secrets (liverseg.dicomweb reads them; the log scrubber hides them from the start).
ENV_DICOMWEB_PASSWORD = "LIVERSEG_DICOMWEB_PASSWORD"
ENV_DICOMWEB_TOKEN = "LIVERSEG_DICOMWEB_TOKEN"

STORE_ENV_KEYS = (ENV_ENDPOINT, ENV_ACCESS_KEY, ENV_SECRET_KEY, ENV_SECURE, ENV_CA_BUNDLE, ENV_REGION, ENV_BUCKET)


def home() -> Path:
    """Project-local state folder (embedded store data, reports); ignored by git."""
    return Path(os.environ.get(ENV_HOME, ".liverseg")).resolve()


def _truthy(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


@dataclass(frozen=True)
class StoreSettings:
    """Connection settings for the S3 store. ``secret_key`` is kept out of ``repr`` so it never reaches a log."""

    endpoint: str
    access_key: str
    secret_key: str = field(repr=False)
    bucket: str = "liverseg"
    secure: bool = False
    ca_bundle: str | None = None
    region: str | None = None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> StoreSettings:
        env = dict(os.environ if environ is None else environ)
        if ENV_ENDPOINT not in env:
            local = home() / "store" / "store.env"
            if local.exists():
                env = {**read_env_file(local), **env}
        missing = [k for k in (ENV_ENDPOINT, ENV_ACCESS_KEY, ENV_SECRET_KEY) if not env.get(k)]
        if missing:
            raise SettingsError(
                f"store settings missing: {', '.join(missing)} (set them, or start the embedded store with "
                "'liverseg store up')")
        endpoint = env[ENV_ENDPOINT]
        if "://" in endpoint:
            raise SettingsError(f"{ENV_ENDPOINT} must be host:port without a scheme (got {endpoint!r}); "
                                f"use {ENV_SECURE}=true for TLS")
        return cls(
            endpoint=endpoint,
            access_key=env[ENV_ACCESS_KEY],
            secret_key=env[ENV_SECRET_KEY],
            bucket=env.get(ENV_BUCKET) or "liverseg",
            secure=_truthy(env.get(ENV_SECURE, "false")),
            ca_bundle=env.get(ENV_CA_BUNDLE) or None,
            region=env.get(ENV_REGION) or None,
        )

    def to_env(self) -> dict[str, str]:
        """The environment a child process (stage, container) needs to reach the same store."""
        env = {
            ENV_ENDPOINT: self.endpoint,
            ENV_ACCESS_KEY: self.access_key,
            ENV_SECRET_KEY: self.secret_key,
            ENV_BUCKET: self.bucket,
            ENV_SECURE: "true" if self.secure else "false",
        }
        if self.ca_bundle:
            env[ENV_CA_BUNDLE] = self.ca_bundle
        if self.region:
            env[ENV_REGION] = self.region
        return env
