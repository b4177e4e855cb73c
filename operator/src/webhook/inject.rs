//! The mutating webhook's decision: a pure function from a Pod, as the API server sends it on
//! CREATE, to the JSON patch that injects the sidecar (or to a refusal that says what to change).
//!
//! The sidecar runs as a native sidecar (an init container with `restartPolicy: Always`) and
//! takes over the protected port: the port's name moves to the sidecar's proxy port, the
//! application's port is renamed, and probes that named the port are rewritten to its number.
//! So a Service that targets the port by name reaches the sidecar (Kubernetes resolves named
//! target ports on sidecar init containers too), kubelet probes still reach the application,
//! and a Service that targets the number goes around the sidecar (the operator reports those as
//! `Bypass`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, DownwardAPIVolumeFile,
    DownwardAPIVolumeSource, EnvVar, HTTPGetAction, KeyToPath, ObjectFieldSelector, Pod, Probe,
    ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};
use tokengate_policy::contract;

/// Volume with ConfigMap [`contract::POLICIES_CONFIG_MAP`].
pub const POLICIES_VOLUME: &str = "tokengate-policies";
/// Volume with Secret [`contract::KEYS_SECRET`].
pub const KEYS_VOLUME: &str = "tokengate-keys";
/// Volume with ConfigMap [`contract::JWKS_CONFIG_MAP`] (the delivered public keys).
pub const JWKS_VOLUME: &str = "tokengate-jwks";
/// Downward-API volume with the pod's labels.
pub const POD_INFO_VOLUME: &str = "tokengate-pod-info";
/// ConfigMap volume with the [`contract::TrustBundle`], when one is configured.
pub const TRUST_VOLUME: &str = "tokengate-trust";

/// The injected container, as the operator's configuration describes it.
#[derive(Clone, Debug)]
pub struct SidecarSettings {
    pub image: String,
    pub image_pull_policy: Option<String>,
    /// Recorded in [`contract::SIDECAR_VERSION_ANNOTATION`].
    pub version: String,
    pub resources: ResourceRequirements,
    /// The user and group the sidecar runs as (non-root).
    pub run_as_user: i64,
    /// Log format and timeouts passed on as arguments.
    pub tuning: contract::SidecarTuning,
}

/// Everything the decision depends on besides the pod.
#[derive(Clone, Debug)]
pub struct InjectSettings {
    pub sidecar: SidecarSettings,
    /// Never injected, whatever the labels say: kube-system and the operator's own namespace.
    pub excluded_namespaces: Vec<String>,
}

/// Why a pod is left as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Pod label `tokengate.dev/inject=false`.
    OptedOut,
    /// kube-system or the operator's namespace.
    ExcludedNamespace,
    /// The pod already has the sidecar (injection is idempotent).
    AlreadyInjected,
}

/// The decision for one pod.
#[derive(Debug)]
pub enum Injection {
    /// Admit the pod unchanged.
    Skip(Skip),
    /// Admit the pod with the sidecar: the JSON patch (RFC 6902) and the protected port.
    Inject { patch: json_patch::Patch, port: u16 },
    /// Refuse the pod: it asked for protection it cannot get. The message says what to change.
    Refuse(String),
}

/// The port the sidecar protects and where the application declared it.
#[derive(Debug)]
struct ProtectedPort {
    number: u16,
    /// (container index, port index) of the declaration, if any container declares it.
    declared: Option<(usize, usize)>,
    name: Option<String>,
    host_port: Option<i32>,
}

const OPT_OUT_HINT: &str = "or opt the pod out with label tokengate.dev/inject=false";

/// Decides what happens to a pod created in `namespace`, without the pod firewall.
pub fn inject(pod: &Pod, namespace: &str, settings: &InjectSettings) -> Injection {
    inject_with(pod, namespace, settings, false)
}

/// Decides what happens to a pod created in `namespace`. The webhook configuration's selectors
/// decide which pods are sent here (namespace label or pod label); this decides the rest.
/// `pod_firewall`: a TokenPolicy that selects the pod asks for `privateAccess.podFirewall`,
/// so the pod gets the firewall's init container and its probes on the protected port go
/// through the sidecar.
pub fn inject_with(
    pod: &Pod,
    namespace: &str,
    settings: &InjectSettings,
    pod_firewall: bool,
) -> Injection {
    if let Some(skip) = skip(pod, namespace, settings) {
        return Injection::Skip(skip);
    }
    match plan(pod, settings, pod_firewall) {
        Ok((patch, port)) => Injection::Inject { patch, port },
        Err(message) => Injection::Refuse(message),
    }
}

/// Why the pod is left alone, if it is: then nothing else about it needs to be known.
pub fn skip(pod: &Pod, namespace: &str, settings: &InjectSettings) -> Option<Skip> {
    if settings.excluded_namespaces.iter().any(|n| n == namespace) {
        return Some(Skip::ExcludedNamespace);
    }
    let labels = pod.metadata.labels.as_ref();
    if labels
        .and_then(|l| l.get(contract::POD_INJECT_LABEL))
        .map(String::as_str)
        == Some("false")
    {
        return Some(Skip::OptedOut);
    }
    let init_containers = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default();
    if init_containers
        .iter()
        .any(|c| c.name == contract::SIDECAR_CONTAINER)
    {
        return Some(Skip::AlreadyInjected);
    }
    None
}

