"""deploy/kubernetes: each manifest against a schema for its kind (the fields of the
Kubernetes API reference these manifests use: an unknown or misspelt key, a wrong type or
a missing required field fails), and the drain's timing kept in step across the files."""

from __future__ import annotations

import functools
import json
import tomllib
from pathlib import Path
from typing import Any

import yaml

KUBE = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"

STR, INT, BOOL = str, int, bool


def obj(required: tuple[str, ...] = (), **props: Any) -> dict[str, Any]:
    return {"required": set(required), "props": props}


def seq(item: Any) -> list[Any]:
    return [item]


STR_MAP = {"map": STR}
LABEL_SELECTOR = obj(
    matchLabels=STR_MAP,
    matchExpressions=seq(obj(("key", "operator"), key=STR, operator=STR, values=seq(STR))),
)
METADATA = obj(("name",), name=STR, namespace=STR, labels=STR_MAP, annotations=STR_MAP)
PORT = (INT, STR)  # IntOrString
HTTP_GET = obj(
    ("port",),
    path=STR,
    port=PORT,
    scheme=STR,
    httpHeaders=seq(obj(("name", "value"), name=STR, value=STR)),
)
EXEC = obj(command=seq(STR))
PROBE = obj(
    httpGet=HTTP_GET,
    exec=EXEC,
    tcpSocket=obj(("port",), port=PORT),
    initialDelaySeconds=INT,
    periodSeconds=INT,
    timeoutSeconds=INT,
    successThreshold=INT,
    failureThreshold=INT,
    terminationGracePeriodSeconds=INT,
)
HANDLER = obj(exec=EXEC, httpGet=HTTP_GET, sleep=obj(("seconds",), seconds=INT))
QUANTITIES = {"map": (STR, INT)}
CONTAINER = obj(
    ("name",),
    name=STR,
    image=STR,
    imagePullPolicy=STR,
    command=seq(STR),
    args=seq(STR),
    workingDir=STR,
    ports=seq(obj(("containerPort",), name=STR, containerPort=INT, protocol=STR)),
    env=seq(
        obj(
            ("name",),
            name=STR,
            value=STR,
            valueFrom=obj(
                secretKeyRef=obj(("key",), name=STR, key=STR, optional=BOOL),
                configMapKeyRef=obj(("key",), name=STR, key=STR, optional=BOOL),
                fieldRef=obj(("fieldPath",), fieldPath=STR, apiVersion=STR),
            ),
        )
    ),
    readinessProbe=PROBE,
    livenessProbe=PROBE,
    startupProbe=PROBE,
    lifecycle=obj(preStop=HANDLER, postStart=HANDLER),
    resources=obj(requests=QUANTITIES, limits=QUANTITIES),
    securityContext=obj(
        allowPrivilegeEscalation=BOOL,
        readOnlyRootFilesystem=BOOL,
        runAsNonRoot=BOOL,
        runAsUser=INT,
        runAsGroup=INT,
        capabilities=obj(add=seq(STR), drop=seq(STR)),
    ),
    volumeMounts=seq(
        obj(("name", "mountPath"), name=STR, mountPath=STR, readOnly=BOOL, subPath=STR)
    ),
)
POD_SPEC = obj(
    ("containers",),
    containers=seq(CONTAINER),
    terminationGracePeriodSeconds=INT,
    securityContext=obj(runAsNonRoot=BOOL, runAsUser=INT, runAsGroup=INT, fsGroup=INT),
    volumes=seq(
        obj(
            ("name",),
            name=STR,
            configMap=obj(name=STR, items=seq(obj(("key", "path"), key=STR, path=STR))),
            secret=obj(secretName=STR),
            emptyDir=obj(medium=STR, sizeLimit=STR),
        )
    ),
    serviceAccountName=STR,
)
DEPLOYMENT_SPEC = obj(
    ("selector", "template"),
    replicas=INT,
    selector=LABEL_SELECTOR,
    strategy=obj(type=STR, rollingUpdate=obj(maxUnavailable=PORT, maxSurge=PORT)),
    minReadySeconds=INT,
    template=obj(metadata=obj(labels=STR_MAP, annotations=STR_MAP), spec=POD_SPEC),
)
SERVICE_SPEC = obj(
    ("ports",),
    type=STR,
    selector=STR_MAP,
    ports=seq(obj(("port",), name=STR, port=INT, targetPort=PORT, protocol=STR, nodePort=INT)),
)
HPA_SPEC = obj(
    ("scaleTargetRef", "maxReplicas"),
    scaleTargetRef=obj(("kind", "name"), apiVersion=STR, kind=STR, name=STR),
    minReplicas=INT,
    maxReplicas=INT,
    metrics=seq(
        obj(
            ("type",),
            type=STR,
            resource=obj(
                ("name", "target"),
                name=STR,
                target=obj(("type",), type=STR, averageUtilization=INT, averageValue=STR),
            ),
        )
    ),
)
PDB_SPEC = obj(selector=LABEL_SELECTOR, minAvailable=PORT, maxUnavailable=PORT)


