"""Checks deploy/k8s beyond what kubernetes-validate can: the custom resources
(ServiceMonitor) and the references between manifests. Run by
tests/observability.rs with the kubernetes-validate venv's Python (PyYAML).

Usage: python k8s_custom_resources.py deploy/k8s
"""

import json
import pathlib
import sys

import yaml


def main(root: pathlib.Path) -> list[str]:
    problems = []
    docs = {}
    files = sorted(
        p for p in root.rglob("*.yaml") if p.name != "kustomization.yaml"
    )
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[(doc["kind"], doc["metadata"]["name"])] = doc
    kustomization = yaml.safe_load((root / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {str(p.relative_to(root)) for p in files}
    if listed != present:
        problems.append(f"kustomization resources {sorted(listed)} != files {sorted(present)}")

    def get(kind, name):
        doc = docs.get((kind, name))
        if doc is None:
            problems.append(f"no {kind} {name}")
        return doc or {}

    deploy = get("Deployment", "segstream")
    pod = deploy["spec"]["template"]
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    if deploy["spec"]["selector"]["matchLabels"].items() - pod["metadata"]["labels"].items():
        problems.append("the Deployment's selector does not match its pods")
    if container["readinessProbe"]["httpGet"]["path"] != "/readyz":
        problems.append("readiness must probe /readyz")
    if container["livenessProbe"]["httpGet"]["path"] != "/healthz":
        problems.append("liveness must probe /healthz")
    for probe in ("readinessProbe", "livenessProbe"):
        if container[probe]["httpGet"]["port"] not in ports:
            problems.append(f"{probe} names an unknown port")
    if container["args"][0] != "run":
        problems.append("the pipeline runs `segstream run`")

    config = get("ConfigMap", "segstream-config")["data"]["segstream.toml"]
    listen = [l for l in config.splitlines() if l.startswith("http_listen")]
    if not listen or not listen[0].rstrip('"').endswith(f":{ports['metrics']}"):
        problems.append(f"pipeline.http_listen {listen} does not use the metrics port {ports['metrics']}")

    service = get("Service", "segstream")
    if service["spec"]["selector"].items() - pod["metadata"]["labels"].items():
        problems.append("the Service does not select the pipeline pods")
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    if service_ports.get("metrics", {}).get("targetPort") not in ports:
        problems.append("the Service's metrics port does not target a container port")

    # The custom resource: the fields the Prometheus Operator needs.
    monitor = get("ServiceMonitor", "segstream")
    if monitor.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.append("ServiceMonitor apiVersion")
    wanted = monitor["spec"]["selector"]["matchLabels"]
    if wanted.items() - service["metadata"]["labels"].items():
        problems.append("the ServiceMonitor does not select the Service")
    for e in monitor["spec"]["endpoints"]:
        if e["port"] not in service_ports:
            problems.append(f"ServiceMonitor endpoint port {e['port']} is not a Service port")
        if e.get("path", "/metrics") != "/metrics":
            problems.append("ServiceMonitor path")
    unknown = set(monitor["spec"]) - {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    if unknown:
        problems.append(f"ServiceMonitor spec has unexpected fields {unknown}")

    hpa = get("HorizontalPodAutoscaler", "segstream")
    if hpa["spec"]["scaleTargetRef"]["name"] != deploy["metadata"]["name"]:
        problems.append("the HPA does not scale the Deployment")
    metric = hpa["spec"]["metrics"][0]["external"]["metric"]["name"]
    if metric != "segstream_consumer_lag_records":
        problems.append(f"the HPA scales on {metric}, not consumer lag")

    cron = get("CronJob", "segstream-trainer")
    trainer = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if trainer["containers"][0]["args"][0] != "train":
        problems.append("the CronJob runs `segstream train`")

    for spec in (pod["spec"], trainer):
        for v in spec["volumes"]:
            if "configMap" in v:
                get("ConfigMap", v["configMap"]["name"])
            if "persistentVolumeClaim" in v:
                get("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"])

    dashboard = get("ConfigMap", "segstream-dashboard")
    if dashboard["metadata"]["labels"].get("grafana_dashboard") != "1":
        problems.append("the dashboard ConfigMap lacks the grafana_dashboard label")
    json.loads(dashboard["data"]["segstream.json"])
    return problems


if __name__ == "__main__":
    found = main(pathlib.Path(sys.argv[1]))
    for p in found:
        print(f"problem: {p}")
    sys.exit(1 if found else 0)
