//! The WGSL parameter blocks match `src/backend/params.rs`.
//!
//! Every `var<uniform>` in `shaders/*.wgsl` whose type is a struct declared
//! there must be a `#[repr(C)]` struct of `params.rs` with the same name
//! and the same fields in the same order with the same types (u32, i32 and
//! f32, 4 bytes each in both languages), and every struct of `params.rs`
//! must be used by some shader. Both files are read as text (the shaders
//! are only text to Rust anyway); the Rust side is checked against the
//! compiled types as well: `size_of` is the sum of the parsed fields, so a
//! field the parser missed fails. The `FLAG_*` constants the shaders
//! repeat must have the values of `params.rs`, and the `FMT_*` constants
//! must be `FormatKind as u32`. (`OpParams::kind` is read by no shader:
//! each activation has its own entry point.)

use std::collections::BTreeMap;
use std::path::Path;

use quantscope::backend::params::{
    AssignParams, AttentionParams, MatmulParams, OpParams, QuantizeParams, FLAG_ACT_SCALE,
    FLAG_INT8_ACT, FLAG_OUTLIERS,
};
use quantscope::format::FormatKind;

/// One struct: its fields as (name, type) in declaration order.
type Fields = Vec<(String, String)>;

/// `// ...` comments removed.
fn strip_comments(src: &str) -> String {
    src.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The structs declared in WGSL source: `struct Name { a: T, b: U, }`,
/// attributes (`@builtin(...)`) kept with their field.
fn wgsl_structs(src: &str) -> BTreeMap<String, Fields> {
    let src = strip_comments(src);
    let mut out = BTreeMap::new();
    let mut rest = src.as_str();
    while let Some(i) = rest.find("struct ") {
        // A whole word: not `mystruct `.
        let before = rest[..i].chars().last();
        rest = &rest[i + "struct ".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let (Some(open), Some(close)) = (rest.find('{'), rest.find('}')) else {
            panic!("unterminated struct in WGSL: {rest:.60}");
        };
        let name = rest[..open].trim().to_string();
        let fields = rest[open + 1..close]
            .split(',')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .map(|f| {
                let (n, t) = f
                    .split_once(':')
                    .unwrap_or_else(|| panic!("WGSL field '{f}' of {name} has no type"));
                (n.trim().to_string(), t.trim().to_string())
            })
            .collect();
        out.insert(name, fields);
        rest = &rest[close + 1..];
    }
    out
}

/// The `var<uniform> name: Type;` declarations: (name, type).
fn wgsl_uniforms(src: &str) -> Vec<(String, String)> {
    let src = strip_comments(src);
    src.split(';')
        .filter_map(|decl| {
            let i = decl.find("var<uniform>")?;
            let (n, t) = decl[i + "var<uniform>".len()..].split_once(':')?;
            Some((n.trim().to_string(), t.trim().to_string()))
        })
        .collect()
}

/// The `#[repr(C)]` structs of Rust source: `pub struct Name { pub a: T, }`.
fn rust_repr_c_structs(src: &str) -> BTreeMap<String, Fields> {
    let mut out = BTreeMap::new();
    let lines: Vec<&str> = src.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i].trim();
        if l == "#[repr(C)]" {
            // The struct line follows its derive attributes.
            let mut j = i + 1;
            while !lines[j].trim().starts_with("pub struct ") {
                assert!(
                    lines[j].trim().starts_with("#["),
                    "#[repr(C)] on something other than a struct: {}",
                    lines[j]
                );
                j += 1;
            }
            let head = lines[j].trim();
            let name = head["pub struct ".len()..]
                .trim_end_matches('{')
                .trim()
                .to_string();
            let mut fields = Vec::new();
            j += 1;
            while lines[j].trim() != "}" {
                let f = lines[j].trim();
                if !f.is_empty() && !f.starts_with("//") && !f.starts_with("#[") {
                    let f = f.trim_start_matches("pub ").trim_end_matches(',');
                    let (n, t) = f
                        .split_once(':')
                        .unwrap_or_else(|| panic!("Rust field '{f}' of {name} has no type"));
                    fields.push((n.trim().to_string(), t.trim().to_string()));
                }
                j += 1;
            }
            out.insert(name, fields);
            i = j;
        }
        i += 1;
    }
    out
}