fn plan(
    pod: &Pod,
    settings: &InjectSettings,
    pod_firewall: bool,
) -> Result<(json_patch::Patch, u16), String> {
    let spec = pod.spec.as_ref().ok_or("the pod has no spec")?;
    if spec.host_network == Some(true) {
        return Err(format!(
            "tokengate cannot protect a hostNetwork pod: it shares the node's ports, so the sidecar \
             cannot stand in front of the application; drop hostNetwork {OPT_OUT_HINT}"
        ));
    }
    for name in [contract::SIDECAR_CONTAINER, contract::FIREWALL_CONTAINER] {
        if spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .any(|c| c.name == name)
        {
            return Err(format!(
                "a container is already named {name}, the name of a container tokengate injects; \
                 rename it {OPT_OUT_HINT}"
            ));
        }
    }
    let all_containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for container in all_containers {
        for port in container.ports.iter().flatten() {
            if [contract::SIDECAR_PROXY_PORT, contract::SIDECAR_ADMIN_PORT]
                .iter()
                .any(|p| i32::from(*p) == port.container_port)
            {
                return Err(format!(
                    "container {} declares port {}, which the tokengate sidecar listens on \
                     ({} for traffic, {} for its admin server); move the application to another \
                     port {OPT_OUT_HINT}",
                    container.name,
                    port.container_port,
                    contract::SIDECAR_PROXY_PORT,
                    contract::SIDECAR_ADMIN_PORT
                ));
            }
        }
    }
    for volume in spec.volumes.iter().flatten() {
        if [
            POLICIES_VOLUME,
            KEYS_VOLUME,
            JWKS_VOLUME,
            POD_INFO_VOLUME,
            TRUST_VOLUME,
        ]
        .contains(&volume.name.as_str())
        {
            return Err(format!(
                "the pod already has a volume named {}, which the injected sidecar needs; rename it",
                volume.name
            ));
        }
    }
    let protected = protected_port(pod)?;
    if [contract::SIDECAR_PROXY_PORT, contract::SIDECAR_ADMIN_PORT].contains(&protected.number) {
        return Err(format!(
            "port {} is the sidecar's own; protect the application's port instead",
            protected.number
        ));
    }

    let mut ops: Vec<Value> = Vec::new();
    let mut annotations = vec![
        (
            contract::SIDECAR_VERSION_ANNOTATION,
            settings.sidecar.version.clone(),
        ),
        (
            contract::UPSTREAM_PORT_ANNOTATION,
            protected.number.to_string(),
        ),
    ];
    if pod_firewall {
        annotations.push((
            contract::POD_FIREWALL_ANNOTATION,
            protected.number.to_string(),
        ));
    }
    // With the firewall the kubelet cannot reach the protected port: its probes there go to
    // the sidecar, which runs them over loopback.
    let ProbesTakenOver {
        ops: probe_ops,
        probes: app_probes,
        taken_over,
    } = if pod_firewall {
        firewall_probes(spec, &protected)?
    } else {
        ProbesTakenOver::default()
    };
    if pod.metadata.annotations.is_some() {
        for (key, value) in annotations {
            ops.push(json!({"op": "add", "path": format!("/metadata/annotations/{}", escape(key)), "value": value}));
        }
    } else {
        let map: BTreeMap<&str, String> = annotations.into_iter().collect();
        ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": map}));
    }

    if let Some((c, p)) = protected.declared {
        let port_path = format!("/spec/containers/{c}/ports/{p}");
        if let Some(name) = &protected.name {
            let renamed = contract::app_port_name(protected.number);
            if *name == renamed {
                return Err(format!(
                    "the protected port is named {renamed:?}, the name the webhook gives the \
                     application's port once the sidecar takes the protected port's name over: \
                     give it another name"
                ));
            }
            let taken = spec.containers.iter().any(|container| {
                container
                    .ports
                    .iter()
                    .flatten()
                    .any(|port| port.name.as_deref() == Some(renamed.as_str()))
            });
            if taken {
                return Err(format!(
                    "port name {renamed:?} is taken; the webhook renames the protected port {name:?} \
                     to it when the sidecar takes {name:?} over: rename the other port"
                ));
            }
            ops.push(
                json!({"op": "replace", "path": format!("{port_path}/name"), "value": renamed}),
            );
            ops.extend(probe_rewrites(
                &spec.containers[c],
                c,
                name,
                protected.number,
                &taken_over,
            ));
        }
        if protected.host_port.is_some_and(|p| p > 0) {
            ops.push(json!({"op": "remove", "path": format!("{port_path}/hostPort")}));
        }
    }

    ops.extend(probe_ops);

    let mut sidecar = sidecar_container(&protected, &settings.sidecar);
    if pod_firewall {
        sidecar
            .args
            .get_or_insert_with(Vec::new)
            .push(contract::require_pod_firewall_arg(protected.number));
        if !app_probes.is_empty() {
            let probes = serde_json::to_string(&app_probes)
                .map_err(|e| format!("writing the application probes: {e}"))?;
            sidecar.env = Some(vec![EnvVar {
                name: contract::APP_PROBES_ENV.to_owned(),
                value: Some(probes),
                value_from: None,
            }]);
        }
    }
    let sidecar = serde_json::to_value(sidecar).map_err(|e| format!("writing the sidecar: {e}"))?;
    let firewall = pod_firewall
        .then(|| serde_json::to_value(firewall_container(protected.number, &settings.sidecar)))
        .transpose()
        .map_err(|e| format!("writing the firewall container: {e}"))?;
    match (spec.init_containers.is_some(), firewall) {
        (true, firewall) => {
            // The firewall first, before any container of the pod listens.
            if let Some(firewall) = firewall {
                ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": firewall}));
            }
            ops.push(json!({"op": "add", "path": "/spec/initContainers/-", "value": sidecar}));
        }
        (false, Some(firewall)) => ops.push(
            json!({"op": "add", "path": "/spec/initContainers", "value": [firewall, sidecar]}),
        ),
        (false, None) => {
            ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [sidecar]}));
        }
    }
    let volumes = volumes(settings.sidecar.tuning.trust_bundle.as_ref());
    let volumes = serde_json::to_value(volumes).map_err(|e| format!("writing volumes: {e}"))?;
    if spec.volumes.is_some() {
        for volume in volumes.as_array().into_iter().flatten() {
            ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": volume}));
        }
    } else {
        ops.push(json!({"op": "add", "path": "/spec/volumes", "value": volumes}));
    }
    let patch = serde_json::from_value(Value::Array(ops))
        .map_err(|e| format!("building the JSON patch: {e}"))?;
    Ok((patch, protected.number))
}

