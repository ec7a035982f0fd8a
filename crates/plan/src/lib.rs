//! # cleave-plan
//!
//! The decision at the heart of collaborative inference: given this device, this server, this
//! link and these constraints, where to cut, whether to stop at an early exit, and how many bits
//! the features get. The candidate set is small (cuts × codecs × exit policies), so the planner
//! searches it exactly, in microseconds, from measured profiles.
//!
//! Pure: no I/O, no clocks, no threads. A [`Problem`] holds what is static (per-cut compute on
//! each machine, bytes per codec, accuracy costs, constraints, objective); [`Conditions`] hold
//! what changes per frame (link estimate, server queue delay). [`plan`] returns the optimum,
//! [`alternatives`] the best plan per cut, and [`brute_force`] the reference the tests compare
//! against.
//!
//! ```
//! use cleave_plan::{Conditions, plan};
//! # let problem = cleave_plan::build::tests_support::toy_problem();
//! let best = plan(&problem, &Conditions::two_tier(cleave_cost::Link::symmetric(5e6, 40.0))).unwrap();
//! println!("cut at {:?} with {:?}: {:.1} ms", best.cuts, best.codecs, best.predicted.total_ms);
//! ```

pub mod build;
pub mod fleet;
pub mod problem;
pub mod search;

pub use build::{ProblemBuilder, segment_features};
pub use problem::{Conditions, Constraints, ExitOption, Objective, Problem};
pub use search::{Choice, Plan, PlanError, Planner, Prediction, alternatives, brute_force, evaluate, plan};
