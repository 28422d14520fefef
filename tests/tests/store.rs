//! End-to-end tests of the node foundation, through the `discless` binary.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Result;
use discless_fixtures::{self as fx, Encoding, Patient, SeriesSpec, StudySpec};
use discless_tests::{content_hashes, corpus, dicom_hashes, file_contains, require_tool, Node};

/// A small study of all three kinds in both encodings: CT explicit, MR implicit, CR explicit.
fn write_fixtures(dir: &Path, patient_name: &str) -> Result<StudySpec> {
    let study = StudySpec {
        patient: Patient {
            name: patient_name.into(),
            id: "PID-4711".into(),
            ..Patient::default()
        },
        study_instance_uid: fx::uid(&format!("tests/{patient_name}")),
        ..StudySpec::default()
    };
    let ct = SeriesSpec::new(&study.study_instance_uid, 1, "CT AXIAL");
    fx::ct_series(dir, &study, &ct, 6, 128, 128)?;
    let mr = SeriesSpec {
        encoding: Encoding::ImplicitVrLittleEndian,
        ..SeriesSpec::new(&study.study_instance_uid, 2, "MR T2")
    };
    fx::mr_series(dir, &study, &mr, 4, 96, 96)?;
    let cr = SeriesSpec::new(&study.study_instance_uid, 3, "CR CHEST");
    fx::cr_image(dir, &study, &cr, 256, 200)?;
    Ok(study)
}

