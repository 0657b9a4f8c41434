// FMA-rate probe for `measure_flops` (kernels/probe.cu mirrors it): nothing but independent multiply-adds.
//
// Entry point: fma_rate.
// Bindings (group 0): 0 uniform `iters` (vec4<u32>, .x = loop count),
//                     1 storage `sink` (read_write, one f32 per invocation,
//                     written so the loop is not removed).
// Workgroup: 256 invocations; each runs `iters` x 8 chains x vec4 FMAs,
// i.e. 64 FLOPs per iteration.

@group(0) @binding(0) var<uniform> iters: vec4<u32>;
@group(0) @binding(1) var<storage, read_write> sink: array<f32>;

@compute @workgroup_size(256)
fn fma_rate(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 256u;
    let s = f32(i & 7u) * 1e-7;
    let m = vec4<f32>(0.999999, 0.9999991, 0.9999992, 0.9999993);
    let c = vec4<f32>(1e-7);
    var a0 = vec4<f32>(s);
    var a1 = a0 + 1.0;
    var a2 = a0 + 2.0;
    var a3 = a0 + 3.0;
    var a4 = a0 + 4.0;
    var a5 = a0 + 5.0;
    var a6 = a0 + 6.0;
    var a7 = a0 + 7.0;
    for (var k = 0u; k < iters.x; k++) {
        a0 = fma(a0, m, c);
        a1 = fma(a1, m, c);
        a2 = fma(a2, m, c);
        a3 = fma(a3, m, c);
        a4 = fma(a4, m, c);
        a5 = fma(a5, m, c);
        a6 = fma(a6, m, c);
        a7 = fma(a7, m, c);
    }
    let t = (a0 + a1) + (a2 + a3) + (a4 + a5) + (a6 + a7);
    sink[i] = t.x + t.y + t.z + t.w;
}