/// The port named by [`contract::PORTS_ANNOTATION`], else the first TCP containerPort of the
/// first container.
fn protected_port(pod: &Pod) -> Result<ProtectedPort, String> {
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    let declared = |c: usize, p: usize, port: &ContainerPort| -> Result<ProtectedPort, String> {
        let protocol = port.protocol.as_deref().unwrap_or("TCP");
        if protocol != "TCP" {
            return Err(format!(
                "port {} of container {} is {protocol}; the sidecar protects HTTP over TCP: name a \
                 TCP port in annotation {} {OPT_OUT_HINT}",
                port.container_port,
                containers[c].name,
                contract::PORTS_ANNOTATION
            ));
        }
        let number = u16::try_from(port.container_port)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("containerPort {} is not a port", port.container_port))?;
        Ok(ProtectedPort {
            number,
            declared: Some((c, p)),
            name: port.name.clone().filter(|n| !n.is_empty()),
            host_port: port.host_port.filter(|p| *p > 0),
        })
    };
    let indexed = || {
        containers.iter().enumerate().flat_map(|(c, container)| {
            container
                .ports
                .iter()
                .flatten()
                .enumerate()
                .map(move |(p, port)| (c, p, port))
        })
    };
    let annotation = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(contract::PORTS_ANNOTATION));
    let Some(annotation) = annotation else {
        let first = containers.first().and_then(|container| {
            container
                .ports
                .iter()
                .flatten()
                .position(|port| port.protocol.as_deref().unwrap_or("TCP") == "TCP")
        });
        return match first {
            Some(p) => declared(0, p, &containers[0].ports.as_deref().unwrap_or_default()[p]),
            None => Err(format!(
                "the pod has no port for the sidecar to protect: declare the application's \
                 containerPort (TCP) in its first container, or name it in annotation {} \
                 {OPT_OUT_HINT}",
                contract::PORTS_ANNOTATION
            )),
        };
    };
    let items: Vec<&str> = annotation
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .collect();
    let item = match items.as_slice() {
        [item] => *item,
        [] => {
            return Err(format!(
                "annotation {} is empty: name the application's port (its number or name)",
                contract::PORTS_ANNOTATION
            ));
        }
        more => {
            return Err(format!(
                "annotation {} names {} ports ({}); the sidecar protects one port per pod: name \
                 one",
                contract::PORTS_ANNOTATION,
                more.len(),
                more.join(", ")
            ));
        }
    };
    if let Ok(number) = item.parse::<u16>() {
        if number == 0 {
            return Err(format!(
                "annotation {}: 0 is not a port",
                contract::PORTS_ANNOTATION
            ));
        }
        let is_tcp = |port: &ContainerPort| port.protocol.as_deref().unwrap_or("TCP") == "TCP";
        let same_number =
            || indexed().filter(|(_, _, port)| port.container_port == i32::from(number));
        // A TCP declaration first; a UDP one alone is refused by `declared`.
        let found = same_number()
            .find(|(_, _, port)| is_tcp(port))
            .or_else(|| same_number().next());
        return match found {
            Some((c, p, port)) => declared(c, p, port),
            // An undeclared port is still a port the application may listen on.
            None => Ok(ProtectedPort {
                number,
                declared: None,
                name: None,
                host_port: None,
            }),
        };
    }
    match indexed().find(|(_, _, port)| port.name.as_deref() == Some(item)) {
        Some((c, p, port)) => declared(c, p, port),
        None => Err(format!(
            "annotation {}: no container of the pod declares a port named {item:?}; give the \
             name or number of the application's containerPort",
            contract::PORTS_ANNOTATION
        )),
    }
}

/// The probe fields of a container, with their kind as the sidecar's admin path names it.
const PROBES: [(&str, &str); 3] = [
    ("livenessProbe", "liveness"),
    ("readinessProbe", "readiness"),
    ("startupProbe", "startup"),
];

fn probe_of<'a>(container: &'a Container, field: &str) -> Option<&'a Probe> {
    match field {
        "livenessProbe" => container.liveness_probe.as_ref(),
        "readinessProbe" => container.readiness_probe.as_ref(),
        "startupProbe" => container.startup_probe.as_ref(),
        _ => None,
    }
}

/// With the pod firewall: every httpGet and tcpSocket probe of the pod's containers that
/// reaches the protected port (by number, or by its name in the container that declares it)
/// is pointed at the sidecar's admin port, `/app-health/<container>/<kind>`; the original goes
/// to the sidecar, which runs it on loopback. Probes the sidecar cannot run for the kubelet
/// (https, gRPC on the protected port) refuse the pod rather than fail for ever. Returns the
/// patch operations, the probes handed over, and the (container, field) pairs taken over.
fn firewall_probes(
    spec: &k8s_openapi::api::core::v1::PodSpec,
    protected: &ProtectedPort,
) -> Result<ProbesTakenOver, String> {
    let mut ops = Vec::new();
    let mut probes = Vec::new();
    let mut taken_over = Vec::new();
    for (c, container) in spec.containers.iter().enumerate() {
        let declares = protected.declared.is_some_and(|(dc, _)| dc == c);
        let reaches = |port: &IntOrString| match port {
            IntOrString::Int(n) => *n == i32::from(protected.number),
            IntOrString::String(name) => declares && protected.name.as_deref() == Some(name),
        };
        for (field, kind) in PROBES {
            let Some(probe) = probe_of(container, field) else {
                continue;
            };
            let what = || format!("the {kind} probe of container {}", container.name);
            if probe
                .grpc
                .as_ref()
                .is_some_and(|g| g.port == i32::from(protected.number))
            {
                return Err(format!(
                    "{} is a gRPC probe on the protected port {}, which the pod firewall \
                     (privateAccess.podFirewall) closes to the kubelet and the sidecar cannot run \
                     for it: probe another port, or use privateAccess.networkPolicy instead",
                    what(),
                    protected.number
                ));
            }
            let action = if let Some(get) = probe.http_get.as_ref().filter(|g| reaches(&g.port)) {
                if get.host.as_deref().is_some_and(|h| !h.is_empty()) {
                    continue; // another host: not this pod's port
                }
                if get
                    .scheme
                    .as_deref()
                    .is_some_and(|s| !s.eq_ignore_ascii_case("HTTP"))
                {
                    return Err(format!(
                        "{} uses https on the protected port {}, which the pod firewall \
                         (privateAccess.podFirewall) closes to the kubelet; the sidecar runs \
                         plain-http probes only: probe over http, or use \
                         privateAccess.networkPolicy instead",
                        what(),
                        protected.number
                    ));
                }
                contract::AppProbeAction::HttpGet {
                    port: protected.number,
                    path: get.path.clone().unwrap_or_else(|| "/".to_owned()),
                    headers: get
                        .http_headers
                        .iter()
                        .flatten()
                        .map(|h| (h.name.clone(), h.value.clone()))
                        .collect(),
                }
            } else if probe.tcp_socket.as_ref().is_some_and(|t| reaches(&t.port)) {
                contract::AppProbeAction::TcpSocket {
                    port: protected.number,
                }
            } else {
                continue;
            };
            let timeout = probe.timeout_seconds.unwrap_or(1).max(1);
            probes.push(contract::AppProbe {
                container: container.name.clone(),
                kind: kind.to_owned(),
                timeout_seconds: u32::try_from(timeout).unwrap_or(1),
                action,
            });
            let mut through_sidecar = probe.clone();
            through_sidecar.tcp_socket = None;
            through_sidecar.http_get = Some(HTTPGetAction {
                path: Some(contract::app_probe_path(&container.name, kind)),
                port: IntOrString::Int(i32::from(contract::SIDECAR_ADMIN_PORT)),
                ..HTTPGetAction::default()
            });
            // The sidecar gives the application the probe's own timeout; the kubelet waits a
            // second longer for the sidecar's answer.
            through_sidecar.timeout_seconds = Some(timeout + 1);
            let value = serde_json::to_value(through_sidecar)
                .map_err(|e| format!("writing {}: {e}", what()))?;
            ops.push(json!({"op": "replace", "path": format!("/spec/containers/{c}/{field}"), "value": value}));
            taken_over.push((c, field));
        }
    }
    Ok(ProbesTakenOver {
        ops,
        probes,
        taken_over,
    })
}

