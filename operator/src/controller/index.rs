//! What the reconciler reads, kept current by watches instead of LISTs per reconcile: one
//! reflector store per kind (TokenPolicies, Pods, Services, Secret metadata), with each store's
//! names grouped by namespace so a reconcile reads its namespace and nothing else.
//!
//! Each watch runs in a task of its own that applies an event to its store first and only then
//! maps it to the policies it affects ([`super::triggers`]). A reconcile triggered by an event
//! therefore always sees that event in the stores; in particular a deleted TokenPolicy is gone
//! from the store before the reconcile that renders the bundle without it runs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Pod, PodSpec, PodStatus, Secret, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource, ResourceExt as _};
use serde::de::DeserializeOwned;
use tokengate_policy::{TokenPolicy, contract};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinSet;

use super::triggers;
use crate::render;

/// Names by namespace, beside a store.
type Names = HashMap<String, BTreeSet<String>>;

/// One kind's reflector store, readable by namespace.
pub struct Indexed<K: Resource<DynamicType = ()> + Clone + 'static> {
    store: Store<K>,
    names: Arc<RwLock<Names>>,
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Clone for Indexed<K> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            names: Arc::clone(&self.names),
        }
    }
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Indexed<K> {
    pub fn store(&self) -> &Store<K> {
        &self.store
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.store.get(&ObjectRef::new(name).within(namespace))
    }

    /// The namespace's objects, by name.
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        let names: Vec<String> = match self.names.read() {
            Ok(names) => names
                .get(namespace)
                .map(|n| n.iter().cloned().collect())
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        names
            .iter()
            .filter_map(|name| self.get(namespace, name))
            .collect()
    }

    /// Namespaces with at least one object.
    pub fn namespaces(&self) -> BTreeSet<String> {
        self.names
            .read()
            .map(|names| names.keys().cloned().collect())
            .unwrap_or_default()
    }
}

/// An object before and after one watch event (`None`: absent).
#[derive(Debug)]
pub struct Change<K> {
    pub old: Option<Arc<K>>,
    pub new: Option<Arc<K>>,
}

/// What applying one event did.
#[derive(Debug)]
pub enum Applied<K> {
    /// Nothing anyone needs to hear about (the initial list in progress, or a marker).
    Nothing,
    /// The first complete list is in the store.
    Listed,
    Changed(Vec<Change<K>>),
}

