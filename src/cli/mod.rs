//! One module per subcommand.

pub mod devices;
pub mod forward;
pub mod profile;
pub mod progress;
pub mod quantize;
pub mod vector;
