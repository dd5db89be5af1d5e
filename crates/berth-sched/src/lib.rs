//! The pure decision logic of berth's Mesos-like cluster manager.
//!
//! - [`allocator`] and [`drf`]: which framework is offered which agent's free
//!   resources. [`Drf`] is hierarchical Dominant Resource Fairness as Mesos
//!   does it: the role with the lowest weighted dominant share first, then
//!   the framework with the lowest dominant share inside that role.
//! - [`placement`]: how the batch framework spreads a job's instances over
//!   the offers it holds, honouring resources and `equal`/`unique`/`spread`
//!   constraints, and [`explain`], the one line telling a user why instances
//!   stay pending.
//!
//! Everything here is a function of its arguments: no I/O, no async, no
//! clock (time arrives as `now_ms`), no randomness, and ties are broken by
//! id. That is what lets every server replica reach the same decision from
//! the same replicated state, and lets the logic be tested with tables and
//! property tests instead of clusters.
#![forbid(unsafe_code)]

pub mod allocator;
pub mod drf;
pub mod placement;
mod res;

pub use allocator::{AgentSnapshot, Allocation, Allocator, Demand, FrameworkSnapshot, Snapshot};
pub use drf::{dominant_share, Drf};
pub use placement::{
    explain, place, place_holding, spread_values, NodeFit, OfferSlot, Placed, PlacementRequest,
};
