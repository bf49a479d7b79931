"""The Python Kubernetes client against the stand-in: list, create, watch from a version,
replace with a stale version (409), patch, NetworkPolicies, a watch from a version too old
(410). Run by tests/clients.rs as: clients.py KUBECONFIG."""
import sys
import threading

from kubernetes import client, config, watch

config.load_kube_config(config_file=sys.argv[1])
v1 = client.CoreV1Api()
net = client.NetworkingV1Api()

assert [n.metadata.name for n in v1.list_node().items] == ["node-a"], v1.list_node()
node = v1.read_node("node-a")
assert node.status.addresses[0].address == "198.18.0.1", node.status.addresses

cm = v1.create_namespaced_config_map(
    "default", {"metadata": {"name": "py"}, "data": {"a": "1"}})
rv = cm.metadata.resource_version

events = []
w = watch.Watch()


def follow():
    for e in w.stream(v1.list_namespaced_config_map, "default",
                      resource_version=rv, timeout_seconds=10):
        events.append((e["type"], e["object"].metadata.name,
                       (e["object"].data or {}).get("a")))
        if e["type"] == "DELETED":
            w.stop()


t = threading.Thread(target=follow)
t.start()

stale = v1.read_namespaced_config_map("py", "default")
cm.data["a"] = "2"
v1.replace_namespaced_config_map("py", "default", cm)
stale.data["a"] = "3"
try:
    v1.replace_namespaced_config_map("py", "default", stale)
    raise SystemExit("a stale replace was accepted")
except client.ApiException as e:
    assert e.status == 409, e

v1.patch_namespaced_config_map("py", "default", {"data": {"a": "4"}})
net.create_namespaced_network_policy("default", {
    "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
    "metadata": {"name": "deny"},
    "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}})
pols = net.list_network_policy_for_all_namespaces().items
assert [p.metadata.name for p in pols] == ["deny"], pols
v1.delete_namespaced_config_map("py", "default")
t.join(15)
assert events == [("MODIFIED", "py", "2"), ("MODIFIED", "py", "4"),
                  ("DELETED", "py", "4")], events

try:
    for _ in watch.Watch().stream(v1.list_namespaced_config_map, "default",
                                  resource_version="1", timeout_seconds=2):
        pass
    raise SystemExit("a watch from a trimmed version was not refused")
except client.ApiException as e:
    assert e.status == 410, e
print("python client: ok")
