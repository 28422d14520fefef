//! The demo's last check: what the doctor exports is what the modality sent.
//!
//! Over DICOM the modality sends data sets, not files; the node that receives them writes the
//! file meta group (preamble, `DICM`, group 0002) itself. So the comparison is of the data set
//! bytes after the meta group, which is what bit-preserving receivers such as dcmtk's
//! `storescp +B` keep too.

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::dimse::scu::data_set_offset;

/// How much of a file's head is read to find the end of its meta group.
const HEAD: usize = 64 * 1024;

/// BLAKE3 of the data set of one Part-10 file, read in bounded memory.
fn data_set_hash(path: &Path) -> Result<String, String> {
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut f = std::fs::File::open(path).map_err(err)?;
    let mut head = Vec::with_capacity(HEAD);
    (&mut f)
        .take(HEAD as u64)
        .read_to_end(&mut head)
        .map_err(err)?;
    let offset = data_set_offset(&head)
        .ok_or_else(|| format!("{} is not a DICOM Part-10 file", path.display()))?;
    f.seek(SeekFrom::Start(offset as u64)).map_err(err)?;
    let mut h = blake3::Hasher::new();
    h.update_reader(&mut f).map_err(err)?;
    Ok(h.finalize().to_hex().to_string())
}

/// Checks that the DICOM files under `exported` (DICOMDIR aside) hold exactly the data sets of
/// `sent`; returns how many matched.
pub(crate) fn same_data_sets(sent: &[PathBuf], exported: &Path) -> Result<usize, String> {
    let want: BTreeSet<String> = sent
        .iter()
        .map(|p| data_set_hash(p))
        .collect::<Result<_, _>>()?;
    let mut got = BTreeSet::new();
    for e in walkdir::WalkDir::new(exported) {
        let e = e.map_err(|e| e.to_string())?;
        if e.file_type().is_file() && !e.file_name().eq_ignore_ascii_case("DICOMDIR") {
            got.insert(data_set_hash(e.path())?);
        }
    }
    if want != got {
        return Err(format!(
            "{} of {} sent data sets are missing or different in {} ({} files there)",
            want.difference(&got).count(),
            want.len(),
            exported.display(),
            got.len()
        ));
    }
    Ok(want.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_byte_in_a_data_set_is_caught_and_a_different_meta_group_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let study = discless_fixtures::StudySpec::default();
        let series = discless_fixtures::SeriesSpec::new(&study.study_instance_uid, 1, "V");
        let files = discless_fixtures::ct_series(&dir.path().join("a"), &study, &series, 2, 16, 16)
            .unwrap();
        let copy = dir.path().join("b");
        std::fs::create_dir_all(&copy).unwrap();
        for (i, f) in files.iter().enumerate() {
            let mut bytes = std::fs::read(f).unwrap();
            // The preamble belongs to the file, not the data set: a receiver may write another.
            bytes[0] = 0x55;
            std::fs::write(copy.join(format!("{i}.dcm")), bytes).unwrap();
        }
        std::fs::write(copy.join("DICOMDIR"), b"ignored").unwrap();
        assert_eq!(same_data_sets(&files, &copy).unwrap(), 2);

        let victim = copy.join("1.dcm");
        let mut bytes = std::fs::read(&victim).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&victim, bytes).unwrap();
        let e = same_data_sets(&files, &copy).unwrap_err();
        assert!(e.contains("1 of 2"), "{e}");
    }
}