/// The writing side of [`Indexed`]: applies watch events to the store and the names, and says
/// what changed.
pub struct IndexWriter<K: Resource<DynamicType = ()> + Clone + 'static> {
    writer: Writer<K>,
    reader: Indexed<K>,
    /// Names seen since the last `Init`, swapped in at `InitDone` (as the store does).
    listing: Names,
    listed: bool,
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> IndexWriter<K> {
    pub fn new() -> (Indexed<K>, Self) {
        let writer = Writer::default();
        let reader = Indexed {
            store: writer.as_reader(),
            names: Arc::default(),
        };
        let this = Self {
            writer,
            reader: reader.clone(),
            listing: Names::new(),
            listed: false,
        };
        (reader, this)
    }

    fn key(object: &K) -> Option<(String, String)> {
        Some((object.namespace()?, object.meta().name.clone()?))
    }

    fn with_names(&self, update: impl FnOnce(&mut Names)) {
        if let Ok(mut names) = self.reader.names.write() {
            update(&mut names);
        }
    }

    pub fn apply(&mut self, event: watcher::Event<K>) -> Applied<K> {
        match event {
            watcher::Event::Apply(object) => {
                let Some((namespace, name)) = Self::key(&object) else {
                    return Applied::Nothing;
                };
                let old = self.reader.get(&namespace, &name);
                self.writer
                    .apply_watcher_event(&watcher::Event::Apply(object));
                self.with_names(|names| {
                    names
                        .entry(namespace.clone())
                        .or_default()
                        .insert(name.clone());
                });
                let new = self.reader.get(&namespace, &name);
                self.changed(vec![Change { old, new }])
            }
            watcher::Event::Delete(object) => {
                let Some((namespace, name)) = Self::key(&object) else {
                    return Applied::Nothing;
                };
                let old = self.reader.get(&namespace, &name);
                self.writer
                    .apply_watcher_event(&watcher::Event::Delete(object.clone()));
                self.with_names(|names| remove_name(names, &namespace, &name));
                self.changed(vec![Change {
                    old: old.or_else(|| Some(Arc::new(object))),
                    new: None,
                }])
            }
            watcher::Event::Init => {
                self.listing = Names::new();
                self.writer.apply_watcher_event(&watcher::Event::Init);
                Applied::Nothing
            }
            watcher::Event::InitApply(object) => {
                let Some((namespace, name)) = Self::key(&object) else {
                    return Applied::Nothing;
                };
                let old = self.reader.get(&namespace, &name);
                self.writer
                    .apply_watcher_event(&watcher::Event::InitApply(object.clone()));
                self.listing.entry(namespace).or_default().insert(name);
                // Only a re-list (after the watch lost its place) changes what is known.
                self.changed(vec![Change {
                    old,
                    new: Some(Arc::new(object)),
                }])
            }
            watcher::Event::InitDone => {
                let listed = std::mem::take(&mut self.listing);
                // Objects the re-list no longer has were deleted while the watch was away.
                let mut gone = Vec::new();
                if let Ok(names) = self.reader.names.read() {
                    for (namespace, before) in names.iter() {
                        for name in before {
                            if !listed.get(namespace).is_some_and(|now| now.contains(name)) {
                                gone.push(Change {
                                    old: self.reader.get(namespace, name),
                                    new: None,
                                });
                            }
                        }
                    }
                }
                self.writer.apply_watcher_event(&watcher::Event::InitDone);
                self.with_names(|names| *names = listed);
                if self.listed {
                    Applied::Changed(gone)
                } else {
                    self.listed = true;
                    Applied::Listed
                }
            }
        }
    }

    fn changed(&self, changes: Vec<Change<K>>) -> Applied<K> {
        if self.listed {
            Applied::Changed(changes)
        } else {
            Applied::Nothing
        }
    }
}

fn remove_name(names: &mut Names, namespace: &str, name: &str) {
    if let Some(set) = names.get_mut(namespace) {
        set.remove(name);
        if set.is_empty() {
            names.remove(namespace);
        }
    }
}

/// Per namespace, how many of the objects the operator wrote there have been deleted by
/// someone else. What the operator remembers having applied is trusted only while this count
/// is what it was when it applied.
#[derive(Debug, Default)]
pub struct Deletions(Mutex<HashMap<String, u64>>);

