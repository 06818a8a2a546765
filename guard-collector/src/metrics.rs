//! guard-collector's Prometheus metrics.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use guard_api::metrics::{Exposition, StageLabels};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

/// guard-collector's metrics.
pub struct CollectorMetrics {
    registry: Registry,
    pub entries: Family<KindLabels, Counter>,
    pub broken: Counter,
    pub checkpoints_failed: Counter,
    pub duplicates: Counter,
    pub hosts_connected: Gauge,
    pub store_errors: Counter,
    pub lost: Family<StageLabels, Counter>,
}

impl Default for CollectorMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("guard_collector");
        let entries = Family::<KindLabels, Counter>::default();
        registry.register(
            "entries",
            "Entries stored, by kind: record, loss, gap, checkpoint",
            entries.clone(),
        );
        let broken = Counter::default();
        registry.register(
            "broken_links",
            "Records stored whose chain link did not verify",
            broken.clone(),
        );
        let checkpoints_failed = Counter::default();
        registry.register(
            "checkpoints_failed",
            "Checkpoints stored marked broken: a signature that does not match, another key than the host's, or a line it does not sign",
            checkpoints_failed.clone(),
        );
        let duplicates = Counter::default();
        registry.register(
            "duplicates",
            "Lines received that were already stored (resends), skipped",
            duplicates.clone(),
        );
        let hosts_connected = Gauge::default();
        registry.register(
            "hosts_connected",
            "Hosts shipping now",
            hosts_connected.clone(),
        );
        let store_errors = Counter::default();
        registry.register(
            "store_errors",
            "Batches the store refused (the host resends them)",
            store_errors.clone(),
        );
        let lost = Family::<StageLabels, Counter>::default();
        registry.register(
            "records_lost",
            "Entries live followers missed (stage subscriber_queue)",
            lost.clone(),
        );
        Self {
            registry,
            entries,
            broken,
            checkpoints_failed,
            duplicates,
            hosts_connected,
            store_errors,
            lost,
        }
    }
}

impl Exposition for CollectorMetrics {
    fn registry(&self) -> &Registry {
        &self.registry
    }
}
