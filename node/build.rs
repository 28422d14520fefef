//! Embeds every file under `web/` into the binary (see `src/http/web.rs`).

use std::fmt::Write;
use std::path::Path;

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(root, &p, out);
        } else if let Ok(rel) = p.strip_prefix(root) {
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}

fn main() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("../web");
    println!("cargo:rerun-if-changed={}", web.display());
    let mut files = Vec::new();
    walk(&web, &web, &mut files);
    let mut code = String::from("[\n");
    for f in &files {
        println!("cargo:rerun-if-changed={}", web.join(f).display());
        let _ = writeln!(
            code,
            "    ({f:?}, include_bytes!({:?}) as &[u8]),",
            web.join(f)
                .canonicalize()
                .unwrap_or_else(|_| web.join(f))
                .display()
                .to_string()
        );
    }
    code.push(']');
    let out =
        Path::new(&std::env::var("OUT_DIR").unwrap_or_else(|_| ".".into())).join("web_files.rs");
    let _ = std::fs::write(out, code);
}