impl Deletions {
    pub fn count(&self, namespace: &str) -> u64 {
        self.0
            .lock()
            .map(|counts| counts.get(namespace).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    fn record(&self, namespace: &str) {
        if let Ok(mut counts) = self.0.lock() {
            *counts.entry(namespace.to_string()).or_default() += 1;
        }
    }
}

/// Everything the reconciler reads, one store per kind.
#[derive(Clone)]
pub struct Index {
    pub policies: Indexed<TokenPolicy>,
    pub pods: Indexed<Pod>,
    pub services: Indexed<Service>,
    /// Metadata only: which Secrets exist, and their resourceVersion. A referenced Secret's
    /// data is read when its resourceVersion changes.
    pub secrets: Indexed<PartialObjectMeta<Secret>>,
    /// Metadata only, the operator's own (by label): bundle ConfigMaps.
    pub bundles: Indexed<PartialObjectMeta<ConfigMap>>,
    /// Metadata only, the operator's own (by label): NetworkPolicies for private access.
    pub network_policies: Indexed<PartialObjectMeta<NetworkPolicy>>,
    pub deletions: Arc<Deletions>,
}

/// A namespace as the stores have it at one moment.
#[derive(Debug)]
pub struct NamespaceFacts {
    /// Policies not being deleted.
    pub policies: Vec<Arc<TokenPolicy>>,
    pub pods: Vec<Pod>,
    pub services: Vec<Service>,
}

impl NamespaceFacts {
    pub fn policy(&self, name: &str) -> Option<&TokenPolicy> {
        self.policies
            .iter()
            .map(AsRef::as_ref)
            .find(|p| p.metadata.name.as_deref() == Some(name))
    }

    /// The policies oldest first, the order conflicts are resolved in.
    pub fn ordered(&self) -> Vec<&TokenPolicy> {
        render::oldest_first(self.policies.iter().map(AsRef::as_ref))
    }
}

impl Index {
    /// Starts one watch per kind in `tasks`; each event is applied to its store, then mapped
    /// to the policies it affects, which are sent to `triggers`.
    pub fn start(
        client: &Client,
        triggers: &UnboundedSender<ObjectRef<TokenPolicy>>,
        tasks: &mut JoinSet<()>,
    ) -> Self {
        let (policies, policies_writer) = IndexWriter::new();
        let (pods, pods_writer) = IndexWriter::new();
        let (services, services_writer) = IndexWriter::new();
        let (secrets, secrets_writer) = IndexWriter::new();
        let (bundles, bundles_writer) = IndexWriter::new();
        let (network_policies, network_policies_writer) = IndexWriter::new();
        let index = Index {
            policies,
            pods,
            services,
            secrets,
            bundles,
            network_policies,
            deletions: Arc::default(),
        };
        let everything = watcher::Config::default();
        let managed = watcher::Config::default().labels(&format!(
            "{}={}",
            render::MANAGED_BY_LABEL,
            render::MANAGER
        ));

        let reader = index.clone();
        tasks.spawn(reflect(
            Api::<TokenPolicy>::all(client.clone()),
            everything.clone(),
            policies_writer,
            |policy| {
                policy.managed_fields_mut().clear();
            },
            triggers.clone(),
            move |applied| match applied {
                Applied::Listed => reader
                    .policies
                    .store()
                    .state()
                    .iter()
                    .map(|p| ObjectRef::from(p.as_ref()))
                    .collect(),
                Applied::Changed(changes) => changes
                    .iter()
                    .flat_map(|change| {
                        let namespace = change_namespace(change);
                        triggers::for_policy(
                            change.old.as_deref(),
                            change.new.as_deref(),
                            &reader.policies.in_namespace(&namespace),
                            &reader.pods.in_namespace(&namespace),
                        )
                    })
                    .collect(),
                Applied::Nothing => Vec::new(),
            },
        ));

        let reader = index.clone();
        tasks.spawn(reflect(
            Api::<Pod>::all(client.clone()),
            everything.clone(),
            pods_writer,
            |pod| *pod = pod_facts(std::mem::take(pod)),
            triggers.clone(),
            move |applied| {
                changes(applied)
                    .iter()
                    .flat_map(|change| {
                        let namespace = change_namespace(change);
                        triggers::for_pod(
                            change.old.as_deref(),
                            change.new.as_deref(),
                            &reader.policies.in_namespace(&namespace),
                        )
                    })
                    .collect()
            },
        ));

        let reader = index.clone();
        tasks.spawn(reflect(
            Api::<Service>::all(client.clone()),
            everything.clone(),
            services_writer,
            |service| *service = service_facts(std::mem::take(service)),
            triggers.clone(),
            move |applied| {
                changes(applied)
                    .iter()
                    .flat_map(|change| {
                        let namespace = change_namespace(change);
                        triggers::for_service(
                            change.old.as_deref(),
                            change.new.as_deref(),
                            &reader.policies.in_namespace(&namespace),
                            &reader.pods.in_namespace(&namespace),
                        )
                    })
                    .collect()
            },
        ));

        let reader = index.clone();
        tasks.spawn(reflect(
            Api::<PartialObjectMeta<Secret>>::all(client.clone()),
            everything,
            secrets_writer,
            |secret| secret.metadata = owned_facts(std::mem::take(&mut secret.metadata)),
            triggers.clone(),
            move |applied| {
                changes(applied)
                    .iter()
                    .flat_map(|change| {
                        let namespace = change_namespace(change);
                        let policies = reader.policies.in_namespace(&namespace);
                        let mut refs = triggers::for_secret(
                            change.old.as_deref(),
                            change.new.as_deref(),
                            &policies,
                        );
                        // The bundle's own Secret, deleted by someone: render it again.
                        let name = change.old.as_ref().and_then(|s| s.metadata.name.as_deref());
                        if change.new.is_none() && name == Some(render::KEYS_SECRET) {
                            reader.deletions.record(&namespace);
                            refs.extend(triggers::for_bundle_deleted(&policies));
                        }
                        refs
                    })
                    .collect()
            },
        ));

        let reader = index.clone();
        tasks.spawn(reflect(
            Api::<PartialObjectMeta<ConfigMap>>::all(client.clone()),
            managed.clone(),
            bundles_writer,
            |config_map| {
                config_map.metadata = owned_facts(std::mem::take(&mut config_map.metadata));
            },
            triggers.clone(),
            move |applied| {
                changes(applied)
                    .iter()
                    .filter(|change| change.new.is_none())
                    .flat_map(|change| {
                        let namespace = change_namespace(change);
                        reader.deletions.record(&namespace);
                        triggers::for_bundle_deleted(&reader.policies.in_namespace(&namespace))
                    })
                    .collect()
            },
        ));

        let reader = index.clone();
        tasks.spawn(reflect(
            Api::<PartialObjectMeta<NetworkPolicy>>::all(client.clone()),
            managed,
            network_policies_writer,
            |network_policy| {
                network_policy.metadata = owned_facts(std::mem::take(&mut network_policy.metadata));
            },
            triggers.clone(),
            move |applied| {
                changes(applied)
                    .iter()
                    .flat_map(|change| {
                        let namespace = change_namespace(change);
                        if change.new.is_none() {
                            reader.deletions.record(&namespace);
                        }
                        let name = change
                            .new
                            .as_ref()
                            .or(change.old.as_ref())
                            .and_then(|np| np.metadata.name.clone())
                            .unwrap_or_default();
                        triggers::for_network_policy(
                            &name,
                            &reader.policies.in_namespace(&namespace),
                        )
                    })
                    .collect()
            },
        ));
        index
    }

    /// Resolves once every store holds its first complete list.
    pub async fn wait_until_ready(&self) {
        let _ = self.policies.store().wait_until_ready().await;
        let _ = self.pods.store().wait_until_ready().await;
        let _ = self.services.store().wait_until_ready().await;
        let _ = self.secrets.store().wait_until_ready().await;
        let _ = self.bundles.store().wait_until_ready().await;
        let _ = self.network_policies.store().wait_until_ready().await;
    }

    /// The namespace as the stores have it now.
    pub fn namespace(&self, namespace: &str) -> NamespaceFacts {
        let policies: Vec<Arc<TokenPolicy>> = self
            .policies
            .in_namespace(namespace)
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        NamespaceFacts {
            policies,
            pods: self
                .pods
                .in_namespace(namespace)
                .iter()
                .map(|p| p.as_ref().clone())
                .collect(),
            services: self
                .services
                .in_namespace(namespace)
                .iter()
                .map(|s| s.as_ref().clone())
                .collect(),
        }
    }

    /// The resourceVersion of a Secret, `None` when it does not exist.
    pub fn secret_version(&self, namespace: &str, name: &str) -> Option<String> {
        self.secrets
            .get(namespace, name)
            .map(|s| s.metadata.resource_version.clone().unwrap_or_default())
    }
}

fn changes<K>(applied: Applied<K>) -> Vec<Change<K>> {
    match applied {
        Applied::Changed(changes) => changes,
        Applied::Listed | Applied::Nothing => Vec::new(),
    }
}

fn change_namespace<K: Resource>(change: &Change<K>) -> String {
    change
        .new
        .as_ref()
        .or(change.old.as_ref())
        .and_then(|o| o.meta().namespace.clone())
        .unwrap_or_default()
}

/// Runs one watch for ever: each event is slimmed by `project`, applied to the store, and then
/// mapped to the policies to reconcile.
async fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    mut writer: IndexWriter<K>,
    project: impl Fn(&mut K) + Send + 'static,
    triggers: UnboundedSender<ObjectRef<TokenPolicy>>,
    map: impl Fn(Applied<K>) -> Vec<ObjectRef<TokenPolicy>> + Send + 'static,
) where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let kind = K::kind(&()).into_owned();
    let mut events = std::pin::pin!(watcher(api, config).default_backoff());
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => {
                let applied = writer.apply(event.modify(&project));
                for policy in map(applied) {
                    if triggers.send(policy).is_err() {
                        return;
                    }
                }
            }
            Err(err) => tracing::warn!(%kind, error = %err, "watch failed; retrying"),
        }
    }
}

