//! Host-side library target of the eBPF crate. It is empty: it exists so that
//! guard-daemon can name this crate as a build dependency, which makes cargo
//! rebuild the daemon (and so the embedded object) when the programs change.
#![no_std]
