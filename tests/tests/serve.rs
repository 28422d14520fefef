//! `discless serve`: DICOMweb with a real third-party client, the CLI beside a running server,
//! graceful shutdown.

use std::path::Path;

use anyhow::Result;
use discless_fixtures::{self as fx, Encoding, Patient, SeriesSpec, StudySpec};
use discless_tests::{dicom_hashes, python_with, workspace_root, Node};

/// `GET url` through curl, with `Accept: accept` when given: the status code and the body.
fn get(url: &str, accept: Option<&str>) -> Result<(String, Vec<u8>)> {
    let mut curl = std::process::Command::new("curl");
    curl.args(["-s", "-w", "\n%{http_code}"]);
    if let Some(a) = accept {
        curl.args(["-H", &format!("Accept: {a}")]);
    }
    let out = curl.arg(url).output()?.stdout;
    let split = out.iter().rposition(|b| *b == b'\n').unwrap_or(0);
    let status = String::from_utf8_lossy(&out[split + 1..]).to_string();
    Ok((status, out[..split].to_vec()))
}

/// The DICOMweb URL of the first frame of `instance` (an entry of `show --json`), rendered.
fn rendered_url(
    base: &str,
    study: &str,
    series: &serde_json::Value,
    instance: &serde_json::Value,
) -> String {
    format!(
        "{base}/dicomweb/studies/{study}/series/{}/instances/{}/frames/1/rendered",
        series["series_instance_uid"].as_str().unwrap_or(""),
        instance["sop_instance_uid"].as_str().unwrap_or("")
    )
}

fn patient(name: &str, id: &str) -> Patient {
    Patient {
        name: name.into(),
        id: id.into(),
        ..Patient::default()
    }
}

/// The study the DICOMweb checks expect: DICOMWEB^TEST, DW-1, 2024-01-15, CT + MR.
fn dicomweb_study(dir: &Path) -> Result<()> {
    let study = StudySpec {
        patient: patient("DICOMWEB^TEST", "DW-1"),
        study_instance_uid: fx::uid("tests/dicomweb/main"),
        ..StudySpec::default()
    };
    fx::ct_series(
        dir,
        &study,
        &SeriesSpec::new(&study.study_instance_uid, 1, "CT"),
        5,
        64,
        64,
    )?;
    let mr = SeriesSpec {
        encoding: Encoding::ImplicitVrLittleEndian,
        ..SeriesSpec::new(&study.study_instance_uid, 2, "MR")
    };
    fx::mr_series(dir, &study, &mr, 3, 48, 48)?;
    Ok(())
}

#[test]
fn dicomweb_client_searches_retrieves_and_stores() -> Result<()> {
    let Some(python) = python_with("dicomweb_client") else {
        return Ok(());
    };
    let work = tempfile::tempdir()?;
    let src = work.path().join("src");
    dicomweb_study(&src)?;
    let other = work.path().join("other");
    let st = StudySpec {
        patient: patient("OTHER^PATIENT", "OT-9"),
        study_instance_uid: fx::uid("tests/dicomweb/other"),
        study_date: "20230301".into(),
        ..StudySpec::default()
    };
    fx::cr_image(
        &other,
        &st,
        &SeriesSpec::new(&st.study_instance_uid, 1, "CR"),
        64,
        64,
    )?;
    let stow = work.path().join("stow");
    let st2 = StudySpec {
        patient: patient("STOWED^VIA^WEB", "ST-2"),
        study_instance_uid: fx::uid("tests/dicomweb/stow"),
        ..StudySpec::default()
    };
    fx::ct_series(
        &stow,
        &st2,
        &SeriesSpec::new(&st2.study_instance_uid, 1, "CT"),
        3,
        32,
        32,
    )?;

    let node = Node::init("clinic")?;
    let (code, _) = node.import(&[&src, &other])?;
    assert_eq!(code, 0);
    let served = node.serve(&[])?;
    let out = std::process::Command::new(python)
        .arg(workspace_root().join("tests/dicomweb/check.py"))
        .args(["--url", &format!("{}/dicomweb", served.url)])
        .arg("--src")
        .arg(&src)
        .arg("--stow")
        .arg(&stow)
        .output()?;
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("{report}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "dicomweb-client checks failed:\n{report}"
    );
    drop(served);
    // What STOW stored is byte-identical when exported.
    let exported = work.path().join("exported");
    let o = node.run(&[
        "export",
        &fx::uid("tests/dicomweb/stow"),
        exported.to_str().unwrap_or(""),
    ])?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(dicom_hashes(&exported)?.len(), 3);
    Ok(())
}

