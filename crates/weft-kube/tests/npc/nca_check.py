#!/usr/bin/env python3
"""Cross-checks the NetworkPolicy truth tables in cases/ against IBM's network-config-analyzer (NCA).

Usage: nca_check.py [CASE ...]

A CASE is a case name (05-allow-from-all-namespaces), its number (05 or 5) or a path to its .yaml or
.txt; with none, every case in cases/ is checked. For each case NCA computes the connectivity of
cluster.yaml with the case's objects applied (a Namespace or Pod in the case replaces the
cluster.yaml object of the same kind, namespace and name; the NetworkPolicies are the policies),
and this script turns it into the table format of cases/*.txt: for every (protocol, port) of
TCP/80, TCP/81, UDP/80, UDP/81 and every ordered pair of pods, allowed ('.') or blocked ('X'). The
diagonal ('-', a pod to itself) is not compared. A case file holding a line
    # nca: skip <reason>
is left out of the comparison (it is reported as skipped, with the reason).

Exit status: 0 when every compared case agrees with NCA, 1 when a case differs or NCA (or a case
file) fails, 2 for bad usage. Needs NCA (install_nca in scripts/lib.sh puts it in /opt/weft-nca);
run under another Python, it re-runs itself with /opt/weft-nca/bin/python. No network is used.

How NCA is asked: the same way `nca --connectivity POLICIES --pod_list TOPOLOGY --ns_list TOPOLOGY`
builds its network config (nca.NetworkConfig.ResourcesHandler.get_network_config), then the set of
all allowed connections (NetworkConfig.allowed_connections(...).all_allowed_conns, the input of its
connectivity map) is asked, per pair and per (protocol, port), whether it contains that connection.
This avoids parsing NCA's text output, whose connection strings are compacted for people.
"""

import contextlib
import os
import re
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CLUSTER = os.path.join(HERE, "cluster.yaml")
CASES_DIR = os.path.join(HERE, "cases")
NCA_PYTHON = "/opt/weft-nca/bin/python"
BLOCKS = [("TCP", 80), ("TCP", 81), ("UDP", 80), ("UDP", 81)]
SKIP_RE = re.compile(r"^#\s*nca:\s*skip\b\s*(.*)$")
TOPOLOGY_KINDS = ("Namespace", "Pod")


def _import_nca():
    """Imports NCA, or re-executes this script under NCA's venv Python if this one lacks it."""
    try:
        import yaml  # noqa: F401  (NCA depends on PyYAML)
        from nca.NetworkConfig.ResourcesHandler import ResourcesHandler  # noqa: F401
    except ImportError:
        # A venv's python is a symlink to the system one, so tell them apart by the environment variable
        # set for the re-run, not by the executable's path.
        if not os.environ.get("WEFT_NCA_REEXEC") and os.access(NCA_PYTHON, os.X_OK):
            os.environ["WEFT_NCA_REEXEC"] = "1"
            os.execv(NCA_PYTHON, [NCA_PYTHON, os.path.abspath(__file__)] + sys.argv[1:])
        sys.stderr.write("nca_check: NCA is not installed (network-config-analyzer); run install_nca from "
                         "scripts/lib.sh, or run this with a Python that has it\n")
        sys.exit(1)


class CaseError(Exception):
    pass


def parse_table(path):
    """Reads a .txt truth table: {(proto, port): {(src, dst): '.'|'X'|'-'}} and the pod order."""
    blocks = {}
    pods = None
    lines = [ln.split() for ln in open(path, encoding="utf-8").read().splitlines()]
    i = 0
    while i < len(lines):
        words = lines[i]
        if not words:
            i += 1
            continue
        m = re.fullmatch(r"(TCP|UDP)/(\d+)", words[0]) if len(words) == 1 else None
        if not m:
            raise CaseError(f"{path}:{i + 1}: expected a block title like TCP/80, got {' '.join(words)!r}")
        key = (m.group(1), int(m.group(2)))
        if key in blocks:
            raise CaseError(f"{path}:{i + 1}: block {words[0]} appears twice")
        if i + 1 >= len(lines):
            raise CaseError(f"{path}: block {words[0]} has no header")
        cols = lines[i + 1]
        if pods is None:
            pods = cols
        elif cols != pods:
            raise CaseError(f"{path}:{i + 2}: columns differ from the first block's")
        cells = {}
        i += 2
        rows = []
        while i < len(lines) and lines[i]:
            row = lines[i]
            if len(row) != len(cols) + 1:
                raise CaseError(f"{path}:{i + 1}: row has {len(row) - 1} cells, the header {len(cols)}")
            src = row[0]
            for dst, cell in zip(cols, row[1:]):
                if cell not in (".", "X", "-"):
                    raise CaseError(f"{path}:{i + 1}: cell {cell!r} is not '.', 'X' or '-'")
                if (cell == "-") != (src == dst):
                    raise CaseError(f"{path}:{i + 1}: '-' belongs on the diagonal, and only there ({src} -> {dst})")
                cells[(src, dst)] = cell
            rows.append(src)
            i += 1
        if rows != cols:
            raise CaseError(f"{path}: block {words[0]}: rows {rows} do not match the columns {cols}")
        blocks[key] = cells
    if list(blocks) != BLOCKS:
        want = ", ".join(f"{p}/{n}" for p, n in BLOCKS)
        raise CaseError(f"{path}: blocks are {', '.join(f'{p}/{n}' for p, n in blocks)}; expected {want} in that order")
    return blocks, pods