/// Only what selection, conflicts and bypass detection read: labels, the ports annotation,
/// deletion, phase, and each container's name and ports. Pods change their status all the
/// time; with the rest dropped, such updates compare equal and trigger nothing.
pub fn pod_facts(pod: Pod) -> Pod {
    // The ports annotation, and on an injected pod the port the webhook recorded (the names
    // have moved to the sidecar by then).
    let annotations = pod.metadata.annotations.map(|all| {
        all.into_iter()
            .filter(|(key, _)| {
                key == render::PORTS_ANNOTATION || key == contract::UPSTREAM_PORT_ANNOTATION
            })
            .collect::<BTreeMap<_, _>>()
    });
    let annotations = annotations.filter(|a| !a.is_empty());
    Pod {
        metadata: ObjectMeta {
            name: pod.metadata.name,
            namespace: pod.metadata.namespace,
            labels: pod.metadata.labels,
            annotations,
            deletion_timestamp: pod.metadata.deletion_timestamp,
            ..ObjectMeta::default()
        },
        spec: pod.spec.map(|spec| PodSpec {
            containers: spec
                .containers
                .into_iter()
                .map(|c| Container {
                    name: c.name,
                    ports: c.ports,
                    ..Container::default()
                })
                .collect(),
            // Only the pod firewall's, by name: whether the pod has it.
            init_containers: spec
                .init_containers
                .map(|all| {
                    all.into_iter()
                        .filter(|c| c.name == contract::FIREWALL_CONTAINER)
                        .map(|c| Container {
                            name: c.name,
                            ..Container::default()
                        })
                        .collect::<Vec<_>>()
                })
                .filter(|c| !c.is_empty()),
            ..PodSpec::default()
        }),
        status: pod.status.map(|status| PodStatus {
            phase: status.phase,
            ..PodStatus::default()
        }),
    }
}

