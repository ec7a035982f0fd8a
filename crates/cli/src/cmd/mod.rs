//! One module per subcommand.

pub mod bench;
pub mod infer;
pub mod inspect;
pub mod split;
