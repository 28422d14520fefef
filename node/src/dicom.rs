//! DICOM in and out of the store.
//!
//! * [`parse`]: reads one file (bounded) and extracts the indexed attributes;
//! * [`import`]: walks files, folders, DICOMDIRs and ZIP archives and stores what is DICOM;
//! * [`export`]: writes a study back out, byte for byte, as files, a ZIP, or a CD layout;
//! * [`dicomdir`]: the DICOMDIR reader and writer (dicom-rs has neither).
//!
//! The original bytes of every instance are what is stored and what comes out: dicom-rs
//! re-serialisation is not byte-preserving (preamble, sequence lengths, deflate), so it is only
//! ever used to *read*.

pub mod dicomdir;
pub mod export;
pub mod import;
pub mod json;
pub mod parse;