def render_table(blocks, pods):
    out = []
    for proto, port in BLOCKS:
        out.append(f"{proto}/{port}")
        out.append("    " + " ".join(pods))
        for src in pods:
            out.append(src + "  " + "   ".join(blocks[(proto, port)][(src, dst)] for dst in pods))
        out.append("")
    return "\n".join(out)


def obj_key(doc):
    meta = doc.get("metadata") or {}
    ns = meta.get("namespace", "") if doc.get("kind") != "Namespace" else ""
    return (doc.get("kind"), ns, meta.get("name"))


def load_docs(path):
    import yaml
    try:
        return [d for d in yaml.safe_load_all(open(path, encoding="utf-8")) if d is not None]
    except yaml.YAMLError as e:
        raise CaseError(f"{path}: not valid YAML: {e}")


def case_inputs(case_yaml, cluster_docs):
    """Splits a case file into the topology (cluster.yaml with the case's replacements) and its policies."""
    topology = {obj_key(d): d for d in cluster_docs}
    policies = []
    for doc in load_docs(case_yaml):
        kind = doc.get("kind")
        if kind == "NetworkPolicy":
            policies.append(doc)
        elif kind in TOPOLOGY_KINDS:
            key = obj_key(doc)
            if key not in topology:
                raise CaseError(f"{case_yaml}: {kind} {key[1]}/{key[2]} replaces nothing in cluster.yaml")
            topology[key] = doc
        else:
            raise CaseError(f"{case_yaml}: unexpected kind {kind!r} (a case holds NetworkPolicy, Namespace, Pod)")
    return list(topology.values()), policies


def skip_reason(case_yaml):
    for line in open(case_yaml, encoding="utf-8"):
        m = SKIP_RE.match(line.strip())
        if m:
            return m.group(1).strip() or "no reason given"
    return None


class _Captured:
    text = ""


@contextlib.contextmanager
def captured_output():
    """Captures what NCA prints to stdout and stderr, at the file-descriptor level: NCA binds
    sys.stderr at import time in places, so contextlib.redirect_* alone misses some of it."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    res = _Captured()
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        try:
            yield res
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            tmp.seek(0)
            res.text = tmp.read().decode("utf-8", "replace")


def for_nca(policy):
    """A copy of a policy that NCA 2.1 reads as Kubernetes does. NCA rejects policyTypes listed as
    [Egress, Ingress] ("policyTypes has invalid value"); Kubernetes takes either order, and so do
    the cases (one upstream case lists Egress first), so the list is put in NCA's order here."""
    spec = dict(policy.get("spec") or {})
    types = spec.get("policyTypes")
    if isinstance(types, list) and sorted(types) == ["Egress", "Ingress"]:
        spec["policyTypes"] = ["Ingress", "Egress"]
    return dict(policy, spec=spec)


