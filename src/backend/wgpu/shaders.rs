//! WGSL sources and the pipeline cache.
//!
//! WGSL has no preprocessor, so a module is composed here from readable files
//! under `shaders/`: the `enable` directives the device needs, the chosen
//! sections of `features.wgsl` (native or portable f16 decode, packed 4x8
//! integers, subgroup reduction), the shared `matrix.wgsl` prelude where the
//! family uses it, then the family's own file. Each module is compiled once,
//! each pipeline created once, both cached for the life of the backend.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{device_error, Caps};
use crate::backend::BackendError;

const FEATURES: &str = include_str!("../../../shaders/features.wgsl");
const MATRIX: &str = include_str!("../../../shaders/matrix.wgsl");
const DEQUANTIZE: &str = include_str!("../../../shaders/dequantize.wgsl");
const GEMV: &str = include_str!("../../../shaders/gemv.wgsl");
const GEMV_DP4: &str = include_str!("../../../shaders/gemv_dp4.wgsl");
const GEMM: &str = include_str!("../../../shaders/gemm.wgsl");
const SPARSE: &str = include_str!("../../../shaders/sparse.wgsl");
const QUANTIZE: &str = include_str!("../../../shaders/quantize.wgsl");
const ASSIGN: &str = include_str!("../../../shaders/assign.wgsl");
const FLOPS: &str = include_str!("../../../shaders/probe.wgsl");
const OPS: &str = include_str!("../../../shaders/ops.wgsl");

/// A kernel family: one `shaders/*.wgsl` file, one bind group layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Family {
    Dequantize,
    Gemv,
    GemvDp4,
    Gemm,
    Sparse,
    Quantize,
    Assign,
    Flops,
    /// The forward-pass ops (`ops.wgsl`).
    Ops,
}

impl Family {
    fn file(self) -> &'static str {
        match self {
            Family::Dequantize => DEQUANTIZE,
            Family::Gemv => GEMV,
            Family::GemvDp4 => GEMV_DP4,
            Family::Gemm => GEMM,
            Family::Sparse => SPARSE,
            Family::Quantize => QUANTIZE,
            Family::Assign => ASSIGN,
            Family::Flops => FLOPS,
            Family::Ops => OPS,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Family::Dequantize => "dequantize.wgsl",
            Family::Gemv => "gemv.wgsl",
            Family::GemvDp4 => "gemv_dp4.wgsl",
            Family::Gemm => "gemm.wgsl",
            Family::Sparse => "sparse.wgsl",
            Family::Quantize => "quantize.wgsl",
            Family::Assign => "assign.wgsl",
            Family::Flops => "probe.wgsl",
            Family::Ops => "ops.wgsl",
        }
    }

    /// Families built on `matrix.wgsl` (one packed matrix bound).
    fn uses_matrix(self) -> bool {
        matches!(
            self,
            Family::Dequantize | Family::Gemv | Family::Gemm | Family::Sparse
        )
    }

    /// The `features.wgsl` sections the family splices in, in order.
    fn sections(self) -> &'static [&'static str] {
        match self {
            Family::Ops => &["lane", "reduce"],
            Family::GemvDp4 => &["f16", "packed", "lane", "subgroup"],
            f if f.uses_matrix() => &["f16", "packed", "lane", "subgroup"],
            _ => &[],
        }
    }

    /// Bindings that hold the uniform block besides binding 0: `ops.wgsl`
    /// reads its 32-byte parameters as `OpParams` at 0 and as
    /// `AttentionParams` at 6.
    pub(crate) fn extra_uniform(self) -> Option<u32> {
        (self == Family::Ops).then_some(6)
    }

    /// Binding types, in binding order: `true` = storage read-only,
    /// `false` = storage read_write; binding 0 is always the uniform block.
    fn storage_bindings(self) -> &'static [bool] {
        match self {
            Family::Dequantize | Family::Gemv | Family::GemvDp4 | Family::Gemm | Family::Sparse => {
                &[true, true, true, true, true, false]
            }
            Family::Quantize => &[true, false, false, false],
            Family::Assign => &[true, true, false, false, false],
            Family::Flops => &[false],
            Family::Ops => &[true, true, true, true, false],
        }
    }

    const ALL: [Family; 9] = [
        Family::Dequantize,
        Family::Gemv,
        Family::GemvDp4,
        Family::Gemm,
        Family::Sparse,
        Family::Quantize,
        Family::Assign,
        Family::Flops,
        Family::Ops,
    ];
}

/// The text of one `// ---- section: NAME ----` of `features.wgsl`.
fn section(name: &str) -> &'static str {
    let marker = format!("// ---- section: {name} ----");
    let Some(start) = FEATURES.find(&marker) else {
        return "";
    };
    let body = &FEATURES[start + marker.len()..];
    let end = body.find("// ---- section:").unwrap_or(body.len());
    &body[..end]
}