def kind(api: str, required: tuple[str, ...] = ("metadata",), **props: Any) -> dict[str, Any]:
    return obj(
        ("apiVersion", "kind", *required), apiVersion=api, kind=STR, metadata=METADATA, **props
    )


KINDS = {
    "Deployment": kind("apps/v1", ("metadata", "spec"), spec=DEPLOYMENT_SPEC),
    "Service": kind("v1", ("metadata", "spec"), spec=SERVICE_SPEC),
    "HorizontalPodAutoscaler": kind("autoscaling/v2", ("metadata", "spec"), spec=HPA_SPEC),
    "PodDisruptionBudget": kind("policy/v1", ("metadata", "spec"), spec=PDB_SPEC),
    "ConfigMap": kind("v1", data=STR_MAP),
    "Secret": kind("v1", type=STR, data=STR_MAP, stringData=STR_MAP),
    "Kustomization": kind("kustomize.config.k8s.io/v1beta1", (), resources=seq(STR)),
}


def problems(value: Any, schema: Any, path: str) -> list[str]:
    """What in `value` does not fit `schema` (empty when it fits)."""
    if isinstance(schema, dict) and "props" in schema:
        if not isinstance(value, dict):
            return [f"{path}: must be an object"]
        found = [f"{path}.{k}: missing" for k in sorted(schema["required"] - value.keys())]
        for key, item in value.items():
            if key not in schema["props"]:
                found.append(f"{path}.{key}: unknown field")
            else:
                found += problems(item, schema["props"][key], f"{path}.{key}")
        return found
    if isinstance(schema, dict) and "map" in schema:
        if not isinstance(value, dict):
            return [f"{path}: must be a map"]
        return [p for k, v in value.items() for p in problems(v, schema["map"], f"{path}.{k}")]
    if isinstance(schema, list):
        if not isinstance(value, list):
            return [f"{path}: must be a list"]
        return [p for i, v in enumerate(value) for p in problems(v, schema[0], f"{path}[{i}]")]
    if isinstance(schema, str):  # a constant: apiVersion
        return [] if value == schema else [f"{path}: must be {schema!r}, got {value!r}"]
    types = schema if isinstance(schema, tuple) else (schema,)
    if isinstance(value, bool) and bool not in types:
        return [f"{path}: must be {types}, got a boolean"]
    return [] if isinstance(value, types) else [f"{path}: must be {types}, got {value!r}"]


def load_yaml(path: Path) -> list[dict[str, Any]]:
    """The file's documents (PyYAML is a test dependency: its absence is a failure)."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@functools.cache
def manifests_json() -> str:
    found = {}
    for path in sorted(KUBE.glob("*.yaml")):
        for doc in load_yaml(path):
            found[doc["kind"]] = doc
    return json.dumps(found)


def manifests() -> dict[str, dict[str, Any]]:
    """Every manifest by kind (a fresh copy: a test may change it)."""
    return json.loads(manifests_json())


def test_every_manifest_fits_its_kind_schema() -> None:
    """Each document's kind is known and it has no unknown, mistyped or missing field."""
    docs = manifests()
    assert set(docs) == set(KINDS)
    for name, doc in docs.items():
        assert problems(doc, KINDS[name], name) == []


def test_the_schema_check_catches_a_misspelt_field() -> None:
    """The check is not vacuous: a typo'd probe key and a string replica count fail."""
    bad = manifests()["Deployment"]
    bad["spec"]["replicas"] = "3"
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pth"] = "/"
    found = problems(bad, KINDS["Deployment"], "Deployment")
    assert any("pth: unknown field" in p for p in found)
    assert any("replicas: must be" in p for p in found)


def test_probes_drain_and_grace_period_agree() -> None:
    """Readiness /ready, liveness /health; the grace period covers preStop + the node's drain."""
    docs = manifests()
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    config = tomllib.loads(docs["ConfigMap"]["data"]["scalenode.toml"])["node"]
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep" and float(pre_stop[1]) >= config["drain_delay"]
    needed = float(pre_stop[1]) + config["drain_delay"] + config["drain_timeout"]
    assert pod["terminationGracePeriodSeconds"] > needed
    # The readiness probe notices /ready's 503 within the drain's delay.
    probe = container["readinessProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] < config["drain_delay"]


def test_selectors_ports_and_secret_line_up() -> None:
    """Service, PDB and HPA point at the Deployment's pods and port; the token is the Secret's."""
    docs = manifests()
    labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert docs["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert docs["Service"]["spec"]["selector"].items() <= labels.items()
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == "scalenode"
    container = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    port_names = {p["name"] for p in container["ports"]}
    assert docs["Service"]["spec"]["ports"][0]["targetPort"] in port_names
    assert container["resources"]["requests"]["cpu"]  # the HPA's utilisation is of this
    token = next(e for e in container["env"] if e["name"] == "SCALENODE__NODE__ADMIN_TOKEN")
    ref = token["valueFrom"]["secretKeyRef"]
    assert ref["name"] == docs["Secret"]["metadata"]["name"]
    assert ref["key"] in docs["Secret"]["stringData"]
    listed = set(docs["Kustomization"]["resources"])
    assert listed == {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}
