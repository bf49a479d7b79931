"""Offline checks of the manifest, run by crates/weft-kube/tests/manifest.rs with the output
of `kubectl kustomize deploy/kubernetes` on stdin: every object decodes into the Python
Kubernetes client's typed model of its kind (which refuses missing required fields and
wrong types), and the DaemonSet holds together (its volumes exist, its service account is
the one bound, its probe is the router's API)."""
import json
import sys

import yaml
from kubernetes import client

MODELS = {
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): "V1ClusterRole",
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): "V1ClusterRoleBinding",
    ("rbac.authorization.k8s.io/v1", "Role"): "V1Role",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "V1RoleBinding",
    ("apps/v1", "DaemonSet"): "V1DaemonSet",
}


class Response:
    """What ApiClient.deserialize reads: a body."""

    def __init__(self, doc):
        self.data = json.dumps(doc)


api = client.ApiClient()
docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
objects = {}
for d in docs:
    key = (d["apiVersion"], d["kind"])
    assert key in MODELS, f"unexpected kind {key}"
    obj = api.deserialize(Response(d), MODELS[key])
    objects[d["kind"]] = obj

ds = objects["DaemonSet"]
spec = ds.spec.template.spec
assert spec.host_network, "the router needs the host's network"
volumes = {v.name for v in spec.volumes}
for c in spec.init_containers + spec.containers:
    for m in c.volume_mounts or []:
        assert m.name in volumes, f"{c.name} mounts {m.name}, which is not a volume"
    assert c.security_context.privileged, f"{c.name} is not privileged"
# The router enters pods' namespaces by the runtime's path: it must see new ones.
assert spec.host_pid, "without the host's PIDs, /proc/<pid>/ns/net paths are not the pods'"
netns = [m for m in spec.containers[0].volume_mounts if m.mount_path == "/var/run/netns"]
assert netns and netns[0].mount_propagation == "HostToContainer", netns
assert spec.service_account_name == objects["ServiceAccount"].metadata.name
for binding in ("ClusterRoleBinding", "RoleBinding"):
    subj = objects[binding].subjects[0]
    assert (subj.name, subj.namespace) == (spec.service_account_name, ds.metadata.namespace)
probe = spec.containers[0].readiness_probe.http_get
assert (probe.host, probe.port, probe.path) == ("127.0.0.1", 6784, "/status")
assert ds.spec.selector.match_labels.items() <= ds.spec.template.metadata.labels.items()
print(json.dumps({"kinds": sorted(objects), "env": [e.name for e in spec.containers[0].env]}))
