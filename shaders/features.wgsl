// Optional-feature snippets, spliced into a module by the Rust side
// (src/backend/wgpu/shaders.rs) before the kernel file itself.
//
// Each feature has a `native` section, used when the adapter offers it, and a
// `portable` section with the same functions written in core WGSL. Both paths
// produce the same values bit for bit; the cross-backend test runs both
// (QUANTSCOPE_WGPU_PORTABLE=1 or `WgpuOptions::portable` forces the portable
// ones). Sections start with a line `// ---- section: NAME ----`.
//
// - f16:      `f16x2(word) -> vec2<f32>` decodes two IEEE halves (low half first).
// - packed:   `i8x4(word) -> vec4<f32>` decodes four signed bytes (low byte first).
// - lane:     `struct Lane`, the entry-point builtins (with the subgroup ones
//             where the adapter has subgroups).
// - subgroup: `row_sum8`, the
//             workgroup-wide sum of up to 8 per-thread partials (result valid
//             in invocation 0). Workgroups using it have WG_SIZE invocations.
// - reduce:   `wg_sum(v, lane)` and `wg_max(v, lane)`, the workgroup-wide sum /
//             max of one value per invocation, returned to every invocation
//             (the same value in all; ops.wgsl). Needs the subgroup section's
//             `Lane`; call from workgroup-uniform control flow.

// ---- section: f16.native ----
// Not `vec2<f32>(bitcast<vec2<f16>>(word))`: naga 30 types that size-changing
// bitcast as a scalar f16 and the vec2 constructor then splats it (checked on
// lavapipe: wrong values, no validation error). unpack2x16float is exact, so
// the native path decodes like the portable one until naga is fixed.
fn f16x2(word: u32) -> vec2<f32> {
    return unpack2x16float(word);
}

// ---- section: f16.portable ----
fn f16x2(word: u32) -> vec2<f32> {
    return unpack2x16float(word);
}

// ---- section: packed.native ----
fn i8x4(word: u32) -> vec4<f32> {
    return vec4<f32>(unpack4xI8(word));
}

// ---- section: packed.portable ----
fn i8x4(word: u32) -> vec4<f32> {
    let v = bitcast<i32>(word);
    return vec4<f32>(vec4<i32>(
        extractBits(v, 0u, 8u),
        extractBits(v, 8u, 8u),
        extractBits(v, 16u, 8u),
        extractBits(v, 24u, 8u),
    ));
}

// ---- section: lane.native ----
struct Lane {
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(num_subgroups) n_sg: u32,
}

// ---- section: lane.portable ----
struct Lane {
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
}

// ---- section: subgroup.native ----
var<workgroup> row_sum_scratch: array<array<f32, 8>, WG_SIZE>;

// subgroupAdd inside each subgroup, then one slot per subgroup in workgroup memory.
fn row_sum8(v: array<f32, 8>, lane: Lane) -> array<f32, 8> {
    var out: array<f32, 8>;
    for (var b = 0u; b < 8u; b++) {
        let s = subgroupAdd(v[b]);
        if lane.sg_lane == 0u {
            row_sum_scratch[lane.sg_id][b] = s;
        }
    }
    workgroupBarrier();
    if lane.lid == 0u {
        for (var b = 0u; b < 8u; b++) {
            var t = 0.0;
            for (var i = 0u; i < lane.n_sg; i++) {
                t += row_sum_scratch[i][b];
            }
            out[b] = t;
        }
    }
    return out;
}

// ---- section: subgroup.portable ----
var<workgroup> row_sum_scratch: array<array<f32, 8>, WG_SIZE>;

// Tree reduction in workgroup memory (WG_SIZE is a power of two).
fn row_sum8(v: array<f32, 8>, lane: Lane) -> array<f32, 8> {
    row_sum_scratch[lane.lid] = v;
    workgroupBarrier();
    for (var s = WG_SIZE / 2u; s > 0u; s >>= 1u) {
        if lane.lid < s {
            for (var b = 0u; b < 8u; b++) {
                row_sum_scratch[lane.lid][b] += row_sum_scratch[lane.lid + s][b];
            }
        }
        workgroupBarrier();
    }
    return row_sum_scratch[0];
}

// ---- section: reduce.native ----
var<workgroup> reduce_scratch: array<f32, WG_SIZE>;

// One subgroup reduction, one slot per subgroup, then every invocation folds
// the slots in the same order (so all get the same value).
fn wg_sum(v: f32, lane: Lane) -> f32 {
    let s = subgroupAdd(v);
    if lane.sg_lane == 0u {
        reduce_scratch[lane.sg_id] = s;
    }
    workgroupBarrier();
    var t = 0.0;
    for (var i = 0u; i < lane.n_sg; i++) {
        t += reduce_scratch[i];
    }
    // Every invocation has read before a later call writes again.
    workgroupBarrier();
    return t;
}

fn wg_max(v: f32, lane: Lane) -> f32 {
    let s = subgroupMax(v);
    if lane.sg_lane == 0u {
        reduce_scratch[lane.sg_id] = s;
    }
    workgroupBarrier();
    var t = reduce_scratch[0];
    for (var i = 1u; i < lane.n_sg; i++) {
        t = max(t, reduce_scratch[i]);
    }
    workgroupBarrier();
    return t;
}

// ---- section: reduce.portable ----
var<workgroup> reduce_scratch: array<f32, WG_SIZE>;

// Tree reduction in workgroup memory (WG_SIZE is a power of two).
fn wg_sum(v: f32, lane: Lane) -> f32 {
    reduce_scratch[lane.lid] = v;
    workgroupBarrier();
    for (var s = WG_SIZE / 2u; s > 0u; s >>= 1u) {
        if lane.lid < s {
            reduce_scratch[lane.lid] += reduce_scratch[lane.lid + s];
        }
        workgroupBarrier();
    }
    let t = reduce_scratch[0];
    workgroupBarrier();
    return t;
}

fn wg_max(v: f32, lane: Lane) -> f32 {
    reduce_scratch[lane.lid] = v;
    workgroupBarrier();
    for (var s = WG_SIZE / 2u; s > 0u; s >>= 1u) {
        if lane.lid < s {
            reduce_scratch[lane.lid] = max(reduce_scratch[lane.lid], reduce_scratch[lane.lid + s]);
        }
        workgroupBarrier();
    }
    let t = reduce_scratch[0];
    workgroupBarrier();
    return t;
}
