//! guardd's Prometheus metrics.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use guard_api::metrics::{Exposition, StageLabels};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub hook: String,
    pub verdict: String,
    pub agent: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NameLabels {
    pub name: String,
}

/// guardd's metrics.
pub struct DaemonMetrics {
    registry: Registry,
    pub decisions: Family<DecisionLabels, Counter>,
    pub lost: Family<StageLabels, Counter>,
    pub kernel: Family<NameLabels, Gauge>,
    pub enforcing: Gauge,
    pub generation: Gauge,
    pub written_seq: Gauge,
    pub acked_seq: Gauge,
}

impl Default for DaemonMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("guard");
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Decisions recorded, by hook, verdict and agent",
            decisions.clone(),
        );
        let lost = Family::<StageLabels, Counter>::default();
        registry.register(
            "records_lost",
            "Records lost, by stage: ring_buffer, denials_ring_buffer, decode, events_file, torn_line, replaced_programs, subscriber_queue, ocsf_file (the OCSF copy only)",
            lost.clone(),
        );
        let kernel = Family::<NameLabels, Gauge>::default();
        registry.register(
            "kernel_counter",
            "The BPF programs' counters (records_made, events_lost, denials_lost, unrecorded_denials, hook_errors, error_denials, walk_too_deep)",
            kernel.clone(),
        );
        let enforcing = Gauge::default();
        registry.register(
            "enforcing",
            "1 when every hook is attached and the readiness canary was denied",
            enforcing.clone(),
        );
        let generation = Gauge::default();
        registry.register(
            "policy_generation",
            "The policy generation in force",
            generation.clone(),
        );
        let written_seq = Gauge::default();
        registry.register(
            "records_written_seq",
            "Sequence number of the last record written to the events stream",
            written_seq.clone(),
        );
        let acked_seq = Gauge::default();
        registry.register(
            "records_acked_seq",
            "Sequence number up to which the collector acknowledged the stream (shipping lag: written - acked)",
            acked_seq.clone(),
        );
        Self {
            registry,
            decisions,
            lost,
            kernel,
            enforcing,
            generation,
            written_seq,
            acked_seq,
        }
    }
}

impl Exposition for DaemonMetrics {
    fn registry(&self) -> &Registry {
        &self.registry
    }
}
