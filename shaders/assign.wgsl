// Nearest-level assignment and per-level reduction (one Lloyd-Max step).
//
// Entry points:
//   assign_levels: code[i] = index of the level nearest to values[i], ties to
//                  the lower index, by the same midpoint binary search as the
//                  CPU's `format::nearest_level` (`x <= 0.5 * (a + b)`), so the
//                  codes are identical. One invocation per 4 values (one u32
//                  of 4 packed u8 codes).
//   reduce_levels: per workgroup of CHUNK values, per level: the f32 sum and
//                  u32 count of the values with that code; invocation l of the
//                  workgroup owns level l (levels <= 256) and scans the chunk.
//                  The host adds the partials in f64.
// Bindings (group 0):
//   0  uniform  a       AssignParams (src/backend/params.rs)
//   1  storage  values  n f32
//   2  storage  levels  `levels` f32, ascending
//   3  storage  codes   ceil(n/4) u32 (read_write), 4 codes per word, low byte first
//   4  storage  sums    workgroups x levels f32 (read_write)
//   5  storage  counts  workgroups x levels u32 (read_write)
// Workgroup: 256 invocations; dispatch ceil(n/1024) (assign) or
// ceil(n/CHUNK) (reduce) workgroups, 2-D past 65535.

struct AssignParams {
    n: u32,
    levels: u32,
    want_codes: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> a: AssignParams;
@group(0) @binding(1) var<storage, read> values: array<f32>;
@group(0) @binding(2) var<storage, read> levels: array<f32>;
@group(0) @binding(3) var<storage, read_write> codes: array<u32>;
@group(0) @binding(4) var<storage, read_write> sums: array<f32>;
@group(0) @binding(5) var<storage, read_write> counts: array<u32>;

const WG_SIZE: u32 = 256u;
const CHUNK: u32 = 1024u;

var<workgroup> chunk_vals: array<f32, CHUNK>;
var<workgroup> chunk_codes: array<u32, CHUNK>;

fn nearest(v: f32) -> u32 {
    var lo = 0u;
    var hi = a.levels - 1u;
    while lo < hi {
        let mid = (lo + hi) / 2u;
        if v <= 0.5 * (levels[mid] + levels[mid + 1u]) {
            hi = mid;
        } else {
            lo = mid + 1u;
        }
    }
    return lo;
}

@compute @workgroup_size(WG_SIZE)
fn assign_levels(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let wd = (wid.x + wid.y * nwg.x) * WG_SIZE + lid;
    if wd * 4u >= a.n {
        return;
    }
    var word = 0u;
    for (var i = 0u; i < 4u; i++) {
        let j = wd * 4u + i;
        if j < a.n {
            word |= nearest(values[j]) << (8u * i);
        }
    }
    codes[wd] = word;
}

@compute @workgroup_size(WG_SIZE)
fn reduce_levels(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let blk = wid.x + wid.y * nwg.x;
    let start = blk * CHUNK;
    if start >= a.n {
        return;
    }
    let len = min(CHUNK, a.n - start);
    for (var i = lid; i < CHUNK; i += WG_SIZE) {
        if i < len {
            let j = start + i;
            chunk_vals[i] = values[j];
            chunk_codes[i] = (codes[j >> 2u] >> (8u * (j & 3u))) & 0xffu;
        }
    }
    workgroupBarrier();
    if lid < a.levels {
        var s = 0.0;
        var n = 0u;
        for (var i = 0u; i < len; i++) {
            if chunk_codes[i] == lid {
                s += chunk_vals[i];
                n += 1u;
            }
        }
        sums[blk * a.levels + lid] = s;
        counts[blk * a.levels + lid] = n;
    }
}
