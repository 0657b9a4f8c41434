//! Images for the CLIP vision tower: read with the `image` crate, resized
//! (shortest edge, bicubic) and center-cropped to the model's size, scaled
//! to [0, 1] and normalized per channel as `preprocessor_config.json` says
//! (CLIP's mean / std when it is absent), then cut into patch rows.

use std::path::Path;

use image::imageops::FilterType;
use image::RgbImage;
use serde_json::Value;

use super::ModelError;

/// CLIP's published normalization (openai/CLIP `clip.py`).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's published per-channel standard deviation.
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// How an image becomes pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct ImagePrep {
    /// Shortest edge after the resize.
    pub resize: usize,
    /// Side of the center crop (the model's image size).
    pub crop: usize,
    /// Per-channel mean subtracted after scaling to [0, 1].
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by.
    pub std: [f32; 3],
}

impl ImagePrep {
    /// CLIP's defaults for an `image_size` model.
    pub fn clip(image_size: usize) -> ImagePrep {
        ImagePrep {
            resize: image_size,
            crop: image_size,
            mean: CLIP_MEAN,
            std: CLIP_STD,
        }
    }

    /// Reads `preprocessor_config.json` over the defaults. The crop must be
    /// the model's image size.
    pub fn from_json(path: &Path, text: &str, image_size: usize) -> Result<ImagePrep, ModelError> {
        let bad = |reason: String| ModelError::Config {
            path: path.to_path_buf(),
            reason,
        };
        let v: Value = serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let mut p = ImagePrep::clip(image_size);
        let side = |x: &Value, keys: &[&str]| -> Option<usize> {
            if let Some(n) = x.as_u64() {
                return Some(n as usize);
            }
            keys.iter()
                .find_map(|k| x.get(*k).and_then(Value::as_u64))
                .map(|n| n as usize)
        };
        if let Some(s) = v.get("size") {
            p.resize = side(s, &["shortest_edge", "height"])
                .ok_or_else(|| bad(format!("size {s} is not understood")))?;
        }
        if let Some(c) = v.get("crop_size") {
            p.crop = side(c, &["height", "width"])
                .ok_or_else(|| bad(format!("crop_size {c} is not understood")))?;
        }
        let triple = |key: &str| -> Result<Option<[f32; 3]>, ModelError> {
            match v.get(key).and_then(Value::as_array) {
                None => Ok(None),
                Some(a) if a.len() == 3 && a.iter().all(|x| x.as_f64().is_some()) => {
                    let f = |i: usize| a[i].as_f64().unwrap_or(0.0) as f32;
                    Ok(Some([f(0), f(1), f(2)]))
                }
                Some(a) => Err(bad(format!("{key} {a:?} is not three numbers"))),
            }
        };
        if let Some(m) = triple("image_mean")? {
            p.mean = m;
        }
        if let Some(s) = triple("image_std")? {
            if s.iter().any(|&x| x.is_nan() || x <= 0.0) {
                return Err(bad(format!("image_std {s:?} must be positive")));
            }
            p.std = s;
        }
        if p.crop != image_size || p.resize < p.crop {
            return Err(bad(format!(
                "crop {} / resize {} do not give the model's {image_size} px input",
                p.crop, p.resize
            )));
        }
        Ok(p)
    }

    /// The JSON [`Self::from_json`] reads.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "size": {"shortest_edge": self.resize},
            "crop_size": {"height": self.crop, "width": self.crop},
            "do_resize": true,
            "do_center_crop": true,
            "do_normalize": true,
            "image_mean": self.mean,
            "image_std": self.std,
            "image_processor_type": "CLIPImageProcessor",
        })
    }

    /// Normalized pixels, channel-major (`3 x crop x crop`).
    pub fn pixels(&self, img: &RgbImage) -> Vec<f32> {
        let (w, h) = img.dimensions();
        let (w, h) = (w.max(1) as f64, h.max(1) as f64);
        let k = self.resize as f64 / w.min(h);
        let nw = ((w * k).round() as u32).max(self.crop as u32);
        let nh = ((h * k).round() as u32).max(self.crop as u32);
        let resized = image::imageops::resize(img, nw, nh, FilterType::CatmullRom);
        let (x0, y0) = ((nw - self.crop as u32) / 2, (nh - self.crop as u32) / 2);
        let c = self.crop;
        let mut out = vec![0.0f32; 3 * c * c];
        for y in 0..c {
            for x in 0..c {
                let p = resized.get_pixel(x0 + x as u32, y0 + y as u32);
                for ch in 0..3 {
                    out[ch * c * c + y * c + x] =
                        (p[ch] as f32 / 255.0 - self.mean[ch]) / self.std[ch];
                }
            }
        }
        out
    }
}

/// Patch rows of one image for a `patch`-pixel grid: a zero row first (the
/// class token's place; the patch linear has no bias, so it stays zero and
/// the class embedding is added there), then one row per patch in
/// row-major patch order, each `3·patch²` values in the conv weight's
/// `(channel, dy, dx)` order.
pub(crate) fn patch_rows(pixels: &[f32], side: usize, patch: usize, out: &mut Vec<f32>) {
    let g = side / patch;
    let len = 3 * patch * patch;
    out.extend(std::iter::repeat_n(0.0, len));
    for py in 0..g {
        for px in 0..g {
            for ch in 0..3 {
                for dy in 0..patch {
                    let row = &pixels[ch * side * side + (py * patch + dy) * side + px * patch..];
                    out.extend_from_slice(&row[..patch]);
                }
            }
        }
    }
}

/// Reads an image file, naming it in the error.
pub(crate) fn read_image(path: &Path) -> Result<RgbImage, ModelError> {
    image::open(path)
        .map(|i| i.to_rgb8())
        .map_err(|e| ModelError::Image {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// `count` varied synthetic images (gradients, stripes, discs, checkers,
/// noise) of varied sizes and aspect ratios, deterministic for `seed`.
pub(crate) fn generated_images(count: usize, seed: u64) -> Vec<RgbImage> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed);
    (0..count)
        .map(|i| {
            let w = rng.random_range(160..360u32);
            let h = rng.random_range(160..360u32);
            let c0: [f32; 3] = [rng.random(), rng.random(), rng.random()];
            let c1: [f32; 3] = [rng.random(), rng.random(), rng.random()];
            let freq = rng.random_range(2.0..12.0f32);
            let (cx, cy, r) = (
                rng.random_range(0.2..0.8f32),
                rng.random_range(0.2..0.8f32),
                rng.random_range(0.1..0.4f32),
            );
            let kind = i % 5;
            let mut noise = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed ^ i as u64);
            RgbImage::from_fn(w, h, |x, y| {
                let (u, v) = (x as f32 / w as f32, y as f32 / h as f32);
                let t = match kind {
                    0 => u * 0.7 + v * 0.3,
                    1 => 0.5 + 0.5 * (freq * std::f32::consts::TAU * u).sin(),
                    2 => {
                        let d = ((u - cx).powi(2) + (v - cy).powi(2)).sqrt();
                        if d < r {
                            1.0
                        } else {
                            0.0
                        }
                    }
                    3 => (((u * freq) as i32 + (v * freq) as i32) % 2) as f32,
                    _ => noise.random::<f32>(),
                };
                let px = |ch: usize| ((c0[ch] * (1.0 - t) + c1[ch] * t) * 255.0) as u8;
                image::Rgb([px(0), px(1), px(2)])
            })
        })
        .collect()
}
