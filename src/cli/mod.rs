//! One module per subcommand.

pub mod devices;
pub mod progress;
pub mod quantize;