/// Bytes of a scalar field type, the same name in both languages.
fn scalar_bytes(t: &str) -> Option<usize> {
    matches!(t, "u32" | "i32" | "f32").then_some(4)
}

/// `const NAME: u32 = 3u;` values of WGSL source.
fn wgsl_u32_consts(src: &str) -> BTreeMap<String, u32> {
    let src = strip_comments(src);
    src.lines()
        .filter_map(|line| {
            let d = line.trim().strip_suffix(';')?;
            let rest = d.strip_prefix("const ")?;
            let (name, value) = rest.split_once('=')?;
            let (name, ty) = name.split_once(':')?;
            (ty.trim() == "u32").then_some(())?;
            let v = value.trim().trim_end_matches('u').parse().ok()?;
            Some((name.trim().to_string(), v))
        })
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn shaders() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut v: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("shaders/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wgsl"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                read(&p),
            )
        })
        .collect();
    v.sort();
    assert!(v.len() >= 5, "too few shaders found in {}", dir.display());
    v
}

fn params_rs() -> String {
    read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src/backend/params.rs"))
}

/// `size_of` of each parameter struct, by name: the compiled layout the
/// parsed fields must add up to.
fn rust_sizes() -> BTreeMap<&'static str, usize> {
    use std::mem::size_of;
    BTreeMap::from([
        ("MatmulParams", size_of::<MatmulParams>()),
        ("QuantizeParams", size_of::<QuantizeParams>()),
        ("AssignParams", size_of::<AssignParams>()),
        ("OpParams", size_of::<OpParams>()),
        ("AttentionParams", size_of::<AttentionParams>()),
    ])
}

/// Compares one uniform struct of `file` with its Rust twin; `Err` says how
/// they differ.
fn compare(file: &str, name: &str, wgsl: &Fields, rust: Option<&Fields>) -> Result<(), String> {
    let Some(rust) = rust else {
        return Err(format!(
            "{file}: uniform struct {name} has no #[repr(C)] struct in params.rs"
        ));
    };
    if wgsl.len() != rust.len() {
        return Err(format!(
            "{file}: {name} has {} fields, params.rs {}: {wgsl:?} vs {rust:?}",
            wgsl.len(),
            rust.len()
        ));
    }
    for (i, ((wn, wt), (rn, rt))) in wgsl.iter().zip(rust).enumerate() {
        if wn != rn || wt != rt {
            return Err(format!(
                "{file}: {name} field {i} is `{wn}: {wt}` in WGSL, `{rn}: {rt}` in params.rs"
            ));
        }
        if scalar_bytes(wt).is_none() {
            return Err(format!(
                "{file}: {name}.{wn}: type {wt} is not a 4-byte scalar (u32, i32, f32)"
            ));
        }
    }
    // A uniform block is read in 16-byte rows.
    if !(4 * wgsl.len()).is_multiple_of(16) {
        return Err(format!(
            "{file}: {name} is {} bytes, not a multiple of 16",
            4 * wgsl.len()
        ));
    }
    Ok(())
}

