//! `discless demo`: what the node does today, end to end, on a synthetic patient.
//!
//! It generates a chest CT and a chest radiograph (the fixtures generator), creates a node in a
//! temporary home, imports both studies, lists them, exports the CT as a CD (DICOM files +
//! DICOMDIR), imports that CD into a second node (a patient's, say) and checks that every file
//! that comes out is byte-identical to what went in. Each step prints what it did and how long it
//! took. `--check` prints the same and exits non-zero on any difference; it is part of the tests.
//!
//! The peer-to-peer journey (pairing, relay, DIMSE) joins this demo as those parts land.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::dicom::{export, import};
use crate::home::Home;
use crate::keystore::{self, Role};
use crate::store::Store;

/// The demo failed at a step.
#[derive(Debug, thiserror::Error)]
#[error("demo step \"{step}\" failed: {reason}")]
pub struct DemoError {
    pub step: &'static str,
    pub reason: String,
}

fn fail<E: std::fmt::Display>(step: &'static str) -> impl FnOnce(E) -> DemoError {
    move |e| DemoError {
        step,
        reason: e.to_string(),
    }
}

fn hashes(files: impl IntoIterator<Item = PathBuf>) -> Result<BTreeSet<String>, std::io::Error> {
    let mut s = BTreeSet::new();
    for f in files {
        let mut h = blake3::Hasher::new();
        h.update_reader(std::fs::File::open(&f)?)?;
        s.insert(h.finalize().to_hex().to_string());
    }
    Ok(s)
}

fn dicom_files(dir: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file() && e.file_name() != "DICOMDIR")
        .map(|e| e.into_path())
        .collect()
}

struct Steps;

impl Steps {
    fn step<T>(
        &mut self,
        what: &str,
        f: impl FnOnce() -> Result<(T, String), DemoError>,
    ) -> Result<T, DemoError> {
        let t = Instant::now();
        let (v, said) = f()?;
        println!(
            "  ✓ {what:<44} {:>7.0} ms   {said}",
            t.elapsed().as_secs_f64() * 1e3
        );
        Ok(v)
    }
}

/// Runs the demo; `keep` keeps the homes and files in that folder instead of a temporary one.
pub fn run(slices: u32, keep: Option<&Path>) -> Result<(), DemoError> {
    let tmp;
    let root = match keep {
        Some(p) => {
            std::fs::create_dir_all(p).map_err(fail("prepare folder"))?;
            p.to_path_buf()
        }
        None => {
            tmp = tempfile::tempdir().map_err(fail("prepare folder"))?;
            tmp.path().to_path_buf()
        }
    };
    let mut s = Steps;
    println!("Discless demo in {}", root.display());
    let modality = root.join("modality");
    let demo = s.step("a modality produces a CT and a radiograph", || {
        let d = discless_fixtures::demo_study(&modality, slices).map_err(fail("generate"))?;
        let n = d.ct.files.len() + d.cr.files.len();
        Ok((d, format!("{n} synthetic instances")))
    })?;
    let passphrase = b"demo passphrase";
    let clinic = s.step("the clinic creates its node", || {
        let home = Home::new(root.join("clinic"));
        let keys = keystore::create(&home.keystore(), passphrase, "Demo Clinic", Role::Clinic)
            .map_err(fail("init clinic"))?;
        let peer = keys.peer_id().to_string();
        let store = Store::open(&home, keys).map_err(fail("open clinic"))?;
        Ok((store, format!("PeerId {}…", &peer[..16.min(peer.len())])))
    })?;
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(4);
    s.step("the clinic imports them (encrypted)", || {
        let r = import::import(&clinic, std::slice::from_ref(&modality), workers, &|_| {})
            .map_err(fail("import"))?;
        if !r.rejected.is_empty() {
            return Err(fail("import")(format!(
                "{} files rejected",
                r.rejected.len()
            )));
        }
        Ok((
            (),
            format!(
                "{} instances, {} studies, {:.1} MB",
                r.imported,
                r.studies.len(),
                r.bytes as f64 / 1e6
            ),
        ))
    })?;
    let ct = s.step("the clinic lists its studies", || {
        let studies = clinic.studies().map_err(fail("list"))?;
        let ct = clinic
            .resolve_study(&demo.ct.study.study_instance_uid)
            .map_err(fail("list"))?;
        let lines: Vec<String> = studies
            .iter()
            .map(|x| {
                format!(
                    "{} {} {}",
                    x.short_id(),
                    x.modalities.join(","),
                    x.study_description
                )
            })
            .collect();
        Ok((ct, lines.join("; ")))
    })?;
    let cd = root.join("cd");
    s.step("the clinic burns a virtual CD (DICOMDIR)", || {
        let r = export::export(
            &clinic,
            &ct,
            &cd,
            export::Options {
                zip: false,
                dicomdir: true,
            },
            &|_, _| {},
        )
        .map_err(fail("export"))?;
        Ok((
            (),
            format!("{} files + DICOMDIR in {}", r.files, cd.display()),
        ))
    })?;
    let patient = s.step("a patient's node reads the CD", || {
        let home = Home::new(root.join("patient"));
        let keys = keystore::create(&home.keystore(), passphrase, "Demo Patient", Role::Patient)
            .map_err(fail("init patient"))?;
        let store = Store::open(&home, keys).map_err(fail("open patient"))?;
        let r = import::import(&store, &[cd.join("DICOMDIR")], workers, &|_| {})
            .map_err(fail("import CD"))?;
        Ok((
            store,
            format!("{} instances imported through the DICOMDIR", r.imported),
        ))
    })?;
    s.step("the patient's copy is byte-identical", || {
        let out = root.join("patient-export");
        export::export(&patient, &ct, &out, export::Options::default(), &|_, _| {})
            .map_err(fail("verify"))?;
        let want = hashes(demo.ct.files.clone()).map_err(fail("verify"))?;
        let got = hashes(dicom_files(&out)).map_err(fail("verify"))?;
        if want != got {
            return Err(fail("verify")(format!(
                "{} of {} files differ",
                want.symmetric_difference(&got).count() / 2,
                want.len()
            )));
        }
        Ok(((), format!("{} files, BLAKE3 equal", want.len())))
    })?;
    s.step("the audit logs verify", || {
        let a = clinic.audit().verify().map_err(fail("audit"))?;
        let b = patient.audit().verify().map_err(fail("audit"))?;
        Ok(((), format!("clinic {a} entries, patient {b} entries")))
    })?;
    println!("Demo complete.");
    Ok(())
}
