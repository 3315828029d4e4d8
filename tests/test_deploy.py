"""deploy/kubernetes.yaml: every document valid against Kubernetes' own OpenAPI schemas (kubernetes-validate,
which vendors them per Kubernetes release and checks with jsonschema; strict: an unknown field is an error), and
the pieces agreeing with each other and with the archive's command line."""

from __future__ import annotations

from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())  # an older supported one, the newest


def documents() -> list[dict]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text()) if doc]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_document_is_valid_kubernetes(version):
    docs = documents()
    assert sorted(doc["kind"] for doc in docs) == ["Deployment", "Service"]
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError naming the field


def test_the_service_reaches_the_pods_and_readiness_is_health():
    by_kind = {doc["kind"]: doc for doc in documents()}
    deployment, service = by_kind["Deployment"], by_kind["Service"]
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    port_names = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] in port_names
    args = container["args"]
    assert args[args.index("--host") + 1] == "0.0.0.0" and "--nobrowser" in args
    assert port_names["http"] == int(args[args.index("--port") + 1])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"


def test_the_archive_accepts_the_arguments():
    from click.testing import CliRunner

    from llamapyz.cli.main import archive_command

    container = next(d for d in documents() if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    result = CliRunner().invoke(archive_command, [*container["args"], "--help"])
    assert result.exit_code == 0, result.output  # every option is one the archive knows
