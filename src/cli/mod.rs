//! One module per subcommand.

pub mod analyze;
pub mod devices;
pub mod forward;
pub mod guard;
pub mod hardware;
pub mod profile;
pub mod progress;
pub mod quantize;
pub mod report;
pub mod results;
pub mod vector;