def nca_table(topology, policies, tmpdir):
    """Asks NCA for the table: {(proto, port): {(src, dst): '.'|'X'|'-'}} and its pod names."""
    import yaml
    from nca.CoreDS.ConnectivityProperties import ConnectivityProperties
    from nca.CoreDS.Peer import PeerSet, Pod
    from nca.CoreDS.PortSet import PortSet
    from nca.CoreDS.ProtocolSet import ProtocolSet
    from nca.NetworkConfig.ResourcesHandler import ResourcesHandler
    from nca.Resources.PolicyResources.NetworkPolicy import PolicyConnectionsFilter

    topo_path = os.path.join(tmpdir, "topology.yaml")
    pol_path = os.path.join(tmpdir, "policies.yaml")
    with open(topo_path, "w", encoding="utf-8") as f:
        yaml.safe_dump_all(topology, f, sort_keys=False)
    with open(pol_path, "w", encoding="utf-8") as f:
        yaml.safe_dump_all([for_nca(p) for p in policies], f, sort_keys=False)

    with captured_output() as log:
        try:
            config = ResourcesHandler().get_network_config([pol_path], [topo_path], [topo_path], None)
            n_policies = len(config.policies_container.policies)
            conns = config.allowed_connections(
                res_conns_filter=PolicyConnectionsFilter.only_all_allowed_connections()).all_allowed_conns
            error = None
        except (Exception, SystemExit) as e:  # NCA exits (SystemExit) on some input errors
            error = f"{type(e).__name__}: {e}"
    if error:
        raise CaseError(f"NCA failed: {error}\n{log.text}")
    if n_policies != len(policies):
        raise CaseError(f"NCA read {n_policies} of the {len(policies)} policies:\n{log.text}")
    if re.search(r"\berror\b", log.text, re.IGNORECASE):
        raise CaseError(f"NCA reported errors:\n{log.text}")

    pods = {p.full_name(): p for p in config.peer_container.get_all_peers_group() if isinstance(p, Pod)}
    blocks = {}
    for proto, port in BLOCKS:
        cells = {}
        for src in pods:
            for dst in pods:
                if src == dst:
                    cells[(src, dst)] = "-"
                    continue
                query = ConnectivityProperties.make_conn_props_from_dict({
                    "src_peers": PeerSet({pods[src]}),
                    "dst_peers": PeerSet({pods[dst]}),
                    "protocols": ProtocolSet.get_protocol_set_with_single_protocol(proto),
                    "dst_ports": PortSet.make_port_set_with_range(port, port),
                })
                cells[(src, dst)] = "." if query.contained_in(conns) else "X"
        blocks[(proto, port)] = cells
    return blocks, sorted(pods)


def find_cases(args):
    names = sorted(f[:-5] for f in os.listdir(CASES_DIR) if re.match(r"\d+-.*\.yaml$", f))
    if not args:
        return names
    picked = []
    for a in args:
        stem = os.path.basename(a)
        stem = re.sub(r"\.(yaml|txt)$", "", stem)
        hits = [n for n in names if n == stem]
        if not hits and stem.isdigit():
            hits = [n for n in names if int(n.split("-", 1)[0]) == int(stem)]
        if len(hits) != 1:
            sys.stderr.write(f"nca_check: no case {a!r} in {CASES_DIR}\n")
            sys.exit(2)
        picked.append(hits[0])
    return picked


def main(argv):
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return 0
    _import_nca()
    start = time.monotonic()
    names = find_cases(argv)
    cluster_docs = load_docs(CLUSTER)
    agreed, differed, failed, skipped, pairs = [], [], [], [], 0
    with tempfile.TemporaryDirectory(prefix="weft-nca-") as tmpdir:
        for name in names:
            case_yaml = os.path.join(CASES_DIR, name + ".yaml")
            case_txt = os.path.join(CASES_DIR, name + ".txt")
            try:
                reason = skip_reason(case_yaml)
                expected, exp_pods = parse_table(case_txt)  # parsed even when skipped: a broken table is an error
                if reason:
                    skipped.append(name)
                    print(f"SKIP {name}: {reason}")
                    continue
                topology, policies = case_inputs(case_yaml, cluster_docs)
                got, nca_pods = nca_table(topology, policies, tmpdir)
                if sorted(exp_pods) != nca_pods:
                    raise CaseError(f"the table's pods {exp_pods} are not NCA's {nca_pods}")
            except (CaseError, OSError) as e:
                failed.append(name)
                print(f"FAIL {name}: {e}")
                continue
            diffs = []
            for block in BLOCKS:
                for src in exp_pods:
                    for dst in exp_pods:
                        if src == dst:
                            continue
                        pairs += 1
                        want, have = expected[block][(src, dst)], got[block][(src, dst)]
                        if want != have:
                            diffs.append(f"  {block[0]}/{block[1]} {src} -> {dst}: table says "
                                         f"{'allowed' if want == '.' else 'blocked'}, NCA says "
                                         f"{'allowed' if have == '.' else 'blocked'}")
            if diffs:
                differed.append(name)
                got_ordered = {b: got[b] for b in BLOCKS}
                print(f"DIFF {name}: {len(diffs)} cell(s) differ\n" + "\n".join(diffs))
                print(f"  NCA's table for {name}:")
                print("\n".join("    " + ln for ln in render_table(got_ordered, exp_pods).splitlines()))
            else:
                agreed.append(name)
                print(f"ok   {name}")
    elapsed = time.monotonic() - start
    print(f"nca_check: {len(names)} cases: {len(agreed)} agree with NCA, {len(differed)} differ, "
          f"{len(failed)} failed, {len(skipped)} skipped; {pairs} (pair, protocol/port) cells compared "
          f"in {elapsed:.1f}s")
    return 1 if differed or failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
