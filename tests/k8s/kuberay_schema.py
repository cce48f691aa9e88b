"""Our schema of the KubeRay ``ray.io/v1`` fields these manifests use (RayCluster, RayJob).

No package on PyPI, Debian or npm ships KubeRay's CRDs, and copying them into the repository is
not allowed, so the fields are typed here from the KubeRay API reference (ray.io/v1 as of
KubeRay v1.6/v1.7: ``ray-operator/apis/ray/v1/raycluster_types.go`` and ``rayjob_types.go``).
Like the API server with strict field validation, a field the schema does not know is an
error: a misspelling fails, and a KubeRay field not yet used here must be added (from that
reference) before a manifest may use it. The rules KubeRay's operator enforces when it
reconciles (``controllers/ray/utils/validation.go``) are checked too, the ones our fields touch.

Embedded Kubernetes objects (pod templates, the autoscaler container's resources, security
context and environment) are checked against Kubernetes' own schema (tests/k8s/core_schema.py).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from tests.k8s.core_schema import container_fields_errors, pod_template_errors

# KubeRay's limits on names (utils/constant.go): pod names get suffixes.
MAX_RAY_CLUSTER_NAME = 53
MAX_RAY_JOB_NAME = MAX_RAY_CLUSTER_NAME - 6
# Token authentication needs Ray >= 2.52 (validation.go).
TOKEN_AUTH_MIN_RAY = (2, 52, 0)
# RayJob's clusterSelector key naming the cluster (utils/constant.go).
CLUSTER_SELECTOR_KEY = "ray.io/cluster"

DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
RAY_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")

Int32 = Annotated[StrictInt, Field(ge=-(2**31), le=2**31 - 1)]
NonNegativeInt32 = Annotated[StrictInt, Field(ge=0, le=2**31 - 1)]
PositiveInt32 = Annotated[StrictInt, Field(ge=1, le=2**31 - 1)]
StringMap = dict[StrictStr, StrictStr]
# Structure checked against the Kubernetes schema afterwards.
K8sObject = dict[StrictStr, Any]
PullPolicy = Literal["Always", "IfNotPresent", "Never"]


class _Strict(BaseModel):
    # extra="forbid": unknown (misspelled) fields are errors, as with kubectl's strict field
    # validation; strict=True: no "2" for 2 (the CRD's OpenAPI types are not coerced either).
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _ray_version(text: str) -> tuple[int, int, int]:
    found = RAY_VERSION.match(text)
    if found is None:
        raise ValueError(f"rayVersion {text!r} is not MAJOR.MINOR.PATCH")
    major, minor, patch = (int(g) for g in found.groups())
    return major, minor, patch


class ObjectMeta(_Strict):
    name: StrictStr
    namespace: StrictStr | None = None
    labels: StringMap = Field(default_factory=dict)
    annotations: StringMap = Field(default_factory=dict)


class AuthOptions(_Strict):
    mode: Literal["disabled", "token"] | None = None
    secretName: StrictStr | None = None
    enableK8sTokenAuth: StrictBool | None = None

    @model_validator(mode="after")
    def _k8s_token_auth(self) -> AuthOptions:
        if self.enableK8sTokenAuth and self.secretName:
            raise ValueError(
                "authOptions.enableK8sTokenAuth and authOptions.secretName exclude each other"
            )
        if self.enableK8sTokenAuth and self.mode != "token":
            raise ValueError("authOptions.enableK8sTokenAuth needs authOptions.mode 'token'")
        return self


class AutoscalerOptions(_Strict):
    resources: K8sObject | None = None
    image: StrictStr | None = None
    imagePullPolicy: PullPolicy | None = None
    securityContext: K8sObject | None = None
    idleTimeoutSeconds: NonNegativeInt32 | None = None
    upscalingMode: Literal["Default", "Aggressive", "Conservative"] | None = None
    version: Literal["v1", "v2"] | None = None
    env: list[K8sObject] | None = None
    envFrom: list[K8sObject] | None = None
    volumeMounts: list[K8sObject] | None = None
    command: list[StrictStr] | None = None
    args: list[StrictStr] | None = None


class UpgradeStrategy(_Strict):
    type: Literal["Recreate", "None"] | None = None


class HeadGroupSpec(_Strict):
    template: K8sObject
    rayStartParams: StringMap = Field(default_factory=dict)
    serviceType: Literal["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"] | None = None
    headService: K8sObject | None = None
    enableIngress: StrictBool | None = None
    resources: StringMap | None = None
    labels: StringMap | None = None


class ScaleStrategy(_Strict):
    workersToDelete: list[StrictStr] = Field(default_factory=list)


class WorkerGroupSpec(_Strict):
    groupName: StrictStr
    replicas: Int32 | None = None
    minReplicas: Int32 | None = None
    maxReplicas: Int32 | None = None
    idleTimeoutSeconds: Int32 | None = None
    priority: Int32 | None = None
    rayStartParams: StringMap = Field(default_factory=dict)
    template: K8sObject
    resources: StringMap | None = None
    labels: StringMap | None = None
    scaleStrategy: ScaleStrategy | None = None
    numOfHosts: PositiveInt32 | None = None


def _group_rules(
    name: str, params: StringMap, resources: StringMap | None, labels: StringMap | None
) -> None:
    resource_params = {"num-cpus", "num-gpus", "memory", "resources"} & set(params)
    if resources and resource_params:
        raise ValueError(
            f"group {name}: resources set both in rayStartParams "
            f"({', '.join(sorted(resource_params))}) and in resources"
        )
    if labels is not None and "labels" in params:
        raise ValueError(f"group {name}: rayStartParams['labels'] is not supported; use labels")


class RayClusterSpec(_Strict):
    rayVersion: StrictStr | None = None
    headGroupSpec: HeadGroupSpec
    workerGroupSpecs: list[WorkerGroupSpec] = Field(default_factory=list)
    enableInTreeAutoscaling: StrictBool | None = None
    autoscalerOptions: AutoscalerOptions | None = None
    authOptions: AuthOptions | None = None
    headServiceAnnotations: StringMap | None = None
    suspend: StrictBool | None = None
    managedBy: Literal["ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"] | None = None
    upgradeStrategy: UpgradeStrategy | None = None

    @model_validator(mode="after")
    def _operator_rules(self) -> RayClusterSpec:
        version = _ray_version(self.rayVersion) if self.rayVersion is not None else None
        if not self.headGroupSpec.template.get("spec", {}).get("containers"):
            raise ValueError("headGroupSpec.template needs at least one container")
        _group_rules(
            "head",
            self.headGroupSpec.rayStartParams,
            self.headGroupSpec.resources,
            self.headGroupSpec.labels,
        )
        names = [g.groupName for g in self.workerGroupSpecs]
        if len(set(names)) != len(names):
            raise ValueError(f"worker group names repeat: {names}")
        for g in self.workerGroupSpecs:
            if not g.template.get("spec", {}).get("containers"):
                raise ValueError(f"worker group {g.groupName}: template needs a container")
            if not self.enableInTreeAutoscaling and (
                g.minReplicas is None or g.maxReplicas is None
            ):
                raise ValueError(
                    f"worker group {g.groupName}: set minReplicas and maxReplicas "
                    "when autoscaling is off"
                )
            for field in ("minReplicas", "maxReplicas"):
                value = getattr(g, field)
                if value is not None and value < 0:
                    raise ValueError(f"worker group {g.groupName}: negative {field}")
            if (
                g.minReplicas is not None
                and g.maxReplicas is not None
                and (g.minReplicas > g.maxReplicas)
            ):
                raise ValueError(
                    f"worker group {g.groupName}: minReplicas {g.minReplicas} > "
                    f"maxReplicas {g.maxReplicas}"
                )
            _group_rules(g.groupName, g.rayStartParams, g.resources, g.labels)
        if self.authOptions is not None and self.authOptions.mode == "token":
            if version is None:
                raise ValueError("authOptions.mode 'token' needs rayVersion (Ray >= 2.52.0)")
            if version < TOKEN_AUTH_MIN_RAY:
                raise ValueError(
                    f"authOptions.mode 'token' needs Ray >= 2.52.0, rayVersion is {self.rayVersion}"
                )
        return self


class RayCluster(_Strict):
    apiVersion: Literal["ray.io/v1"]
    kind: Literal["RayCluster"]
    metadata: ObjectMeta
    spec: RayClusterSpec

    @model_validator(mode="after")
    def _name(self) -> RayCluster:
        _check_name(self.metadata.name, MAX_RAY_CLUSTER_NAME, "RayCluster")
        return self


class SubmitterConfig(_Strict):
    backoffLimit: NonNegativeInt32 | None = None


class RayJobSpec(_Strict):
    entrypoint: StrictStr | None = None
    clusterSelector: StringMap | None = None
    rayClusterSpec: RayClusterSpec | None = None
    submissionMode: Literal["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"] | None = (
        None
    )
    submitterPodTemplate: K8sObject | None = None
    submitterConfig: SubmitterConfig | None = None
    activeDeadlineSeconds: PositiveInt32 | None = None
    preRunningDeadlineSeconds: PositiveInt32 | None = None
    backoffLimit: NonNegativeInt32 | None = None
    metadata: StringMap | None = None
    runtimeEnvYAML: StrictStr | None = None
    jobId: StrictStr | None = None
    entrypointNumCpus: float | None = None
    entrypointNumGpus: float | None = None
    entrypointResources: StrictStr | None = None
    ttlSecondsAfterFinished: NonNegativeInt32 | None = None
    shutdownAfterJobFinishes: StrictBool | None = None
    suspend: StrictBool | None = None
    managedBy: Literal["ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"] | None = None

    @model_validator(mode="after")
    def _operator_rules(self) -> RayJobSpec:
        if self.suspend and not self.shutdownAfterJobFinishes:
            raise ValueError("a RayJob may be suspended only with shutdownAfterJobFinishes")
        selector = self.clusterSelector or {}
        if self.rayClusterSpec is None and not selector:
            raise ValueError("set one of rayClusterSpec or clusterSelector")
        if selector:
            if not selector.get(CLUSTER_SELECTOR_KEY):
                raise ValueError(f"clusterSelector needs {CLUSTER_SELECTOR_KEY}: <cluster name>")
            if self.submissionMode == "SidecarMode":
                raise ValueError("clusterSelector is not supported in SidecarMode")
            if self.backoffLimit:
                raise ValueError("backoffLimit > 0 is incompatible with clusterSelector")
            if self.suspend:
                raise ValueError("clusterSelector mode cannot be suspended")
            if self.shutdownAfterJobFinishes:
                raise ValueError(
                    "shutdownAfterJobFinishes would delete a cluster the job only "
                    "borrows (clusterSelector)"
                )
        if self.submissionMode == "SidecarMode" and (
            self.submitterPodTemplate is not None or self.submitterConfig is not None
        ):
            raise ValueError("SidecarMode takes neither submitterPodTemplate nor submitterConfig")
        return self


class RayJob(_Strict):
    apiVersion: Literal["ray.io/v1"]
    kind: Literal["RayJob"]
    metadata: ObjectMeta
    spec: RayJobSpec

    @model_validator(mode="after")
    def _name(self) -> RayJob:
        _check_name(self.metadata.name, MAX_RAY_JOB_NAME, "RayJob")
        return self


def _check_name(name: str, longest: int, kind: str) -> None:
    if len(name) > longest:
        raise ValueError(f"{kind} name {name!r} is longer than {longest} characters")
    if not DNS1035.match(name):
        raise ValueError(f"{kind} name {name!r} is not a DNS-1035 label")


MODELS: dict[str, type[RayCluster] | type[RayJob]] = {"RayCluster": RayCluster, "RayJob": RayJob}


def _templates(spec: RayClusterSpec, where: str) -> list[tuple[str, dict[str, Any]]]:
    found = [(f"{where}.headGroupSpec.template", spec.headGroupSpec.template)]
    for i, group in enumerate(spec.workerGroupSpecs):
        found.append((f"{where}.workerGroupSpecs[{i}]({group.groupName}).template", group.template))
    return found


def kuberay_errors(doc: dict[str, Any], kubernetes_version: str) -> list[str]:
    """Every problem found in a RayCluster or RayJob document; [] when it is valid."""
    model = MODELS.get(str(doc.get("kind")))
    if model is None:
        return [f"kind {doc.get('kind')!r} is not a KubeRay kind this schema knows"]
    try:
        parsed = model.model_validate(doc)
    except ValidationError as exc:
        return [
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            for e in exc.errors()
        ]
    errors: list[str] = []
    templates: list[tuple[str, dict[str, Any]]] = []
    clusters: list[tuple[str, RayClusterSpec]] = []
    if isinstance(parsed, RayCluster):
        clusters.append(("spec", parsed.spec))
    else:
        if parsed.spec.rayClusterSpec is not None:
            clusters.append(("spec.rayClusterSpec", parsed.spec.rayClusterSpec))
        if parsed.spec.submitterPodTemplate is not None:
            templates.append(("spec.submitterPodTemplate", parsed.spec.submitterPodTemplate))
    for where, cluster in clusters:
        templates.extend(_templates(cluster, where))
        options = cluster.autoscalerOptions
        if options is not None:
            fields = {
                k: v
                for k, v in (
                    ("resources", options.resources),
                    ("securityContext", options.securityContext),
                    ("env", options.env),
                    ("envFrom", options.envFrom),
                    ("volumeMounts", options.volumeMounts),
                )
                if v is not None
            }
            problem = container_fields_errors(fields, kubernetes_version)
            if problem:
                errors.append(f"{where}.autoscalerOptions: {problem}")
    for where, template in templates:
        problem = pod_template_errors(template, kubernetes_version)
        if problem:
            errors.append(f"{where}: {problem}")
    return errors
