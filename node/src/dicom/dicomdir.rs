//! TEMPORARY placeholder until the DICOMDIR module lands (being written in parallel).
use std::path::{Path, PathBuf};
#[derive(Debug, Clone)]
pub struct Record {
    pub patient_id: String,
    pub patient_name: String,
    pub study_instance_uid: String,
    pub study_date: String,
    pub study_time: String,
    pub study_description: String,
    pub study_id: String,
    pub accession_number: String,
    pub series_instance_uid: String,
    pub modality: String,
    pub series_number: String,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub transfer_syntax_uid: String,
    pub instance_number: String,
    pub file_id: Vec<String>,
}
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DicomdirError {
    #[error("DICOMDIR support not built yet: {0}")]
    Unsupported(PathBuf),
}
pub fn write(path: &Path, _records: &[Record]) -> Result<(), DicomdirError> {
    Err(DicomdirError::Unsupported(path.to_path_buf()))
}
pub fn referenced_files(path: &Path) -> Result<Vec<PathBuf>, DicomdirError> {
    Err(DicomdirError::Unsupported(path.to_path_buf()))
}
