//! The one font every chart draws with, embedded in the binary so text
//! renders on a machine with no fonts installed and no fontconfig: a subset
//! of DejaVu Sans (`assets/fonts/`, licence beside it), registered with
//! plotters' `ab_glyph` font table under the family name `sans-serif`.

use std::sync::OnceLock;

/// The embedded TTF (DejaVu Sans, Latin + Greek subset, ~23 KB).
pub const FONT_TTF: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-subset.ttf");

/// The family name the font is registered under; charts ask for this one.
pub const FAMILY: &str = "sans-serif";

/// Registers the embedded font with plotters (once per process). Every
/// drawing function calls this first; it is cheap after the first call.
pub fn register() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        use plotters::style::FontStyle;
        // One face serves every style: the table falls back to Normal.
        plotters::style::register_font(FAMILY, FontStyle::Normal, FONT_TTF)
            .map_err(|_| "the embedded font is not a valid TrueType font".to_string())
    })
    .clone()
}
