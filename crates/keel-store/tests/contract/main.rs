//! The contract of `keel_store::Storage`, run against every implementation: `Store` on
//! redb and `LogStore` on its file, each in a temporary directory, and `MemStore` in
//! memory. A behaviour is one generic function in `suite.rs`; `crash.rs` holds what only
//! one of them can show (a store killed mid-commit, a `MemStore` crashed before its sync,
//! a log file cut short, damaged or rewritten).

mod crash;
mod harness;
mod suite;

/// Runs each named function of `suite` once per store, as a test named after it in the
/// store's module (`redb::…`, `memory::…`, `log::…`).
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod redb {
            $(#[test] fn $name() { crate::suite::$name::<crate::harness::Redb>(); })*
        }
        mod memory {
            $(#[test] fn $name() { crate::suite::$name::<crate::harness::Mem>(); })*
        }
        mod log {
            $(#[test] fn $name() { crate::suite::$name::<crate::harness::Log>(); })*
        }
    };
}

contract!(
    a_group_commit_numbers_its_entries_and_ships_them_before_returning,
    refused_preconditions_write_nothing,
    a_precondition_sees_the_writes_before_it_in_the_same_batch,
    an_append_must_continue_the_log,
    entries_after_reads_in_order_up_to_max,
    a_rollback_restores_the_exact_earlier_state,
    a_rollback_into_the_snapshot_is_refused,
    compaction_keeps_log_retain_entries,
    keys_are_walked_a_page_at_a_time_in_order,
    a_snapshot_installs_whole_and_the_log_goes_on_from_it,
    the_epoch_seen_never_goes_back,
    node_meta_is_kept_apart_from_the_log,
    everything_acknowledged_survives_a_restart,
    a_mutation_that_panics_half_way_leaves_nothing,
    concurrent_commits_are_serialised,
);