fn export_all(node: &Node, out: &Path, extra: &[&str]) -> Result<()> {
    for s in node.studies()? {
        let id = s["study_instance_uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let dest = out.join(s["short_id"].as_str().unwrap_or("x"));
        let mut args = vec!["export", id.as_str()];
        let d = dest.display().to_string();
        args.push(&d);
        args.extend_from_slice(extra);
        let o = node.run(&args)?;
        assert!(
            o.status.success(),
            "export {id} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(())
}

#[test]
fn import_then_export_is_byte_exact_for_generated_fixtures() -> Result<()> {
    let src = tempfile::tempdir()?;
    let study = write_fixtures(src.path(), "ROUNDTRIP^ALICE")?;
    let node = Node::init("clinic")?;
    let (code, report) = node.import(&[src.path()])?;
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["imported"], 11);
    assert_eq!(report["duplicates"], 0);
    assert_eq!(report["rejected"].as_array().map(Vec::len), Some(0));
    assert_eq!(report["studies"][0], study.study_instance_uid.as_str());

    let studies = node.studies()?;
    assert_eq!(studies.len(), 1);
    let s = &studies[0];
    assert_eq!(s["patient_name"], "ROUNDTRIP^ALICE");
    assert_eq!(s["patient_id"], "PID-4711");
    assert_eq!(s["series_count"], 3);
    assert_eq!(s["instance_count"], 11);
    assert_eq!(s["modalities"], serde_json::json!(["CR", "CT", "MR"]));

    // `show` by short id gives series and instances with the indexed attributes.
    let show = node.json(&["show", s["short_id"].as_str().unwrap_or(""), "--json"])?;
    let series = show["series"].as_array().cloned().unwrap_or_default();
    assert_eq!(series.len(), 3);
    let mr = &series[1];
    assert_eq!(mr["modality"], "MR");
    assert_eq!(
        mr["instances"][0]["transfer_syntax_uid"],
        "1.2.840.10008.1.2"
    );
    assert_eq!(mr["instances"][0]["rows"], 96);

    let out = tempfile::tempdir()?;
    export_all(&node, out.path(), &[])?;
    assert_eq!(dicom_hashes(out.path())?, dicom_hashes(src.path())?);

    // Importing the same files again stores nothing new.
    let (code, again) = node.import(&[src.path()])?;
    assert_eq!(code, 0);
    assert_eq!(again["imported"], 0);
    assert_eq!(again["duplicates"], 11);
    assert_eq!(node.studies()?[0]["instance_count"], 11);
    Ok(())
}

#[test]
fn dicomdir_and_zip_exports_import_back_byte_exact() -> Result<()> {
    let src = tempfile::tempdir()?;
    write_fixtures(src.path(), "ROUTES^BOB")?;
    let expected = dicom_hashes(src.path())?;
    let node = Node::init("clinic")?;
    node.import(&[src.path()])?;
    let uid = node.studies()?[0]["study_instance_uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let work = tempfile::tempdir()?;

    // CD layout: DICOM/... + DICOMDIR, read by dcmtk, imported back through the DICOMDIR.
    let cd = work.path().join("cd");
    let o = node.run(&["export", &uid, &cd.display().to_string(), "--dicomdir"])?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(cd.join("DICOMDIR").is_file());
    assert!(cd.join("DICOM").is_dir());
    if let Some(dcmdump) = require_tool("/usr/bin/dcmdump") {
        let d = std::process::Command::new(dcmdump)
            .arg(cd.join("DICOMDIR"))
            .output()?;
        let text =
            String::from_utf8_lossy(&d.stdout).to_string() + &String::from_utf8_lossy(&d.stderr);
        assert!(d.status.success(), "dcmdump failed: {text}");
        assert!(text.contains("DirectoryRecordSequence"), "{text}");
        assert!(text.matches("IMAGE").count() >= 11, "{text}");
    }
    let back = Node::init("patient")?;
    let (code, r) = back.import(&[&cd.join("DICOMDIR")])?;
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["imported"], 11);
    let out = work.path().join("from-cd");
    export_all(&back, &out, &[])?;
    assert_eq!(dicom_hashes(&out)?, expected);

    // ZIP (with a DICOMDIR inside it, as a zipped CD): imported back whole.
    let zip_path = work.path().join("study.zip");
    let o = node.run(&[
        "export",
        &uid,
        &zip_path.display().to_string(),
        "--zip",
        "--dicomdir",
    ])?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let third = Node::init("doctor")?;
    let (code, r) = third.import(&[&zip_path])?;
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["imported"], 11);
    let out = work.path().join("from-zip");
    export_all(&third, &out, &[])?;
    assert_eq!(dicom_hashes(&out)?, expected);
    Ok(())
}

#[test]
fn every_corpus_file_round_trips_byte_exact_through_folder_dicomdir_and_zip() -> Result<()> {
    let Some(corpus) = corpus() else {
        eprintln!("SKIPPED: ../shared/corpus is not present");
        return Ok(());
    };
    let expected = dicom_hashes(&corpus)?;
    let node = Node::init("clinic")?;
    let (code, r) = node.import(&[&corpus])?;
    // README.md and LICENSE.txt are not DICOM: rejected by name, everything else imported.
    assert_eq!(code, 1, "{r}");
    for x in r["rejected"].as_array().cloned().unwrap_or_default() {
        let p = x["path"].as_str().unwrap_or_default();
        assert!(
            p.ends_with(".md") || p.ends_with(".txt"),
            "unexpected rejection {x}"
        );
    }
    let work = tempfile::tempdir()?;
    export_all(&node, &work.path().join("plain"), &[])?;
    assert_eq!(dicom_hashes(&work.path().join("plain"))?, expected);

    // Every study as a CD and as a ZIP, imported into fresh nodes, exported again.
    export_all(&node, &work.path().join("cd"), &["--dicomdir"])?;
    let cd_node = Node::init("patient")?;
    let dirs: Vec<_> = std::fs::read_dir(work.path().join("cd"))?
        .filter_map(|e| e.ok().map(|e| e.path().join("DICOMDIR")))
        .collect();
    let refs: Vec<&Path> = dirs.iter().map(|p| p.as_path()).collect();
    let (code, r) = cd_node.import(&refs)?;
    assert_eq!(code, 0, "{r}");
    export_all(&cd_node, &work.path().join("cd-back"), &[])?;
    assert_eq!(dicom_hashes(&work.path().join("cd-back"))?, expected);

    let zips = work.path().join("zips");
    std::fs::create_dir_all(&zips)?;
    for s in node.studies()? {
        let id = s["study_instance_uid"].as_str().unwrap_or_default();
        let z = zips.join(format!("{}.zip", s["short_id"].as_str().unwrap_or("x")));
        let o = node.run(&["export", id, &z.display().to_string(), "--zip"])?;
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let zip_node = Node::init("doctor")?;
    let (code, r) = zip_node.import(&[&zips])?;
    assert_eq!(code, 0, "{r}");
    export_all(&zip_node, &work.path().join("zip-back"), &[])?;
    assert_eq!(dicom_hashes(&work.path().join("zip-back"))?, expected);
    Ok(())
}

#[test]
fn nothing_under_the_home_holds_the_patient_name_or_pixels_in_clear() -> Result<()> {
    let src = tempfile::tempdir()?;
    let name = "ZEBRAFINCH^QUENTIN";
    let study = write_fixtures(src.path(), name)?;
    // The fixtures really do carry both in clear, or this test would prove nothing.
    let any = walkdir::WalkDir::new(src.path())
        .into_iter()
        .filter_map(Result::ok)
        .find(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .unwrap_or_default();
    assert!(file_contains(&any, name.as_bytes())?);
    assert!(file_contains(&any, &fx::MARKER)?);

    let node = Node::init("patient")?;
    let (code, _) = node.import(&[src.path()])?;
    assert_eq!(code, 0);
    let out = tempfile::tempdir()?;
    export_all(&node, out.path(), &[])?; // touches the export path and the audit log too
    let needles: [&[u8]; 5] = [
        name.as_bytes(),
        b"ZEBRAFINCH",
        &fx::MARKER,
        study.study_instance_uid.as_bytes(),
        b"PID-4711",
    ];
    let mut files = 0;
    for e in walkdir::WalkDir::new(node.home()) {
        let e = e?;
        if e.file_type().is_file() {
            files += 1;
            for n in needles {
                assert!(
                    !file_contains(e.path(), n)?,
                    "{} contains {:?} in clear",
                    e.path().display(),
                    String::from_utf8_lossy(n)
                );
            }
        }
    }
    assert!(files > 11, "expected blobs and index files, found {files}");
    Ok(())
}

#[test]
fn wrong_passphrase_exits_2_and_changes_nothing() -> Result<()> {
    let src = tempfile::tempdir()?;
    write_fixtures(src.path(), "LOCKED^OUT")?;
    let mut node = Node::init("patient")?;
    node.import(&[src.path()])?;
    let before = content_hashes(&node.home())?;
    let right = std::mem::replace(&mut node.passphrase, "not the passphrase".into());
    for args in [
        vec!["studies"],
        vec!["import", src.path().to_str().unwrap_or_default()],
        vec!["audit", "--verify"],
    ] {
        let o = node.run(&args)?;
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("wrong passphrase"), "{args:?}: {err}");
    }
    assert_eq!(content_hashes(&node.home())?, before);
    node.passphrase = right;
    assert_eq!(node.studies()?.len(), 1);
    // init refuses an existing home, also with exit 2.
    let o = node.run(&["init"])?;
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
    Ok(())
}

#[test]
fn a_flipped_bit_in_a_stored_blob_is_named_on_export() -> Result<()> {
    let src = tempfile::tempdir()?;
    write_fixtures(src.path(), "BITFLIP^CAROL")?;
    let node = Node::init("clinic")?;
    node.import(&[src.path()])?;
    let show = node.json(&[
        "show",
        node.studies()?[0]["short_id"].as_str().unwrap_or(""),
        "--json",
    ])?;
    let victim = &show["series"][0]["instances"][2];
    let blob_id = victim["blob_id"].as_str().unwrap_or_default();
    let sop = victim["sop_instance_uid"].as_str().unwrap_or_default();
    let path = node.home().join("blobs").join(&blob_id[..2]).join(blob_id);
    let mut bytes = std::fs::read(&path)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x08;
    std::fs::write(&path, bytes)?;

    let out = tempfile::tempdir()?;
    let dest = out.path().join("x");
    let o = node.run(&[
        "export",
        show["study_instance_uid"].as_str().unwrap_or(""),
        dest.to_str().unwrap_or(""),
    ])?;
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(sop), "error does not name the instance: {err}");
    assert!(err.contains("corrupted or was tampered"), "{err}");
    // Nothing half-written under a final name: only whole, verified files.
    for e in walkdir::WalkDir::new(&dest)
        .into_iter()
        .filter_map(Result::ok)
    {
        let name = e.file_name().to_string_lossy();
        assert!(!name.ends_with(".part"), "left {name} behind");
        assert!(!name.contains(sop), "wrote the corrupted instance");
    }
    Ok(())
}

#[test]
fn bad_files_are_listed_with_reasons_and_the_rest_imports() -> Result<()> {
    let src = tempfile::tempdir()?;
    write_fixtures(src.path(), "MIXED^DAVE")?;
    let good = std::fs::read(src.path().join("1/0001.dcm"))?;
    let bad = src.path().join("bad");
    std::fs::create_dir_all(&bad)?;
    std::fs::write(
        bad.join("notes.txt"),
        "Patient called, will bring the CD on Monday.\n",
    )?;
    std::fs::write(bad.join("truncated.dcm"), &good[..good.len() * 2 / 3])?;
    let mut garbage = good[..132].to_vec();
    garbage.extend((0..4000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    std::fs::write(bad.join("garbage.dcm"), garbage)?;
    std::fs::write(bad.join("empty.dcm"), b"")?;

    let node = Node::init("clinic")?;
    let (code, r) = node.import(&[src.path()])?;
    assert_eq!(code, 1, "{r}");
    assert_eq!(r["imported"], 11, "{r}");
    let rejected = r["rejected"].as_array().cloned().unwrap_or_default();
    let reason = |file: &str| {
        rejected
            .iter()
            .find(|x| x["path"].as_str().is_some_and(|p| p.ends_with(file)))
            .and_then(|x| x["reason"].as_str().map(str::to_owned))
    };
    assert_eq!(rejected.len(), 4, "{r}");
    assert!(
        reason("notes.txt").is_some_and(|r| r.contains("not a DICOM file")),
        "{r}"
    );
    assert!(
        reason("truncated.dcm").is_some_and(|r| r.contains("broken DICOM file")),
        "{r}"
    );
    assert!(
        reason("garbage.dcm").is_some_and(|r| r.contains("broken DICOM file")),
        "{r}"
    );
    assert!(
        reason("empty.dcm").is_some_and(|r| r.contains("empty")),
        "{r}"
    );
    assert_eq!(node.studies()?[0]["instance_count"], 11);

    // A missing path is reported too, and the human output names the files, also on a fresh
    // node that has never stored a blob.
    let fresh = Node::init("patient")?;
    let (code, r) = fresh.import(&[Path::new("/nonexistent/discless-test")])?;
    assert_eq!(code, 1, "{r}");
    assert_eq!(r["imported"], 0);
    let o = node.run(&["import", "/nonexistent/discless-test"])?;
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("no such file or directory"));
    Ok(())
}

#[test]
fn the_audit_log_records_imports_and_exports_and_detects_tampering() -> Result<()> {
    let src = tempfile::tempdir()?;
    write_fixtures(src.path(), "AUDIT^ERIN")?;
    let node = Node::init("clinic")?;
    node.import(&[src.path()])?;
    let out = tempfile::tempdir()?;
    export_all(&node, out.path(), &[])?;
    let log = node.json(&["audit", "--verify", "--json"])?;
    assert_eq!(log["verified"], true, "{log}");
    let actions: Vec<&str> = log["entries"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["action"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(actions, ["init", "import", "export"]);

    // Delete the middle entry directly in sled (what an intruder with disk access could do).
    {
        let db = sled::open(node.home().join("index"))?;
        let tree = db.open_tree("index")?;
        let mut key = b"a/".to_vec();
        key.extend_from_slice(&2u64.to_be_bytes());
        assert!(tree.remove(key)?.is_some());
        db.flush()?;
    }
    let o = node.run(&["audit", "--verify"])?;
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("entry 2 is missing"));

    // Edit (flip a bit of) an entry in another node's log.
    let other = Node::init("clinic")?;
    other.import(&[src.path()])?;
    {
        let db = sled::open(other.home().join("index"))?;
        let tree = db.open_tree("index")?;
        let mut key = b"a/".to_vec();
        key.extend_from_slice(&2u64.to_be_bytes());
        let mut v = tree.get(&key)?.map(|v| v.to_vec()).unwrap_or_default();
        let last = v.len() - 1;
        v[last] ^= 1;
        tree.insert(key, v)?;
        db.flush()?;
    }
    let o = other.run(&["audit", "--verify", "--json"])?;
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    assert_eq!(v["verified"], false);
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("entry 2 was altered")),
        "{v}"
    );
    Ok(())
}

#[test]
fn kill_9_during_import_then_rerun_completes_without_duplicates() -> Result<()> {
    let src = tempfile::tempdir()?;
    let study = StudySpec {
        study_instance_uid: fx::uid("tests/kill9"),
        ..StudySpec::default()
    };
    let series = SeriesSpec::new(&study.study_instance_uid, 1, "CT KILL");
    let n = 400;
    fx::ct_series(src.path(), &study, &series, n, 256, 256)?;
    let node = Node::init("clinic")?;
    let blobs = node.home().join("blobs");
    let count_blobs = || {
        walkdir::WalkDir::new(&blobs)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_file())
            .count()
    };
    let mut child = node
        .cmd(&["import", "--json", src.path().to_str().unwrap_or_default()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    // Wait until sealing is well under way, then kill -9.
    let start = std::time::Instant::now();
    let mut killed_at = 0;
    while start.elapsed() < std::time::Duration::from_secs(120) {
        let c = count_blobs();
        if c >= (n as usize) / 4 {
            child.kill()?; // SIGKILL
            killed_at = c;
            break;
        }
        if child.try_wait()?.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let status = child.wait()?;
    assert!(
        killed_at > 0 && !status.success(),
        "import finished before it could be killed"
    );

    // The store opens; the study is absent or complete, never partial.
    let studies = node.studies()?;
    assert!(
        studies.is_empty() || studies[0]["instance_count"] == n,
        "half-visible study after kill: {studies:?}"
    );
    // Re-running completes it and reuses what was sealed.
    let (code, r) = node.import(&[src.path()])?;
    assert_eq!(code, 0, "{r}");
    let studies = node.studies()?;
    assert_eq!(studies.len(), 1);
    assert_eq!(studies[0]["instance_count"], n);
    let show = node.json(&[
        "show",
        studies[0]["short_id"].as_str().unwrap_or(""),
        "--json",
    ])?;
    let sops: BTreeSet<String> = show["series"][0]["instances"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["sop_instance_uid"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(sops.len(), n as usize);
    let out = tempfile::tempdir()?;
    export_all(&node, out.path(), &[])?;
    assert_eq!(dicom_hashes(out.path())?, dicom_hashes(src.path())?);
    let info = node.json(&["info", "--json"])?;
    assert_eq!(info["pending_instances"], 0, "{info}");
    Ok(())
}
