//! One module per subcommand.

pub mod devices;
pub mod guard;
pub mod hardware;
pub mod profile;
pub mod progress;
pub mod quantize;
pub mod vector;
