//! Writes the seed corpora into fuzz/corpus/<target>/ (run from the fuzz directory; the files are
//! committed, so this is only needed when an input encoding changes).

// Built with the fuzz targets' coverage instrumentation, so it needs libFuzzer's runtime linked
// in (its `main` is not used: this file defines one).
use libfuzzer_sys as _;

fn main() -> std::io::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, seeds) in flint_fuzz::seeds::all() {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        for (name, bytes) in seeds {
            std::fs::write(dir.join(name), bytes)?;
        }
        println!("{target}: seeds written to {}", dir.display());
    }
    Ok(())
}