/// What [`firewall_probes`] changes.
#[derive(Default)]
struct ProbesTakenOver {
    /// The JSON patch operations that point the probes at the sidecar.
    ops: Vec<Value>,
    /// The original probes, for the sidecar.
    probes: Vec<contract::AppProbe>,
    /// (container index, probe field) of each probe taken over.
    taken_over: Vec<(usize, &'static str)>,
}

/// The init container that installs the pod firewall: the sidecar's image, root (capabilities
/// of a non-root process are not effective without ambient ones) with `NET_ADMIN` and nothing
/// else, no privilege escalation, a read-only root filesystem.
fn firewall_container(port: u16, settings: &SidecarSettings) -> Container {
    let quantities = |cpu: &str, memory: &str| {
        Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.to_owned())),
            ("memory".to_owned(), Quantity(memory.to_owned())),
        ]))
    };
    Container {
        name: contract::FIREWALL_CONTAINER.to_owned(),
        image: Some(settings.image.clone()),
        image_pull_policy: settings.image_pull_policy.clone(),
        args: Some(contract::firewall_args(port)),
        resources: Some(ResourceRequirements {
            requests: quantities("10m", "8Mi"),
            limits: quantities("100m", "32Mi"),
            claims: None,
        }),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                add: Some(vec!["NET_ADMIN".to_owned()]),
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                localhost_profile: None,
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

/// Probes and lifecycle hooks of `container` (index `c`) that name the port `name`: rewritten
/// to its number, since the name now belongs to the sidecar and kubelet resolves a probe's
/// named port in the probe's own container. Probes in `taken_over` go through the sidecar
/// instead.
fn probe_rewrites(
    container: &Container,
    c: usize,
    name: &str,
    number: u16,
    taken_over: &[(usize, &str)],
) -> Vec<Value> {
    let names_port = |port: &IntOrString| matches!(port, IntOrString::String(n) if n == name);
    let mut ops = Vec::new();
    let mut rewrite = |path: String| {
        ops.push(json!({"op": "replace", "path": path, "value": number}));
    };
    let probes = [
        ("livenessProbe", &container.liveness_probe),
        ("readinessProbe", &container.readiness_probe),
        ("startupProbe", &container.startup_probe),
    ];
    for (field, probe) in probes {
        let Some(probe) = probe else { continue };
        if taken_over.contains(&(c, field)) {
            continue;
        }
        if probe.http_get.as_ref().is_some_and(|a| names_port(&a.port)) {
            rewrite(format!("/spec/containers/{c}/{field}/httpGet/port"));
        }
        if probe
            .tcp_socket
            .as_ref()
            .is_some_and(|a| names_port(&a.port))
        {
            rewrite(format!("/spec/containers/{c}/{field}/tcpSocket/port"));
        }
        // gRPC probes name their port by number only.
    }
    if let Some(lifecycle) = &container.lifecycle {
        let hooks = [
            ("postStart", &lifecycle.post_start),
            ("preStop", &lifecycle.pre_stop),
        ];
        for (field, hook) in hooks {
            let Some(hook) = hook else { continue };
            if hook.http_get.as_ref().is_some_and(|a| names_port(&a.port)) {
                rewrite(format!(
                    "/spec/containers/{c}/lifecycle/{field}/httpGet/port"
                ));
            }
            if hook
                .tcp_socket
                .as_ref()
                .is_some_and(|a| names_port(&a.port))
            {
                rewrite(format!(
                    "/spec/containers/{c}/lifecycle/{field}/tcpSocket/port"
                ));
            }
        }
    }
    ops
}

fn admin_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(i32::from(contract::SIDECAR_ADMIN_PORT)),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        ..Probe::default()
    }
}

