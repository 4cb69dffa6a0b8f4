#!/usr/bin/python3
"""Structural checks of the deployment files (there is no Docker engine or Kubernetes
cluster on the build machines, so the files are parsed and cross-checked instead).

Checks: every YAML/JSON file under deploy/, k8s/, config/, docs/ parses; each Kubernetes
object has what it needs; the KEDA trigger names the configured topic and group; the
probes hit paths the worker serves on the port it listens on; the alert rules and the Grafana queries name
metrics the worker exports; the Dockerfile is multi-stage, non-root, with a HEALTHCHECK;
the compose stack has Kafka in KRaft mode, Redis, MinIO, an init step and a GPU worker.
Prints one line per failed check and exits 1 if any failed."""
import glob
import json
import os
import re
import sys

import yaml

ROOT = os.environ.get("ZI_SOURCE_DIR") or os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
failures = []
checks = 0


def check(cond, what):
    global checks
    checks += 1
    if not cond:
        failures.append(what)
    return cond


def rel(p):
    return os.path.relpath(p, ROOT)


def load_yaml_all(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# 1. every YAML and JSON file parses
docs = {}
for pattern in ("deploy/**/*.y*ml", "k8s/**/*.y*ml", "config/**/*.y*ml", ".github/**/*.y*ml"):
    for path in glob.glob(os.path.join(ROOT, pattern), recursive=True):
        try:
            docs[rel(path)] = load_yaml_all(path)
            check(True, "")
        except yaml.YAMLError as e:
            check(False, f"{rel(path)}: YAML does not parse: {e}")
jsons = {}
for pattern in ("deploy/**/*.json", "docs/**/*.json", "k8s/**/*.json", "config/**/*.json"):
    for path in glob.glob(os.path.join(ROOT, pattern), recursive=True):
        try:
            with open(path, encoding="utf-8") as f:
                jsons[rel(path)] = json.load(f)
            check(True, "")
        except ValueError as e:
            check(False, f"{rel(path)}: JSON does not parse: {e}")
check(len(docs) >= 10, f"expected the deploy/k8s/config YAML files, found {len(docs)}")

# 2. Kubernetes objects
k8s = {}
for path, ds in docs.items():
    if not path.startswith("k8s/"):
        continue
    for d in ds:
        if os.path.basename(path) == "kustomization.yaml":
            for r in d.get("resources", []):
                check(os.path.exists(os.path.join(ROOT, os.path.dirname(path), r)),
                      f"{path}: resource {r} does not exist")
            continue
        ok = check(isinstance(d, dict) and d.get("apiVersion") and d.get("kind")
                   and d.get("metadata", {}).get("name"),
                   f"{path}: object lacks apiVersion/kind/metadata.name")
        if ok:
            k8s[d["kind"]] = d

for kind in ("Namespace", "ConfigMap", "Secret", "StatefulSet", "PodDisruptionBudget",
             "ServiceMonitor", "PrometheusRule", "ScaledObject", "Service",
             "PersistentVolumeClaim"):
    check(kind in k8s, f"k8s/base: no {kind}")

cfg = {}
if "ConfigMap" in k8s:
    try:
        cfg = yaml.safe_load(k8s["ConfigMap"]["data"]["worker.yaml"])
    except (KeyError, yaml.YAMLError) as e:
        check(False, f"ConfigMap worker.yaml unreadable: {e}")

worker_src = ""
for path in glob.glob(os.path.join(ROOT, "worker", "*.c")):
    with open(path, encoding="utf-8") as f:
        worker_src += f.read()

sts = k8s.get("StatefulSet", {})
pod = sts.get("spec", {}).get("template", {}).get("spec", {})
containers = pod.get("containers", [{}])
c0 = containers[0] if containers else {}
check(c0.get("resources", {}).get("limits", {}).get("nvidia.com/gpu") == 1,
      "StatefulSet: container must limit nvidia.com/gpu: 1")
ports = {p.get("name"): p.get("containerPort") for p in c0.get("ports", [])}
listen_port = int(str(cfg.get("worker", {}).get("http_listen", "0.0.0.0:9400")).rsplit(":", 1)[1])
for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
    p = c0.get(probe, {}).get("httpGet", {})
    check(p.get("path") == path, f"StatefulSet: {probe} must GET {path}")
    port = p.get("port")
    port = ports.get(port, port)
    check(port == listen_port, f"StatefulSet: {probe} port {port} != worker.http_listen port {listen_port}")
    check(f'"{path}"' in worker_src, f"worker sources do not serve {path}")
drain = cfg.get("worker", {}).get("drain_timeout_s", 120)
retry = cfg.get("s3", {}).get("retry_s", 60)
check(pod.get("terminationGracePeriodSeconds", 0) > drain + retry,
      "StatefulSet: terminationGracePeriodSeconds must exceed drain_timeout_s + s3.retry_s")
check(any(v.get("persistentVolumeClaim") or v.get("name") == "models" for v in pod.get("volumes", [])),
      "StatefulSet: no model volume")
env_names = [e.get("name") for e in c0.get("env", [])]
check("ZIMAGE_WORKER_ID" in env_names, "StatefulSet: worker id must come from the pod name")
check(any("secretRef" in e for e in c0.get("envFrom", [])), "StatefulSet: S3 keys must come from a Secret")
check(cfg.get("kafka", {}).get("static_membership") is True,
      "StatefulSet deployments should use Kafka static membership")

so = k8s.get("ScaledObject", {})
trig = (so.get("spec", {}).get("triggers") or [{}])[0]
check(trig.get("type") == "kafka", "ScaledObject: trigger must be kafka")
meta = trig.get("metadata", {})
check(meta.get("topic") == cfg.get("kafka", {}).get("topic"),
      "ScaledObject: trigger topic differs from the ConfigMap's kafka.topic")
check(meta.get("consumerGroup") == cfg.get("kafka", {}).get("group_id"),
      "ScaledObject: consumerGroup differs from the ConfigMap's kafka.group_id")
check(meta.get("bootstrapServers") == cfg.get("kafka", {}).get("bootstrap_servers"),
      "ScaledObject: bootstrapServers differ from the ConfigMap's")
check(so.get("spec", {}).get("scaleTargetRef", {}).get("name") == sts.get("metadata", {}).get("name"),
      "ScaledObject: scaleTargetRef must name the StatefulSet")
check(so.get("spec", {}).get("scaleTargetRef", {}).get("kind") == "StatefulSet",
      "ScaledObject: scaleTargetRef kind must be StatefulSet")

# partitions: the compose init step creates the jobs topic; replicas must not exceed it
compose = docs.get("deploy/docker-compose.yml", [{}])[0]
init_cmd = " ".join(compose.get("services", {}).get("init", {}).get("command", []))
m = re.search(r"--topic zimage\.jobs --partitions (\d+)", init_cmd)
partitions = int(m.group(1)) if m else 0
check(partitions > 0, "compose init: jobs topic partitions not found")
check(0 < so.get("spec", {}).get("maxReplicaCount", 0) <= partitions,
      "ScaledObject: maxReplicaCount must be capped at the partition count")

pdb = k8s.get("PodDisruptionBudget", {})
check(pdb.get("spec", {}).get("selector", {}).get("matchLabels") ==
      sts.get("spec", {}).get("selector", {}).get("matchLabels"),
      "PodDisruptionBudget selector must match the StatefulSet")
sm = k8s.get("ServiceMonitor", {})
check(any(e.get("path") == "/metrics" for e in sm.get("spec", {}).get("endpoints", [])),
      "ServiceMonitor must scrape /metrics")

# alerts: each rule has an alert name, an expression naming only metrics the worker exports
# (or `up` of the Service the ServiceMonitor scrapes) with balanced brackets and quotes, a
# severity, a summary, and a duration where it has one; every label a summary uses is kept
# by the expression's aggregation.
pr = k8s.get("PrometheusRule", {})
rules = [r for g in pr.get("spec", {}).get("groups", []) for r in g.get("rules", [])]
check(len(rules) >= 6, "PrometheusRule: expected the worker's alerts")
svc_name = k8s.get("Service", {}).get("metadata", {}).get("name")
for r in rules:
    a, e = r.get("alert", "?"), str(r.get("expr", ""))
    check(bool(re.fullmatch(r"Zimage[A-Za-z0-9]+", a)), f"PrometheusRule: bad alert name {a}")
    depth = 0
    for ch in re.sub(r'"[^"]*"', "", e):
        depth += {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}.get(ch, 0)
        if depth < 0:
            break
    check(depth == 0 and e.count('"') % 2 == 0, f"PrometheusRule {a}: unbalanced expression")
    names = set(re.findall(r"\bzimage_[a-z0-9_]+", e))
    check(bool(names) or f'up{{job="{svc_name}"}}' in e,
          f"PrometheusRule {a}: names no zimage metric nor up of the Service {svc_name}")
    for n in sorted(names):
        check(f'"{n}"' in worker_src, f"PrometheusRule {a} uses {n}, which the worker does not export")
    check(r.get("labels", {}).get("severity") in ("warning", "critical"),
          f"PrometheusRule {a}: severity must be warning or critical")
    summary = r.get("annotations", {}).get("summary", "")
    check(bool(summary), f"PrometheusRule {a}: no summary")
    if "for" in r:
        check(bool(re.fullmatch(r"\d+[smh]", str(r["for"]))), f"PrometheusRule {a}: bad duration")
    for lab in re.findall(r"\$labels\.([a-z_]+)", summary):
        agg = re.findall(r"\b(?:sum|max|min|avg|count)\s*(?:by\s*\(([^)]*)\))?\s*\(", e)
        check(not agg or all(lab in [x.strip() for x in g.split(",")] for g in agg),
              f"PrometheusRule {a}: the summary uses $labels.{lab}, which the aggregation drops")

# overlays: each builds on the base; its JSON patches (add/replace, as kustomize applies
# them) are applied here to copies of the base objects, and the result is checked again:
# every path exists, env names are the worker's configuration variables, the grace period
# still covers the drain (an env override of the drain timeout included), requests <= limits.
def json_patch(obj, ops, where):
    for op in ops:
        parts = [x.replace("~1", "/").replace("~0", "~") for x in op.get("path", "").split("/")[1:]]
        parent = obj
        for k in parts[:-1]:
            parent = parent[int(k)] if isinstance(parent, list) else parent.get(k)
            if parent is None:
                check(False, f"{where}: patch path {op.get('path')} does not exist")
                break
        else:
            last = parts[-1] if parts else ""
            kind = op.get("op")
            if isinstance(parent, list):
                if last == "-" and kind == "add":
                    parent.append(op.get("value"))
                elif last.isdigit() and int(last) < len(parent) + (kind == "add"):
                    (parent.insert if kind == "add" else parent.__setitem__)(int(last), op.get("value"))
                else:
                    check(False, f"{where}: patch path {op.get('path')} does not exist")
            elif kind == "add" or (kind == "replace" and check(
                    last in parent, f"{where}: replace of missing {op.get('path')}")):
                parent[last] = op.get("value")
            check(kind in ("add", "replace"), f"{where}: unsupported patch op {kind}")


env_table = ""
with open(os.path.join(ROOT, "worker", "wconfig.c"), encoding="utf-8") as f:
    env_table = f.read()


def mem_gi(v):
    m = re.fullmatch(r"(\d+)Gi", str(v))
    return int(m.group(1)) if m else -1


overlays = sorted(os.path.basename(os.path.dirname(p)) for p in glob.glob(
    os.path.join(ROOT, "k8s/overlays/*/kustomization.yaml")))
check({"small-gpu", "medium-gpu", "large-gpu"} <= set(overlays),
      f"k8s/overlays: expected small-gpu, medium-gpu, large-gpu; found {overlays}")
mem_ranges = []  # (lowest MiB, highest MiB, overlay) each overlay's nodes may have
for ov in overlays:
    p = f"k8s/overlays/{ov}/kustomization.yaml"
    if not check(p in docs and "../../base" in docs[p][0].get("resources", []), f"{p}: must build on ../../base"):
        continue
    objs = json.loads(json.dumps(k8s))
    for pt in docs[p][0].get("patches", []):
        kind = pt.get("target", {}).get("kind")
        if check(kind in objs, f"{p}: patch targets {kind}, which the base lacks"):
            try:
                json_patch(objs[kind], yaml.safe_load(pt.get("patch", "[]")) or [], p)
            except (AttributeError, IndexError, KeyError, TypeError, ValueError, yaml.YAMLError) as e:
                check(False, f"{p}: a patch does not apply to the base {kind}: {e!r}")
    ocfg = yaml.safe_load(objs.get("ConfigMap", {}).get("data", {}).get("worker.yaml", "")) or {}
    opod = objs.get("StatefulSet", {}).get("spec", {}).get("template", {}).get("spec", {})
    oc0 = (opod.get("containers") or [{}])[0]
    env = {e.get("name"): e.get("value") for e in oc0.get("env", [])}
    for name in env:
        check(f'"{name}"' in env_table, f"{p}: env {name} is not a worker configuration variable")
    odrain = int(env.get("ZIMAGE_WORKER_DRAIN_TIMEOUT_S") or ocfg.get("worker", {}).get("drain_timeout_s", 120))
    oretry = int(env.get("ZIMAGE_S3_RETRY_S") or ocfg.get("s3", {}).get("retry_s", 60))
    check(opod.get("terminationGracePeriodSeconds", 0) > odrain + oretry,
          f"{p}: terminationGracePeriodSeconds must exceed drain_timeout_s + s3.retry_s ({odrain} + {oretry})")
    res = oc0.get("resources", {})
    check(0 < mem_gi(res.get("requests", {}).get("memory")) <= mem_gi(res.get("limits", {}).get("memory")),
          f"{p}: memory request must be <= limit")
    # nodes: one term of GPU feature discovery's labels, Ampere or newer, a GPU-memory range
    terms = (opod.get("affinity", {}).get("nodeAffinity", {})
             .get("requiredDuringSchedulingIgnoredDuringExecution", {}).get("nodeSelectorTerms", []))
    if check(len(terms) == 1, f"{p}: expected one nodeSelectorTerm (GPU memory and compute capability)"):
        lo, hi, major = 0, float("inf"), None
        for e in terms[0].get("matchExpressions", []):
            key, op, vals = e.get("key"), e.get("operator"), e.get("values", [])
            v = int(vals[0]) if len(vals) == 1 and str(vals[0]).isdigit() else None
            if key == "nvidia.com/gpu.memory" and op == "Gt" and v is not None:
                lo = max(lo, v + 1)
            elif key == "nvidia.com/gpu.memory" and op == "Lt" and v is not None:
                hi = min(hi, v - 1)
            elif key == "nvidia.com/gpu.compute.major" and op == "Gt":
                major = v
            else:
                check(False, f"{p}: unexpected node selector {e}")
        check(major is not None and major >= 7, f"{p}: nodes must have nvidia.com/gpu.compute.major > 7 (sm_80)")
        check(lo <= hi, f"{p}: the GPU-memory range is empty")
        mem_ranges.append((lo, hi, ov))

# every GPU size is served by exactly one overlay: the ranges meet without gap or overlap
mem_ranges.sort()
check(bool(mem_ranges) and mem_ranges[0][0] == 0 and mem_ranges[-1][1] == float("inf"),
      f"k8s/overlays: the GPU-memory ranges must start at 0 and be open-ended: {mem_ranges}")
for a, b in zip(mem_ranges, mem_ranges[1:]):
    check(b[0] == a[1] + 1, f"k8s/overlays: {a[2]} ends at {a[1]} MiB, {b[2]} starts at {b[0]} MiB")

# 3. Grafana queries name exported metrics
dash = jsons.get("deploy/grafana/zimage-dashboard.json", {})
check(bool(dash.get("panels")), "Grafana dashboard has no panels")
exprs = [t.get("expr", "") for p in dash.get("panels", []) for t in p.get("targets", [])]
names = set()
for e in exprs:
    for n in re.findall(r"\bzimage_[a-z0-9_]+", e):
        names.add(re.sub(r"_(bucket|sum|count)$", "", n))
check(len(names) >= 6, "Grafana dashboard queries too few zimage metrics")
for n in sorted(names):
    check(f'"{n}"' in worker_src, f"Grafana queries {n}, which the worker does not export")
check(any(p.get("datasource", {}).get("type") == "redis-datasource" for p in dash.get("panels", [])),
      "Grafana dashboard needs Redis panels (workers, jobs)")

# 4. Dockerfile
with open(os.path.join(ROOT, "deploy", "Dockerfile"), encoding="utf-8") as f:
    df = f.read()
froms = re.findall(r"^FROM\s+(\S+)", df, re.M)
check(len(froms) >= 2, "Dockerfile must be multi-stage")
check(any("devel" in x for x in froms) and "runtime" in froms[-1], "Dockerfile: CUDA devel -> runtime")
check(re.search(r"^USER\s+(?!root|0\b)\S+", df, re.M) is not None, "Dockerfile: must run as non-root")
check(re.search(r"^HEALTHCHECK .*?/healthz", df, re.M | re.S) is not None, "Dockerfile: HEALTHCHECK on /healthz")
check("/models" in df, "Dockerfile: model mounted at /models")

# 5. compose
svcs = compose.get("services", {})
for s in ("kafka", "redis", "minio", "init", "worker"):
    check(s in svcs, f"compose: no {s} service")
check("broker,controller" in str(svcs.get("kafka", {}).get("environment", {}).get("KAFKA_PROCESS_ROLES")),
      "compose: Kafka must run in KRaft mode")
devs = svcs.get("worker", {}).get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
check(any("gpu" in d.get("capabilities", []) for d in devs), "compose: worker needs a GPU reservation")

for f in failures:
    print("FAIL:", f)
print(f"deploy checks: {checks - len(failures)} passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