/// The complete WGSL of `family` for a device with `caps`.
pub(crate) fn module_source(family: Family, caps: &Caps) -> String {
    let mut src = String::new();
    let sections = family.sections();
    if sections.is_empty() {
        src.push_str(family.file());
        return src;
    }
    let pick = |native: bool| if native { "native" } else { "portable" };
    if caps.f16 && sections.contains(&"f16") {
        src.push_str("enable f16;\n");
    }
    for &feature in sections {
        let native = match feature {
            "f16" => caps.f16,
            "packed" => caps.packed,
            _ => caps.subgroups,
        };
        src.push_str(&format!("// features.wgsl: {feature} ({})\n", pick(native)));
        src.push_str(section(&format!("{feature}.{}", pick(native))));
    }
    if family.uses_matrix() {
        src.push_str("// matrix.wgsl\n");
        src.push_str(MATRIX);
    }
    src.push_str(&format!("// {}\n", family.name()));
    src.push_str(family.file());
    src
}

/// A pipeline: family, entry point, `GEMV_BATCH` (0 = not set).
type PipelineKey = (Family, &'static str, u32);

/// Compiled modules, bind group layouts and pipelines of one device.
pub(crate) struct Pipelines {
    layouts: HashMap<Family, (wgpu::BindGroupLayout, wgpu::PipelineLayout)>,
    modules: Mutex<HashMap<Family, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<PipelineKey, Arc<wgpu::ComputePipeline>>>,
}

impl Pipelines {
    pub(crate) fn new(device: &wgpu::Device) -> Self {
        let mut layouts = HashMap::new();
        for family in Family::ALL {
            let mut entries = vec![wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            }];
            if let Some(binding) = family.extra_uniform() {
                entries.push(wgpu::BindGroupLayoutEntry {
                    binding,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                });
            }
            for (i, &read_only) in family.storage_bindings().iter().enumerate() {
                entries.push(wgpu::BindGroupLayoutEntry {
                    binding: i as u32 + 1,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                });
            }
            let bgl = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(family.name()),
                entries: &entries,
            });
            let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(family.name()),
                bind_group_layouts: &[Some(&bgl)],
                immediate_size: 0,
            });
            layouts.insert(family, (bgl, pl));
        }
        Pipelines {
            layouts,
            modules: Mutex::new(HashMap::new()),
            pipelines: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn bind_group_layout(
        &self,
        family: Family,
    ) -> Result<&wgpu::BindGroupLayout, BackendError> {
        self.layouts
            .get(&family)
            .map(|(b, _)| b)
            .ok_or_else(|| device_error(format!("no layout for {}", family.name())))
    }

    /// The pipeline of `entry` in `family`, compiled on first use. WGSL and
    /// pipeline validation errors come back with their full description.
    /// `batch` (GEMV entries only) sets the `GEMV_BATCH` override constant, so
    /// the per-batch-row loops have constant bounds and their accumulators
    /// stay in registers: one pipeline per batch size actually used.
    pub(crate) fn get(
        &self,
        device: &wgpu::Device,
        caps: &Caps,
        family: Family,
        entry: &'static str,
        batch: Option<u32>,
    ) -> Result<Arc<wgpu::ComputePipeline>, BackendError> {
        let key = (family, entry, batch.unwrap_or(0));
        let poisoned = || device_error("pipeline cache lock poisoned".into());
        if let Some(p) = self.pipelines.lock().map_err(|_| poisoned())?.get(&key) {
            return Ok(p.clone());
        }
        let mut modules = self.modules.lock().map_err(|_| poisoned())?;
        let module = match modules.entry(family) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let source = module_source(family, caps);
                let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
                let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(family.name()),
                    source: wgpu::ShaderSource::Wgsl(source.into()),
                });
                if let Some(e) = pollster::block_on(scope.pop()) {
                    return Err(device_error(format!(
                        "WGSL of {} does not compile: {}",
                        family.name(),
                        error_text(&e)
                    )));
                }
                v.insert(module)
            }
        };
        let (_, layout) = self
            .layouts
            .get(&family)
            .ok_or_else(|| device_error(format!("no layout for {}", family.name())))?;
        let constants: Vec<(&str, f64)> = batch
            .map(|b| vec![("GEMV_BATCH", f64::from(b))])
            .unwrap_or_default();
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: Some(layout),
            module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &constants,
                ..Default::default()
            },
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(device_error(format!(
                "pipeline {entry} of {} is invalid: {}",
                family.name(),
                error_text(&e)
            )));
        }
        let pipeline = Arc::new(pipeline);
        self.pipelines
            .lock()
            .map_err(|_| poisoned())?
            .insert(key, pipeline.clone());
        Ok(pipeline)
    }
}

/// The useful text of a wgpu error: validation errors keep it in
/// `description`, not in `Display`.
pub(crate) fn error_text(e: &wgpu::Error) -> String {
    match e {
        wgpu::Error::Validation { description, .. } => description.clone(),
        other => other.to_string(),
    }
}