fn sidecar_container(protected: &ProtectedPort, settings: &SidecarSettings) -> Container {
    let tcp = |name: &str, port: u16, host_port: Option<i32>| ContainerPort {
        name: Some(name.to_owned()),
        container_port: i32::from(port),
        protocol: Some("TCP".to_owned()),
        host_port,
        host_ip: None,
    };
    let proxy_name = protected
        .name
        .clone()
        .unwrap_or_else(|| contract::SIDECAR_PROXY_PORT_NAME.to_owned());
    let mount = |name: &str, path: String| VolumeMount {
        name: name.to_owned(),
        mount_path: path,
        read_only: Some(true),
        ..VolumeMount::default()
    };
    let mut mounts = vec![
        mount(
            POLICIES_VOLUME,
            format!("{}/{}", contract::BUNDLE_DIR, contract::BUNDLE_POLICIES_DIR),
        ),
        mount(
            KEYS_VOLUME,
            format!("{}/{}", contract::BUNDLE_DIR, contract::BUNDLE_KEYS_DIR),
        ),
        mount(
            JWKS_VOLUME,
            format!("{}/{}", contract::BUNDLE_DIR, contract::BUNDLE_JWKS_DIR),
        ),
        mount(POD_INFO_VOLUME, contract::POD_INFO_DIR.to_owned()),
    ];
    if settings.tuning.trust_bundle.is_some() {
        mounts.push(mount(TRUST_VOLUME, contract::TRUST_BUNDLE_DIR.to_owned()));
    }
    Container {
        name: contract::SIDECAR_CONTAINER.to_owned(),
        image: Some(settings.image.clone()),
        image_pull_policy: settings.image_pull_policy.clone(),
        // The image's entrypoint is the sidecar binary; the contract builds its arguments.
        args: Some(contract::sidecar_run_args(
            protected.number,
            &settings.tuning,
        )),
        restart_policy: Some("Always".to_owned()),
        ports: Some(vec![
            tcp(
                &proxy_name,
                contract::SIDECAR_PROXY_PORT,
                protected.host_port,
            ),
            tcp(
                contract::SIDECAR_ADMIN_PORT_NAME,
                contract::SIDECAR_ADMIN_PORT,
                None,
            ),
        ]),
        resources: Some(settings.resources.clone()),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(settings.run_as_user),
            run_as_group: Some(settings.run_as_user),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                localhost_profile: None,
            }),
            ..SecurityContext::default()
        }),
        // Startup gates the application containers (native sidecars start first) on the
        // process answering, not on keys: an identity provider that is down must not keep the
        // application from starting, while readiness keeps the pod out of Services until the
        // sidecar can verify tokens.
        startup_probe: Some(admin_probe(contract::SIDECAR_LIVE_PATH, 1, 30)),
        readiness_probe: Some(admin_probe(contract::SIDECAR_READY_PATH, 2, 3)),
        liveness_probe: Some(admin_probe(contract::SIDECAR_LIVE_PATH, 10, 3)),
        volume_mounts: Some(mounts),
        ..Container::default()
    }
}