/// Only what bypass detection reads: the selector and the ports.
pub fn service_facts(service: Service) -> Service {
    Service {
        metadata: ObjectMeta {
            name: service.metadata.name,
            namespace: service.metadata.namespace,
            ..ObjectMeta::default()
        },
        spec: service.spec.map(|spec| ServiceSpec {
            selector: spec.selector,
            ports: spec.ports.map(|ports| {
                ports
                    .into_iter()
                    .map(|p| ServicePort {
                        name: p.name,
                        port: p.port,
                        protocol: p.protocol,
                        target_port: p.target_port,
                        ..ServicePort::default()
                    })
                    .collect()
            }),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// Name and resourceVersion. Nothing else: a Secret's annotations can hold its data (kubectl's
/// last-applied-configuration), which has no business in a store.
pub fn owned_facts(metadata: ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: metadata.name,
        namespace: metadata.namespace,
        resource_version: metadata.resource_version,
        ..ObjectMeta::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, labels: serde_json::Value, phase: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop", "labels": labels,
                         "resourceVersion": "7", "annotations": {"other": "x"}},
            "spec": {"containers": [{"name": "app", "image": "app:1",
                                     "ports": [{"containerPort": 8080}]}]},
            "status": {"phase": phase, "podIP": "10.1.1.1"},
        }))
        .expect("pod")
    }

    fn apply(
        writer: &mut IndexWriter<Pod>,
        event: watcher::Event<Pod>,
    ) -> Vec<(Option<String>, Option<String>)> {
        let name = |p: &Option<Arc<Pod>>| {
            p.as_ref().map(|p| {
                format!(
                    "{}:{}",
                    p.name_any(),
                    p.labels().get("app").cloned().unwrap_or_default()
                )
            })
        };
        match writer.apply(event.modify(|p| *p = pod_facts(std::mem::take(p)))) {
            Applied::Changed(changes) => changes
                .iter()
                .map(|c| (name(&c.old), name(&c.new)))
                .collect(),
            Applied::Listed => vec![(None, Some("listed".to_string()))],
            Applied::Nothing => Vec::new(),
        }
    }

    #[test]
    fn the_index_follows_events_by_namespace_and_reports_old_and_new() {
        let (index, mut writer) = IndexWriter::<Pod>::new();
        assert!(apply(&mut writer, watcher::Event::Init).is_empty());
        // The first list is applied quietly, then announced once.
        assert!(
            apply(
                &mut writer,
                watcher::Event::InitApply(pod("a", json!({"app": "x"}), "Running"))
            )
            .is_empty()
        );
        assert_eq!(
            apply(&mut writer, watcher::Event::InitDone),
            [(None, Some("listed".to_string()))]
        );
        assert_eq!(index.in_namespace("shop").len(), 1);
        assert_eq!(
            apply(
                &mut writer,
                watcher::Event::Apply(pod("a", json!({"app": "y"}), "Running"))
            ),
            [(Some("a:x".to_string()), Some("a:y".to_string()))]
        );
        assert_eq!(
            apply(
                &mut writer,
                watcher::Event::Apply(pod("b", json!({"app": "z"}), "Running"))
            ),
            [(None, Some("b:z".to_string()))]
        );
        assert_eq!(index.in_namespace("shop").len(), 2);
        assert!(index.in_namespace("elsewhere").is_empty());
        assert_eq!(
            apply(
                &mut writer,
                watcher::Event::Delete(pod("a", json!({"app": "y"}), "Running"))
            ),
            [(Some("a:y".to_string()), None)]
        );
        // A re-list: what it lacks was deleted while the watch was away.
        apply(&mut writer, watcher::Event::Init);
        apply(
            &mut writer,
            watcher::Event::InitApply(pod("c", json!({"app": "c"}), "Running")),
        );
        assert_eq!(
            apply(&mut writer, watcher::Event::InitDone),
            [(Some("b:z".to_string()), None)]
        );
        let names: Vec<String> = index
            .in_namespace("shop")
            .iter()
            .map(|p| p.name_any())
            .collect();
        assert_eq!(names, ["c"]);
        assert_eq!(index.namespaces(), BTreeSet::from(["shop".to_string()]));
    }

    #[test]
    fn pod_facts_keep_what_selection_and_bypass_read_and_drop_the_rest() {
        let running = pod_facts(pod("a", json!({"app": "x"}), "Running"));
        assert_eq!(running.labels()["app"], "x");
        assert!(running.metadata.resource_version.is_none());
        assert!(running.annotations().is_empty());
        let spec = running.spec.as_ref().expect("spec");
        assert_eq!(spec.containers[0].name, "app");
        assert!(spec.containers[0].image.is_none());
        assert_eq!(
            spec.containers[0].ports.as_ref().expect("ports")[0].container_port,
            8080
        );
        // A status-only update (new IP, same phase) is no change at all.
        let mut moved = pod("a", json!({"app": "x"}), "Running");
        if let Some(status) = moved.status.as_mut() {
            status.pod_ip = Some("10.2.2.2".to_string());
        }
        moved.metadata.resource_version = Some("8".to_string());
        assert_eq!(pod_facts(moved), running);
        assert_ne!(
            pod_facts(pod("a", json!({"app": "x"}), "Succeeded")),
            running
        );
    }
}
