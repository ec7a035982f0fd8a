//! One module per subcommand.

pub mod bench;
pub mod infer;
pub mod inspect;
pub mod plan;
pub mod profile;
pub mod run;
pub mod serve;
pub mod split;