#[test]
fn parsers_read_what_they_should() {
    let w = wgsl_structs(
        "// struct NotThis { a: u32 }\nstruct P {\n    a: u32, // c\n    b: f32,\n}\n\
         @group(0) @binding(0) var<uniform> p: P;",
    );
    assert_eq!(
        w.get("P"),
        Some(&vec![
            ("a".into(), "u32".into()),
            ("b".into(), "f32".into())
        ])
    );
    assert_eq!(w.len(), 1);
    assert_eq!(
        wgsl_uniforms("@group(0) @binding(0) var<uniform> p: P;\nvar<storage> q: array<u32>;"),
        vec![("p".to_string(), "P".to_string())]
    );
    let r = rust_repr_c_structs(
        "#[repr(C)]\n#[derive(Clone)]\npub struct P {\n    /// Doc: with a colon.\n    pub a: u32,\n    pub b: f32,\n}\n",
    );
    assert_eq!(
        r.get("P"),
        Some(&vec![
            ("a".into(), "u32".into()),
            ("b".into(), "f32".into())
        ])
    );
    assert_eq!(
        wgsl_u32_consts("const A: u32 = 3u;\nconst B: f32 = 1.0;"),
        BTreeMap::from([("A".to_string(), 3)])
    );
}

#[test]
fn every_uniform_struct_matches_params_rs() {
    let rust = rust_repr_c_structs(&params_rs());
    let sizes = rust_sizes();
    // The Rust side against its compiled layout.
    for (name, fields) in &rust {
        let parsed: usize = fields
            .iter()
            .map(|(n, t)| {
                scalar_bytes(t)
                    .unwrap_or_else(|| panic!("params.rs {name}.{n}: {t} is not u32/i32/f32"))
            })
            .sum();
        let Some(&size) = sizes.get(name.as_str()) else {
            panic!("params.rs has {name}, unknown to this test: add it to rust_sizes()");
        };
        assert_eq!(
            parsed, size,
            "params.rs {name}: parsed fields add to {parsed} bytes, size_of says {size}"
        );
    }
    assert_eq!(
        rust.keys().map(String::as_str).collect::<Vec<_>>(),
        sizes.keys().copied().collect::<Vec<_>>(),
        "params.rs structs and rust_sizes() differ"
    );
    let mut used: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut errors = Vec::new();
    for (file, src) in shaders() {
        let structs = wgsl_structs(&src);
        for (var, ty) in wgsl_uniforms(&src) {
            let Some(fields) = structs.get(&ty) else {
                // A bare vector (probe.wgsl's `iters: vec4<u32>`) has no
                // Rust struct to match.
                assert!(
                    ty.starts_with("vec"),
                    "{file}: uniform {var} has type {ty}, declared in no struct of the file"
                );
                continue;
            };
            if let Err(e) = compare(&file, &ty, fields, rust.get(&ty)) {
                errors.push(e);
            }
            used.entry(ty).or_default().push(file.clone());
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    for name in rust.keys() {
        assert!(
            used.contains_key(name),
            "params.rs {name} is a uniform of no shader"
        );
    }
}

#[test]
fn shader_constants_match_params_rs() {
    let want: BTreeMap<&str, u32> = BTreeMap::from([
        ("FLAG_OUTLIERS", FLAG_OUTLIERS),
        ("FLAG_ACT_SCALE", FLAG_ACT_SCALE),
        ("FLAG_INT8_ACT", FLAG_INT8_ACT),
        ("FMT_F32", FormatKind::F32 as u32),
        ("FMT_F16", FormatKind::F16 as u32),
        ("FMT_BF16", FormatKind::Bf16 as u32),
        ("FMT_Q8", FormatKind::Q8 as u32),
        ("FMT_Q4", FormatKind::Q4 as u32),
        ("FMT_LUT4", FormatKind::Lut4 as u32),
    ]);
    let mut seen = BTreeMap::new();
    for (file, src) in shaders() {
        for (name, v) in wgsl_u32_consts(&src) {
            if let Some(&w) = want.get(name.as_str()) {
                assert_eq!(v, w, "{file}: {name} = {v}, the Rust side says {w}");
                seen.insert(name, file.clone());
            }
        }
    }
    // Every constant is declared by some shader (else the check is empty).
    for name in want.keys() {
        assert!(
            seen.contains_key(*name),
            "no shader declares {name}: update this test"
        );
    }
}