#[test]
fn the_cli_works_on_a_home_that_is_being_served_and_serve_stops_cleanly() -> Result<()> {
    let work = tempfile::tempdir()?;
    let src = work.path().join("src");
    dicomweb_study(&src)?;
    let node = Node::init("doctor")?;
    let mut served = node.serve(&[])?;

    // Import, list, show, export, audit: all through the running server.
    let (code, r) = node.import(&[&src])?;
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["imported"], 8);
    let studies = node.studies()?;
    assert_eq!(studies.len(), 1);
    assert_eq!(studies[0]["patient_name"], "DICOMWEB^TEST");
    let out = work.path().join("out");
    // A relative output path is resolved against the CLI's directory, not the server's.
    let o = node
        .cmd(&[
            "export",
            studies[0]["short_id"].as_str().unwrap_or(""),
            "out",
        ])
        .current_dir(work.path())
        .output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(dicom_hashes(&out)?, dicom_hashes(&src)?);
    let audit = node.json(&["audit", "--verify", "--json"])?;
    assert_eq!(audit["verified"], true);
    // Errors keep their exit codes through the server.
    let o = node.run(&["show", "no-such-study"])?;
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no study matches"));
    // And a wrong passphrase is still refused before anything reaches the server.
    let mut wrong = node.cmd(&["studies"]);
    wrong.env("DISCLESS_PASSPHRASE", "wrong");
    let o = wrong.output()?;
    assert_eq!(o.status.code(), Some(2));

    // The control API needs the token even on loopback.
    let resp = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
        .arg(format!("{}/api/control/run", served.url))
        .args([
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"args":["studies"],"cwd":"/"}"#,
        ])
        .output()?;
    assert_eq!(String::from_utf8_lossy(&resp.stdout), "401");

    let status = served.terminate()?;
    assert!(status.success(), "serve exited with {status}");
    assert!(!node.home().join("serve.json").exists());
    // After shutdown the store opens directly again.
    assert_eq!(node.studies()?.len(), 1);
    Ok(())
}

/// A frame whose JPEG stream is broken answers 422 with a JSON error and the server goes on;
/// 12-bit lossy JPEG renders when the binary has the `gdcm` feature (the test command builds it
/// so), else it is refused with 501.
#[test]
fn an_undecodable_frame_is_a_clean_json_error_and_the_server_stays_up() -> Result<()> {
    let Some(corpus) = discless_tests::corpus() else {
        eprintln!("SKIPPED: ../shared/corpus is not present");
        return Ok(());
    };
    // CT1 as JPEG lossless with its stream's SOI marker overwritten: it imports (import does
    // not decode pixels) but cannot be decoded.
    let work = tempfile::tempdir()?;
    let mut broken = std::fs::read(corpus.join("wg04/JPLL/CT1_JPLL"))?;
    let soi = broken
        .windows(3)
        .position(|w| w == [0xFF, 0xD8, 0xFF])
        .ok_or_else(|| anyhow::anyhow!("no JPEG stream in CT1_JPLL"))?;
    broken[soi..soi + 2].copy_from_slice(&[0, 0]);
    let broken_path = work.path().join("CT1_JPLL_broken");
    std::fs::write(&broken_path, &broken)?;
    let node = Node::init("doctor")?;
    let (code, r) = node.import(&[
        &corpus.join("wg04/JPLY/MR1_JPLY"),
        &corpus.join("wg04/REF/MR1_UNC"),
        &broken_path,
    ])?;
    assert_eq!(code, 0, "{r}");
    let served = node.serve(&[])?;
    let (mut broken_seen, mut jpeg12_seen) = (0, 0);
    for study in r["studies"].as_array().cloned().unwrap_or_default() {
        let show = node.json(&["show", study.as_str().unwrap_or(""), "--json"])?;
        let study = show["study_instance_uid"].as_str().unwrap_or("");
        for series in show["series"].as_array().cloned().unwrap_or_default() {
            for i in series["instances"].as_array().cloned().unwrap_or_default() {
                let (status, body) = get(&rendered_url(&served.url, study, &series, &i), None)?;
                let body = String::from_utf8_lossy(&body).to_string();
                let error = || -> Result<String> {
                    let v: serde_json::Value = serde_json::from_str(&body)?;
                    Ok(v["error"].as_str().unwrap_or_default().to_string())
                };
                match i["transfer_syntax_uid"].as_str() {
                    Some("1.2.840.10008.1.2.4.70") => {
                        assert_eq!(status, "422", "{body}");
                        assert!(error()?.contains("could not decode pixel data"), "{body}");
                        broken_seen += 1;
                    }
                    Some("1.2.840.10008.1.2.4.51") if !discless::FEATURES.contains(&"gdcm") => {
                        assert_eq!(status, "501", "{body}");
                        assert!(error()?.contains("needs GDCM"), "{body}");
                        jpeg12_seen += 1;
                    }
                    Some("1.2.840.10008.1.2.4.51") => {
                        assert_eq!(status, "200", "{body}");
                        jpeg12_seen += 1;
                    }
                    _ => assert_eq!(status, "200", "{body}"),
                }
            }
        }
    }
    assert_eq!((broken_seen, jpeg12_seen), (1, 1), "{r}");
    // Still serving.
    assert_eq!(node.studies()?.len(), 2);
    Ok(())
}

