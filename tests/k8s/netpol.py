"""What a set of NetworkPolicies lets through: the semantics of networking.k8s.io/v1, enough to
ask "may A open a connection to B on port P" of the rendered manifests.

A connection is allowed when the source may send it (no Egress policy selects the source pod,
or one of its egress rules matches) and the destination may receive it (likewise for
Ingress). Rules are unions; an empty peer list or port list matches everything; a peer with a
podSelector alone means pods of the policy's namespace; ipBlock peers match addresses outside
the cluster (what ipBlock is for: pod IPs are ephemeral).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

Doc = dict[str, Any]
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: dict[str, str]
    name: str = ""

    @property
    def namespace_labels(self) -> dict[str, str]:
        return {NAMESPACE_NAME_LABEL: self.namespace}


@dataclass(frozen=True)
class External:
    """An address outside the cluster's pods (a client, the API server, a managed database)."""

    ip: str
    name: str = ""


Endpoint = Pod | External


def selector_matches(selector: Doc | None, labels: dict[str, str]) -> bool:
    """A LabelSelector: an empty one matches everything."""
    if not selector:
        return True
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise ValueError(f"unknown selector operator {op!r}")
    return True


def _peer_matches(peer: Doc, policy_namespace: str, other: Endpoint) -> bool:
    if "ipBlock" in peer:
        if not isinstance(other, External):
            return False
        block = peer["ipBlock"]
        address = ipaddress.ip_address(other.ip)
        if address not in ipaddress.ip_network(block["cidr"]):
            return False
        return not any(address in ipaddress.ip_network(c) for c in block.get("except", []))
    if not isinstance(other, Pod):
        return False
    if "namespaceSelector" in peer:
        if not selector_matches(peer["namespaceSelector"], other.namespace_labels):
            return False
    elif other.namespace != policy_namespace:
        return False
    return selector_matches(peer.get("podSelector"), other.labels)


def _port_matches(rule_ports: list[Doc] | None, port: int, protocol: str) -> bool:
    if not rule_ports:
        return True
    for p in rule_ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        if "port" not in p:
            return True
        number = p["port"]
        if not isinstance(number, int):
            raise ValueError(
                f"named port {number!r} in a policy: use numbers (readable, checkable)"
            )
        if number <= port <= p.get("endPort", number):
            return True
    return False


@dataclass
class Policies:
    policies: list[Doc] = field(default_factory=list)

    @classmethod
    def of(cls, docs: list[Doc]) -> Policies:
        return cls([d for d in docs if d["kind"] == "NetworkPolicy"])

    def _selecting(self, pod: Pod, direction: str) -> list[Doc]:
        found = []
        for p in self.policies:
            spec = p["spec"]
            types = spec.get("policyTypes") or (
                ["Ingress", "Egress"] if "egress" in spec else ["Ingress"]
            )
            if (
                direction in types
                and p["metadata"].get("namespace") == pod.namespace
                and selector_matches(spec.get("podSelector"), pod.labels)
            ):
                found.append(p)
        return found

    def _side_allows(
        self, pod: Pod, other: Endpoint, port: int, protocol: str, direction: str
    ) -> bool:
        selecting = self._selecting(pod, direction)
        if not selecting:
            return True  # no policy isolates this pod in this direction
        key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        for policy in selecting:
            for rule in policy["spec"].get(key, []):
                peers = rule.get(peers_key)
                peer_ok = not peers or any(
                    _peer_matches(peer, policy["metadata"]["namespace"], other) for peer in peers
                )
                if peer_ok and _port_matches(rule.get("ports"), port, protocol):
                    return True
        return False

    def allows(self, src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP") -> bool:
        egress_ok = not isinstance(src, Pod) or self._side_allows(
            src, dst, port, protocol, "Egress"
        )
        ingress_ok = not isinstance(dst, Pod) or self._side_allows(
            dst, src, port, protocol, "Ingress"
        )
        return egress_ok and ingress_ok
