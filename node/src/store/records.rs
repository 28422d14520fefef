//! The records the index keeps, each sealed under the storage key in its own slot.

use serde::{Deserialize, Serialize};

/// Attributes of one stored instance, as indexed at import, with where its bytes are.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InstanceRecord {
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub transfer_syntax_uid: String,
    pub instance_number: Option<i64>,
    pub rows: Option<u32>,
    pub columns: Option<u32>,
    pub number_of_frames: Option<u32>,
    pub series_number: Option<i64>,
    pub series_description: String,
    pub modality: String,
    pub body_part_examined: String,
    /// Size of the original file.
    pub size: u64,
    /// BLAKE3 of the original file, hex.
    pub plaintext_hash: String,
    /// BLAKE3 of the sealed blob, hex: its name in `blobs/`.
    pub blob_id: String,
    pub imported_unix: u64,
    /// What a viewer needs to place and window the image, indexed at import.
    #[serde(default)]
    pub image: ImageAttributes,
}

/// Geometry and display attributes of an image instance (empty for non-images).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ImageAttributes {
    pub image_position_patient: Option<Vec<f64>>,
    pub slice_location: Option<f64>,
    pub pixel_spacing: Option<Vec<f64>>,
    pub window_center: Option<f64>,
    pub window_width: Option<f64>,
    pub rescale_slope: Option<f64>,
    pub rescale_intercept: Option<f64>,
    pub photometric_interpretation: String,
    pub samples_per_pixel: Option<u16>,
    pub bits_allocated: Option<u16>,
    pub bits_stored: Option<u16>,
    pub pixel_representation: Option<u16>,
}

/// Study-level attributes plus a summary kept current at every commit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct StudyRecord {
    pub study_instance_uid: String,
    pub patient_name: String,
    pub patient_id: String,
    pub patient_birth_date: String,
    pub patient_sex: String,
    pub study_date: String,
    pub study_time: String,
    pub study_description: String,
    pub accession_number: String,
    pub referring_physician_name: String,
    pub study_id: String,
    pub modalities: Vec<String>,
    pub series: Vec<SeriesSummary>,
    pub instance_count: u64,
    pub bytes: u64,
    pub created_unix: u64,
    pub updated_unix: u64,
}

/// One series of a study.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SeriesSummary {
    pub series_instance_uid: String,
    pub series_number: Option<i64>,
    pub series_description: String,
    pub modality: String,
    pub body_part_examined: String,
    pub instance_count: u64,
    pub bytes: u64,
}

/// Study-level attributes taken from the first instance of a study seen in an import.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct StudyAttributes {
    pub patient_name: String,
    pub patient_id: String,
    pub patient_birth_date: String,
    pub patient_sex: String,
    pub study_date: String,
    pub study_time: String,
    pub study_description: String,
    pub accession_number: String,
    pub referring_physician_name: String,
    pub study_id: String,
}

/// An instance waiting in an unfinished import: sealed and durable, not yet visible.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PendingInstance {
    pub instance: InstanceRecord,
    pub study: StudyAttributes,
    /// The instance's DICOM JSON (see `dicom::json`), precomputed for WADO-RS metadata.
    #[serde(default)]
    pub metadata: String,
}

impl StudyRecord {
    /// The short id shown to people: 8 hex digits of BLAKE3(StudyInstanceUID), the same on every
    /// node, so a patient and a doctor can read it to each other.
    pub fn short_id(&self) -> String {
        short_id(&self.study_instance_uid)
    }

    /// Adds instances to the summary (series counts, bytes, modalities).
    pub fn absorb(&mut self, inst: &InstanceRecord) {
        self.instance_count += 1;
        self.bytes += inst.size;
        if !inst.modality.is_empty() && !self.modalities.contains(&inst.modality) {
            self.modalities.push(inst.modality.clone());
            self.modalities.sort();
        }
        match self
            .series
            .iter_mut()
            .find(|s| s.series_instance_uid == inst.series_instance_uid)
        {
            Some(s) => {
                s.instance_count += 1;
                s.bytes += inst.size;
            }
            None => {
                self.series.push(SeriesSummary {
                    series_instance_uid: inst.series_instance_uid.clone(),
                    series_number: inst.series_number,
                    series_description: inst.series_description.clone(),
                    modality: inst.modality.clone(),
                    body_part_examined: inst.body_part_examined.clone(),
                    instance_count: 1,
                    bytes: inst.size,
                });
                self.series.sort_by(|a, b| {
                    (a.series_number, &a.series_instance_uid)
                        .cmp(&(b.series_number, &b.series_instance_uid))
                });
            }
        }
    }

    pub fn from_attributes(uid: &str, a: &StudyAttributes, now: u64) -> Self {
        Self {
            study_instance_uid: uid.to_owned(),
            patient_name: a.patient_name.clone(),
            patient_id: a.patient_id.clone(),
            patient_birth_date: a.patient_birth_date.clone(),
            patient_sex: a.patient_sex.clone(),
            study_date: a.study_date.clone(),
            study_time: a.study_time.clone(),
            study_description: a.study_description.clone(),
            accession_number: a.accession_number.clone(),
            referring_physician_name: a.referring_physician_name.clone(),
            study_id: a.study_id.clone(),
            created_unix: now,
            updated_unix: now,
            ..Self::default()
        }
    }
}

/// See [`StudyRecord::short_id`].
pub fn short_id(study_instance_uid: &str) -> String {
    hex::encode(&blake3::hash(study_instance_uid.as_bytes()).as_bytes()[..4])
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix_secs() -> u64 {
    crate::store::now_unix()
}

/// A study as listed to people and scripts (`studies --json`, `/api/studies`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StudySummary {
    pub study_instance_uid: String,
    pub short_id: String,
    pub patient_name: String,
    pub patient_id: String,
    pub patient_birth_date: String,
    pub patient_sex: String,
    pub study_date: String,
    pub study_time: String,
    pub study_description: String,
    pub accession_number: String,
    pub referring_physician_name: String,
    pub modalities: Vec<String>,
    pub series_count: usize,
    pub instance_count: u64,
    pub bytes: u64,
}

impl From<&StudyRecord> for StudySummary {
    fn from(s: &StudyRecord) -> Self {
        Self {
            study_instance_uid: s.study_instance_uid.clone(),
            short_id: s.short_id(),
            patient_name: s.patient_name.clone(),
            patient_id: s.patient_id.clone(),
            patient_birth_date: s.patient_birth_date.clone(),
            patient_sex: s.patient_sex.clone(),
            study_date: s.study_date.clone(),
            study_time: s.study_time.clone(),
            study_description: s.study_description.clone(),
            accession_number: s.accession_number.clone(),
            referring_physician_name: s.referring_physician_name.clone(),
            modalities: s.modalities.clone(),
            series_count: s.series.len(),
            instance_count: s.instance_count,
            bytes: s.bytes,
        }
    }
}