/// The binary under test renders JPEG-LS exactly like the uncompressed original when it has the
/// `gdcm` feature (the test command builds it so), and refuses it cleanly (501) without.
#[test]
fn jpeg_ls_renders_like_its_uncompressed_original_or_is_refused_cleanly() -> Result<()> {
    let Some(dcmcjpls) = discless_tests::require_tool("/usr/bin/dcmcjpls") else {
        return Ok(());
    };
    let work = tempfile::tempdir()?;
    let study = StudySpec {
        study_instance_uid: fx::uid("tests/serve/jpeg-ls"),
        ..StudySpec::default()
    };
    let files = fx::ct_series(
        &work.path().join("plain"),
        &study,
        &SeriesSpec::new(&study.study_instance_uid, 1, "CT"),
        1,
        128,
        128,
    )?;
    let jls_dir = work.path().join("jls");
    std::fs::create_dir_all(&jls_dir)?;
    let jls = jls_dir.join("slice.dcm");
    let status = std::process::Command::new(dcmcjpls)
        .arg(&files[0])
        .arg(&jls)
        .status()?;
    assert!(status.success(), "dcmcjpls failed");
    // One node per encoding: both carry the same SOP Instance UID.
    let rendered = |dir: &Path| -> Result<(String, Vec<u8>)> {
        let node = Node::init("doctor")?;
        let (code, r) = node.import(&[dir])?;
        assert_eq!(code, 0, "{r}");
        let show = node.json(&["show", &study.study_instance_uid, "--json"])?;
        let series = &show["series"][0];
        let served = node.serve(&[])?;
        let url = rendered_url(
            &served.url,
            &study.study_instance_uid,
            series,
            &series["instances"][0],
        );
        get(&url, Some("image/png"))
    };
    let (plain_status, plain_png) = rendered(&work.path().join("plain"))?;
    assert_eq!(plain_status, "200");
    let (jls_status, jls_body) = rendered(&jls_dir)?;
    if discless::FEATURES.contains(&"gdcm") {
        assert_eq!(jls_status, "200", "{}", String::from_utf8_lossy(&jls_body));
        assert!(jls_body == plain_png, "JPEG-LS rendered other pixels");
    } else {
        assert_eq!(jls_status, "501", "{}", String::from_utf8_lossy(&jls_body));
        let v: serde_json::Value = serde_json::from_slice(&jls_body)?;
        assert!(
            v["error"]
                .as_str()
                .is_some_and(|e| e.contains("JPEG-LS needs GDCM")),
            "{v}"
        );
    }
    Ok(())
}

/// Where `needle` first occurs in `hay` at or after `from`.
fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// The bodies of the parts of a `multipart/related` body (the boundary read from its first
/// line).
fn multipart_parts(body: &[u8]) -> Result<Vec<Vec<u8>>> {
    let first = find(body, b"\r\n", 0).ok_or_else(|| anyhow::anyhow!("no first line"))?;
    let delimiter = [b"\r\n", &body[..first]].concat();
    let mut parts = Vec::new();
    let mut at = first + 2;
    loop {
        let headers_end =
            find(body, b"\r\n\r\n", at).ok_or_else(|| anyhow::anyhow!("part without headers"))?;
        let start = headers_end + 4;
        let end =
            find(body, &delimiter, start).ok_or_else(|| anyhow::anyhow!("part without an end"))?;
        parts.push(body[start..end].to_vec());
        let after = end + delimiter.len();
        match body.get(after..after + 2) {
            Some(b"--") => return Ok(parts),
            Some(b"\r\n") => at = after + 2,
            other => anyhow::bail!("unexpected bytes after a part: {other:?}"),
        }
    }
}

/// WADO-RS hands back every instance's original bytes, both the small ones it sends whole and
/// one over 8 MiB that it streams chunk by chunk.
#[test]
fn wado_study_retrieval_gives_small_and_large_instances_byte_for_byte() -> Result<()> {
    let work = tempfile::tempdir()?;
    let src = work.path().join("src");
    let study = StudySpec {
        patient: patient("WADO^LARGE", "WL-1"),
        study_instance_uid: fx::uid("tests/wado/large"),
        ..StudySpec::default()
    };
    fx::ct_series(
        &src,
        &study,
        &SeriesSpec::new(&study.study_instance_uid, 1, "CT"),
        2,
        64,
        64,
    )?;
    let large = fx::cr_image(
        &src,
        &study,
        &SeriesSpec::new(&study.study_instance_uid, 2, "CR"),
        2100,
        2100,
    )?;
    assert!(std::fs::metadata(&large)?.len() > 8 << 20);
    let node = Node::init("clinic")?;
    let (code, _) = node.import(&[&src])?;
    assert_eq!(code, 0);
    let served = node.serve(&[])?;
    let (status, body) = get(
        &format!(
            "{}/dicomweb/studies/{}",
            served.url, study.study_instance_uid
        ),
        Some("multipart/related; type=\"application/dicom\""),
    )?;
    assert_eq!(status, "200");
    let retrieved: std::collections::BTreeSet<String> = multipart_parts(&body)?
        .iter()
        .map(|p| blake3::hash(p).to_hex().to_string())
        .collect();
    assert_eq!(retrieved.len(), 3);
    assert_eq!(retrieved, dicom_hashes(&src)?);
    Ok(())
}