/// The namespace bundle (both optional: a namespace without policies has none yet, and the
/// sidecar then refuses with `NoPolicy`), the pod's labels and the trust bundle, if any. The
/// trust bundle is not optional: without its ConfigMap the kubelet holds the pod back with an
/// event that names it, rather than starting a sidecar that cannot reach its key source.
fn volumes(trust_bundle: Option<&contract::TrustBundle>) -> Vec<Volume> {
    let mut volumes = vec![
        Volume {
            name: POLICIES_VOLUME.to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: contract::POLICIES_CONFIG_MAP.to_owned(),
                optional: Some(true),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: KEYS_VOLUME.to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(contract::KEYS_SECRET.to_owned()),
                optional: Some(true),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: JWKS_VOLUME.to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: contract::JWKS_CONFIG_MAP.to_owned(),
                optional: Some(true),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: POD_INFO_VOLUME.to_owned(),
            downward_api: Some(DownwardAPIVolumeSource {
                items: Some(vec![DownwardAPIVolumeFile {
                    path: contract::POD_LABELS_FILE.to_owned(),
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "metadata.labels".to_owned(),
                        api_version: None,
                    }),
                    ..DownwardAPIVolumeFile::default()
                }]),
                default_mode: None,
            }),
            ..Volume::default()
        },
    ];
    if let Some(bundle) = trust_bundle {
        volumes.push(Volume {
            name: TRUST_VOLUME.to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: bundle.config_map.clone(),
                items: Some(vec![KeyToPath {
                    key: bundle.key.clone(),
                    path: bundle.key.clone(),
                    mode: None,
                }]),
                optional: Some(false),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    volumes
}

/// A JSON pointer token (RFC 6901): `~` and `/` escaped.
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use std::path::{Path, PathBuf};

    fn settings() -> InjectSettings {
        let quantities = |pairs: &[(&str, &str)]| {
            Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                    .collect(),
            )
        };
        InjectSettings {
            sidecar: SidecarSettings {
                image: "registry.example/tokengate-sidecar:0.1.0".to_owned(),
                image_pull_policy: Some("IfNotPresent".to_owned()),
                version: "0.1.0".to_owned(),
                resources: ResourceRequirements {
                    requests: quantities(&[("cpu", "50m"), ("memory", "32Mi")]),
                    limits: quantities(&[("memory", "128Mi")]),
                    claims: None,
                },
                run_as_user: 65532,
                tuning: contract::SidecarTuning::default(),
            },
            excluded_namespaces: vec!["kube-system".to_owned(), "tokengate-system".to_owned()],
        }
    }

    fn pod(value: Value) -> Pod {
        serde_json::from_value(value).expect("test pod")
    }

    fn apply(pod: &Pod, patch: &json_patch::Patch) -> Pod {
        let mut document = serde_json::to_value(pod).expect("pod as JSON");
        json_patch::patch(&mut document, patch).expect("the patch applies");
        serde_json::from_value(document).expect("the patched pod is a Pod")
    }

    fn injected(pod: &Pod) -> (json_patch::Patch, Pod) {
        match inject(pod, "shop", &settings()) {
            Injection::Inject { patch, .. } => {
                let patched = apply(pod, &patch);
                (patch, patched)
            }
            other => panic!("expected an injection, got {other:?}"),
        }
    }

    fn refusal(pod: &Pod) -> String {
        match inject(pod, "shop", &settings()) {
            Injection::Refuse(message) => message,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn sidecar(pod: &Pod) -> &Container {
        pod.spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .and_then(|c| c.iter().find(|c| c.name == contract::SIDECAR_CONTAINER))
            .expect("the sidecar is an init container")
    }

    fn testdata() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/webhook/testdata/inject")
    }

    /// Each `<case>.pod.yaml` in testdata/inject is injected and the patch compared with
    /// `<case>.patch.json`; `TOKENGATE_UPDATE_GOLDEN=1` rewrites the patches.
    #[test]
    fn patches_match_the_golden_files() {
        let update = std::env::var_os("TOKENGATE_UPDATE_GOLDEN").is_some();
        let mut cases = 0;
        let mut entries: Vec<_> = std::fs::read_dir(testdata())
            .expect("testdata/inject")
            .map(|e| e.expect("entry").path())
            .collect();
        entries.sort();
        for path in entries {
            let Some(case) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".pod.yaml"))
            else {
                continue;
            };
            cases += 1;
            let text = std::fs::read_to_string(&path).expect("pod file");
            let input: Pod = serde_saphyr::from_str(&text).expect("pod file is a Pod");
            let (patch, patched) = injected(&input);
            let actual = serde_json::to_string_pretty(&patch).expect("patch") + "\n";
            let golden = testdata().join(format!("{case}.patch.json"));
            if update {
                std::fs::write(&golden, &actual).expect("write golden");
            }
            let expected = std::fs::read_to_string(&golden)
                .unwrap_or_else(|e| panic!("{}: {e}", golden.display()));
            assert_eq!(
                actual,
                expected,
                "{case}: the patch differs from {}",
                golden.display()
            );
            // Idempotent: the injected pod is left alone.
            assert!(
                matches!(
                    inject(&patched, "shop", &settings()),
                    Injection::Skip(Skip::AlreadyInjected)
                ),
                "{case}"
            );
            let sidecar = sidecar(&patched);
            assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"), "{case}");
        }
        assert!(cases >= 3, "golden cases found: {cases}");
    }

    #[test]
    fn the_sidecar_is_restricted_probed_and_configured_by_the_contract() {
        let input = pod(json!({
            "metadata": {"name": "orders", "labels": {"app": "orders"}},
            "spec": {"containers": [{"name": "app", "image": "orders",
                "ports": [{"name": "http", "containerPort": 8080}]}]},
        }));
        let (_, patched) = injected(&input);
        let sidecar = sidecar(&patched);
        assert_eq!(
            sidecar.args.as_deref(),
            Some(contract::sidecar_run_args(8080, &contract::SidecarTuning::default()).as_slice())
        );
        let security = sidecar.security_context.as_ref().expect("securityContext");
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(
            security
                .capabilities
                .as_ref()
                .and_then(|c| c.drop.as_deref()),
            Some(["ALL".to_owned()].as_slice())
        );
        assert_eq!(
            security.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
            Some("RuntimeDefault")
        );
        for probe in [
            &sidecar.startup_probe,
            &sidecar.readiness_probe,
            &sidecar.liveness_probe,
        ] {
            let action = probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .expect("httpGet");
            assert_eq!(
                action.port,
                IntOrString::Int(i32::from(contract::SIDECAR_ADMIN_PORT))
            );
        }
        // Every mount lies where the contract's arguments point.
        let mounts: Vec<&str> = sidecar
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        let args = contract::sidecar_run_args(8080, &contract::SidecarTuning::default()).join(" ");
        for mount in &mounts {
            let parent = Path::new(mount)
                .parent()
                .and_then(|p| p.to_str())
                .expect("parent");
            assert!(args.contains(mount) || args.contains(parent), "{mount}");
        }
        let annotations = patched.metadata.annotations.expect("annotations");
        assert_eq!(annotations[contract::SIDECAR_VERSION_ANNOTATION], "0.1.0");
        assert_eq!(annotations[contract::UPSTREAM_PORT_ANNOTATION], "8080");
    }

    #[test]
    fn a_trust_bundle_is_mounted_where_the_sidecar_is_told_to_read_it() {
        let mut with_bundle = settings();
        let bundle = contract::TrustBundle {
            config_map: "corp-ca".to_owned(),
            key: "ca.crt".to_owned(),
        };
        with_bundle.sidecar.tuning.trust_bundle = Some(bundle.clone());
        let input = pod(json!({
            "metadata": {"name": "orders"},
            "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 8080}]}],
                "volumes": [{"name": "data", "emptyDir": {}}]},
        }));
        let Injection::Inject { patch, .. } = inject(&input, "shop", &with_bundle) else {
            panic!("expected an injection");
        };
        let patched = apply(&input, &patch);
        let container = sidecar(&patched);
        let args = container.args.as_deref().unwrap_or_default();
        assert!(
            args.contains(&format!("--extra-ca-file={}", bundle.file())),
            "{args:?}"
        );
        let mount = container
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == TRUST_VOLUME)
            .expect("trust bundle mount");
        assert_eq!(mount.mount_path, contract::TRUST_BUNDLE_DIR);
        assert!(bundle.file().starts_with(&format!("{}/", mount.mount_path)));
        let volumes = patched.spec.as_ref().and_then(|s| s.volumes.as_ref());
        let names: Vec<&str> = volumes
            .into_iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(names.first(), Some(&"data"), "the pod's own volume stays");
        let volume = volumes
            .into_iter()
            .flatten()
            .find(|v| v.name == TRUST_VOLUME)
            .and_then(|v| v.config_map.as_ref())
            .expect("trust bundle volume");
        assert_eq!(volume.name, "corp-ca");
        assert_eq!(volume.optional, Some(false));
        let items = volume.items.as_deref().unwrap_or_default();
        assert_eq!(
            (items.len(), items[0].key.as_str(), items[0].path.as_str()),
            (1, "ca.crt", "ca.crt")
        );

        // Without one, nothing is mounted or passed.
        let (_, plain) = injected(&input);
        let plain = sidecar(&plain);
        assert!(!plain.args.iter().flatten().any(|a| a.contains("extra-ca")));
        assert!(
            !plain
                .volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == TRUST_VOLUME)
        );
        // A pod volume of the same name is refused with a message naming it.
        let clash = pod(json!({
            "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 8080}]}],
                "volumes": [{"name": TRUST_VOLUME, "emptyDir": {}}]},
        }));
        assert!(refusal(&clash).contains(TRUST_VOLUME));
    }

    #[test]
    fn opt_out_excluded_namespaces_and_injected_pods_are_left_alone() {
        let opted_out = pod(json!({
            "metadata": {"labels": {"tokengate.dev/inject": "false"}},
            "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 8080}]}]},
        }));
        assert!(matches!(
            inject(&opted_out, "shop", &settings()),
            Injection::Skip(Skip::OptedOut)
        ));
        let opted_in = pod(json!({
            "metadata": {"labels": {"tokengate.dev/inject": "true"}},
            "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 8080}]}]},
        }));
        for namespace in ["kube-system", "tokengate-system"] {
            assert!(matches!(
                inject(&opted_in, namespace, &settings()),
                Injection::Skip(Skip::ExcludedNamespace)
            ));
        }
        let (_, patched) = injected(&opted_in);
        assert!(matches!(
            inject(&patched, "shop", &settings()),
            Injection::Skip(Skip::AlreadyInjected)
        ));
    }

    #[test]
    fn pods_that_cannot_be_protected_are_refused_with_what_to_change() {
        let cases = [
            (
                json!({"containers": [{"name": "worker"}]}),
                json!({}),
                "declare the application's containerPort",
            ),
            (
                json!({"containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}, {"name": "grpc", "containerPort": 9090}]}]}),
                json!({"tokengate.dev/ports": "http,grpc"}),
                "protects one port per pod",
            ),
            (
                json!({"containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}]}),
                json!({"tokengate.dev/ports": "web"}),
                "no container of the pod declares a port named \"web\"",
            ),
            (
                json!({"containers": [{"name": "dns", "ports": [{"containerPort": 53, "protocol": "UDP"}]}]}),
                json!({"tokengate.dev/ports": "53"}),
                "the sidecar protects HTTP over TCP",
            ),
            (
                json!({"containers": [{"name": "app", "ports": [{"containerPort": 15080}]}]}),
                json!({}),
                "move the application to another port",
            ),
            (
                json!({"hostNetwork": true, "containers": [{"name": "app", "ports": [{"containerPort": 8080}]}]}),
                json!({}),
                "hostNetwork",
            ),
            (
                json!({"containers": [{"name": "app", "ports": [{"containerPort": 8080}]}],
                       "volumes": [{"name": "tokengate-keys", "emptyDir": {}}]}),
                json!({}),
                "volume named tokengate-keys",
            ),
            (
                json!({"containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}, {"name": "app-8080", "containerPort": 9000}]}]}),
                json!({}),
                "port name \"app-8080\" is taken",
            ),
            (
                json!({"containers": [{"name": "app", "ports": [{"name": "app-8080", "containerPort": 8080}]}]}),
                json!({}),
                "give it another name",
            ),
        ];
        for (spec, annotations, expected) in cases {
            let message = refusal(&pod(json!({
                "metadata": {"name": "p", "annotations": annotations},
                "spec": spec,
            })));
            assert!(message.contains(expected), "{message}");
        }
    }

    #[test]
    fn an_undeclared_annotated_port_is_protected_by_number() {
        let input = pod(json!({
            "metadata": {"annotations": {"tokengate.dev/ports": "3000"}},
            "spec": {"containers": [{"name": "app", "ports": [{"name": "metrics", "containerPort": 9100}]}]},
        }));
        let (_, patched) = injected(&input);
        let sidecar = sidecar(&patched);
        assert_eq!(
            sidecar.args.as_deref(),
            Some(contract::sidecar_run_args(3000, &contract::SidecarTuning::default()).as_slice())
        );
        let ports = sidecar.ports.as_deref().expect("ports");
        assert_eq!(
            ports[0].name.as_deref(),
            Some(contract::SIDECAR_PROXY_PORT_NAME)
        );
        // Untouched: the metrics port is not the protected one.
        let app = &patched.spec.expect("spec").containers[0];
        assert_eq!(
            app.ports.as_deref().expect("ports")[0].name.as_deref(),
            Some("metrics")
        );
    }

    fn with_firewall(pod: &Pod) -> Pod {
        match inject_with(pod, "shop", &settings(), true) {
            Injection::Inject { patch, .. } => apply(pod, &patch),
            other => panic!("expected an injection, got {other:?}"),
        }
    }

    #[test]
    fn the_pod_firewall_runs_first_with_net_admin_only_and_the_sidecar_waits_for_it() {
        let input = pod(json!({
            "metadata": {"name": "orders", "labels": {"app": "orders"}},
            "spec": {
                "initContainers": [{"name": "migrate", "image": "orders"}],
                "containers": [{"name": "app", "image": "orders",
                    "ports": [{"name": "http", "containerPort": 8080}, {"name": "metrics", "containerPort": 9100}]}]},
        }));
        let patched = with_firewall(&input);
        let spec = patched.spec.as_ref().expect("spec");
        let init: Vec<&str> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            init,
            [
                contract::FIREWALL_CONTAINER,
                "migrate",
                contract::SIDECAR_CONTAINER
            ]
        );
        let firewall = &spec.init_containers.as_ref().expect("init")[0];
        assert_eq!(
            firewall.image.as_deref(),
            Some("registry.example/tokengate-sidecar:0.1.0")
        );
        assert_eq!(
            firewall.args.as_deref(),
            Some(contract::firewall_args(8080).as_slice())
        );
        assert!(firewall.restart_policy.is_none(), "runs to completion");
        let security = firewall.security_context.as_ref().expect("securityContext");
        let capabilities = security.capabilities.as_ref().expect("capabilities");
        assert_eq!(
            capabilities.drop.as_deref(),
            Some(["ALL".to_owned()].as_slice())
        );
        assert_eq!(
            capabilities.add.as_deref(),
            Some(["NET_ADMIN".to_owned()].as_slice())
        );
        assert_eq!(security.run_as_user, Some(0));
        assert_eq!(security.run_as_non_root, Some(false));
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.privileged, Some(false));
        let guarded = sidecar(&patched);
        assert!(
            guarded
                .args
                .iter()
                .flatten()
                .any(|a| *a == contract::require_pod_firewall_arg(8080)),
            "{:?}",
            guarded.args
        );
        let annotations = patched.metadata.annotations.as_ref().expect("annotations");
        assert_eq!(annotations[contract::POD_FIREWALL_ANNOTATION], "8080");
        // Idempotent, and without the firewall nothing of it is there.
        assert!(matches!(
            inject_with(&patched, "shop", &settings(), true),
            Injection::Skip(Skip::AlreadyInjected)
        ));
        let (_, plain) = injected(&input);
        assert!(!crate::render::has_pod_firewall(&plain));
        assert!(crate::render::has_pod_firewall(&patched));
        assert!(
            !sidecar(&plain)
                .args
                .iter()
                .flatten()
                .any(|a| a.contains("firewall"))
        );
    }

    #[test]
    fn with_the_pod_firewall_probes_on_the_protected_port_go_through_the_sidecar() {
        let input = pod(json!({
            "metadata": {"name": "orders"},
            "spec": {"containers": [
                {"name": "app", "image": "orders",
                 "ports": [{"name": "http", "containerPort": 8080}, {"name": "metrics", "containerPort": 9100}],
                 "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http",
                     "httpHeaders": [{"name": "X-Probe", "value": "1"}]}, "periodSeconds": 1},
                 "livenessProbe": {"tcpSocket": {"port": 8080}, "timeoutSeconds": 3},
                 "startupProbe": {"httpGet": {"path": "/metrics", "port": "metrics"}}},
                {"name": "worker", "image": "worker",
                 "readinessProbe": {"exec": {"command": ["true"]}}}]},
        }));
        let patched = with_firewall(&input);
        let app = &patched.spec.as_ref().expect("spec").containers[0];
        let readiness = app.readiness_probe.as_ref().expect("readiness");
        let get = readiness.http_get.as_ref().expect("httpGet");
        assert_eq!(get.path.as_deref(), Some("/app-health/app/readiness"));
        assert_eq!(
            get.port,
            IntOrString::Int(i32::from(contract::SIDECAR_ADMIN_PORT))
        );
        assert!(get.http_headers.is_none());
        assert_eq!(readiness.period_seconds, Some(1), "the rest stays");
        let liveness = app.liveness_probe.as_ref().expect("liveness");
        assert!(liveness.tcp_socket.is_none());
        assert_eq!(
            liveness.http_get.as_ref().and_then(|g| g.path.as_deref()),
            Some("/app-health/app/liveness")
        );
        assert_eq!(liveness.timeout_seconds, Some(4));
        // Another port: the firewall leaves it open, the probe stays.
        let startup = app.startup_probe.as_ref().expect("startup");
        assert_eq!(
            startup.http_get.as_ref().map(|g| g.port.clone()),
            Some(IntOrString::String("metrics".to_owned()))
        );
        let worker = &patched.spec.as_ref().expect("spec").containers[1];
        assert!(
            worker
                .readiness_probe
                .as_ref()
                .and_then(|p| p.exec.as_ref())
                .is_some()
        );

        // The sidecar gets the originals, by the paths the kubelet now asks.
        let env = sidecar(&patched).env.clone().unwrap_or_default();
        let probes = env
            .iter()
            .find(|e| e.name == contract::APP_PROBES_ENV)
            .and_then(|e| e.value.as_deref())
            .expect("probes");
        let probes: Vec<contract::AppProbe> = serde_json::from_str(probes).expect("JSON");
        assert_eq!(
            probes,
            [
                contract::AppProbe {
                    container: "app".to_owned(),
                    kind: "liveness".to_owned(),
                    timeout_seconds: 3,
                    action: contract::AppProbeAction::TcpSocket { port: 8080 },
                },
                contract::AppProbe {
                    container: "app".to_owned(),
                    kind: "readiness".to_owned(),
                    timeout_seconds: 1,
                    action: contract::AppProbeAction::HttpGet {
                        port: 8080,
                        path: "/healthz".to_owned(),
                        headers: vec![("X-Probe".to_owned(), "1".to_owned())],
                    },
                },
            ]
        );
    }

    #[test]
    fn probes_the_sidecar_cannot_run_refuse_a_pod_firewall_pod() {
        for probe in [
            json!({"grpc": {"port": 8080}}),
            json!({"httpGet": {"path": "/", "port": 8080, "scheme": "HTTPS"}}),
        ] {
            let input = pod(json!({
                "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 8080}],
                    "readinessProbe": probe}]},
            }));
            let Injection::Refuse(message) = inject_with(&input, "shop", &settings(), true) else {
                panic!("expected a refusal for {probe}");
            };
            assert!(message.contains("privateAccess.networkPolicy"), "{message}");
            // Without the firewall the kubelet reaches the port: injected as before.
            assert!(matches!(
                inject(&input, "shop", &settings()),
                Injection::Inject { .. }
            ));
        }
    }

    /// The operator's bypass detection agrees with the webhook: after injection a Service that
    /// targets the port by name reaches the sidecar, one that targets the number does not.
    #[test]
    fn services_by_name_reach_the_sidecar_after_injection_and_by_number_bypass_it() {
        let input = pod(json!({
            "metadata": {"name": "orders-1", "labels": {"app": "orders"},
                         "annotations": {"tokengate.dev/ports": "http"}},
            "spec": {"containers": [{"name": "app", "image": "orders",
                "ports": [{"name": "metrics", "containerPort": 9100}, {"name": "http", "containerPort": 8080}]}]},
        }));
        let (_, patched) = injected(&input);
        let service = |name: &str, target: Value| -> Service {
            serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"selector": {"app": "orders"}, "ports": [{"port": 80, "targetPort": target}]},
            }))
            .expect("service")
        };
        let selected = [&patched];
        assert!(
            crate::render::bypasses(&selected, &[service("by-name", json!("http"))]).is_empty()
        );
        let found = crate::render::bypasses(&selected, &[service("by-number", json!(8080))]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].app_port, 8080);
        let renamed = crate::render::bypasses(
            &selected,
            &[service("by-new-name", json!(contract::app_port_name(8080)))],
        );
        assert_eq!(renamed.len(), 1, "{renamed:?}");
    }
}
