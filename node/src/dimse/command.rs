//! DIMSE command sets (PS3.7 §9.3, §E): the small data sets in group 0000 that say what a
//! message is (C-STORE-RQ, C-ECHO-RSP, ...), always in implicit VR little endian.
//!
//! dicom-ul carries PDVs but knows nothing of DIMSE, so the node builds and reads these itself.
//! Only the fields C-ECHO and C-STORE use are modelled; unknown fields of a received command are
//! ignored, and a missing mandatory one is an error naming it (the association then answers with
//! a failure or aborts, never panics).

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;

/// Command Field values (PS3.7 §E.1).
pub(crate) mod field {
    pub(crate) const C_STORE_RQ: u16 = 0x0001;
    pub(crate) const C_STORE_RSP: u16 = 0x8001;
    pub(crate) const C_ECHO_RQ: u16 = 0x0030;
    pub(crate) const C_ECHO_RSP: u16 = 0x8030;
}

/// Status codes the node sends or interprets (PS3.4 Annex B.2.3, PS3.7 Annex C).
pub(crate) mod status {
    pub(crate) const SUCCESS: u16 = 0x0000;
    /// Out of resources: the store could not take the instance (disk, index).
    pub(crate) const OUT_OF_RESOURCES: u16 = 0xA700;
    /// Data set does not match SOP class / cannot be understood: the import refused it.
    pub(crate) const CANNOT_UNDERSTAND: u16 = 0xC000;
    /// Unrecognized operation: a command this SCP does not perform (e.g. C-FIND).
    pub(crate) const UNRECOGNIZED_OPERATION: u16 = 0x0211;

    /// Whether a C-STORE-RSP status means the instance was stored (success or a warning,
    /// PS3.4 B.2.3: 0xB000, 0xB007, 0xB006 are warnings with the instance stored).
    pub(crate) fn stored(s: u16) -> bool {
        s == SUCCESS || (s & 0xF000) == 0xB000
    }
}

/// CommandDataSetType value meaning "no data set follows" (PS3.7 §E.1); anything else means one
/// does.
const NO_DATA_SET: u16 = 0x0101;
/// Priority MEDIUM.
const PRIORITY_MEDIUM: u16 = 0x0000;
/// A command set is a handful of short elements; anything larger is not one we can use.
pub(crate) const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// A command set that could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    #[error("malformed command set: {0}")]
    Malformed(String),
    #[error("command set lacks {0}")]
    Missing(&'static str),
    #[error("command set larger than {MAX_COMMAND_BYTES} bytes")]
    TooLarge,
    #[error("cannot encode command set: {0}")]
    Encode(String),
}

/// One DIMSE command (the fields of C-ECHO and C-STORE requests and responses).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Command {
    pub(crate) field: u16,
    pub(crate) message_id: Option<u16>,
    pub(crate) responded_to: Option<u16>,
    pub(crate) affected_sop_class: Option<String>,
    pub(crate) affected_sop_instance: Option<String>,
    pub(crate) has_data_set: bool,
    pub(crate) status: Option<u16>,
    pub(crate) error_comment: Option<String>,
    pub(crate) priority: Option<u16>,
}

impl Command {
    #[cfg(test)]
    pub(crate) fn echo_rq(message_id: u16) -> Self {
        Self {
            field: field::C_ECHO_RQ,
            message_id: Some(message_id),
            affected_sop_class: Some(super::syntaxes::VERIFICATION.to_owned()),
            ..Self::default()
        }
    }

    /// The answer to a C-ECHO-RQ: success, with the request's MessageID.
    pub(crate) fn echo_rsp(rq: &Command) -> Self {
        Self {
            field: field::C_ECHO_RSP,
            responded_to: rq.message_id,
            affected_sop_class: rq
                .affected_sop_class
                .clone()
                .or_else(|| Some(super::syntaxes::VERIFICATION.to_owned())),
            status: Some(status::SUCCESS),
            ..Self::default()
        }
    }

    pub(crate) fn store_rq(message_id: u16, sop_class: &str, sop_instance: &str) -> Self {
        Self {
            field: field::C_STORE_RQ,
            message_id: Some(message_id),
            affected_sop_class: Some(sop_class.to_owned()),
            affected_sop_instance: Some(sop_instance.to_owned()),
            has_data_set: true,
            priority: Some(PRIORITY_MEDIUM),
            ..Self::default()
        }
    }

    /// The answer to a request other than C-ECHO: `field` is the response's command field.
    pub(crate) fn response(rq: &Command, field: u16, status: u16, comment: Option<&str>) -> Self {
        Self {
            field,
            responded_to: rq.message_id,
            affected_sop_class: rq.affected_sop_class.clone(),
            affected_sop_instance: rq.affected_sop_instance.clone(),
            status: Some(status),
            // ErrorComment is LO: at most 64 characters.
            error_comment: comment.map(|c| c.chars().take(64).collect()),
            ..Self::default()
        }
    }

    /// Encodes the command set in implicit VR little endian, group length first.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, CommandError> {
        let mut elems = vec![
            DataElement::new(
                tags::COMMAND_FIELD,
                VR::US,
                PrimitiveValue::from(self.field),
            ),
            DataElement::new(
                tags::COMMAND_DATA_SET_TYPE,
                VR::US,
                PrimitiveValue::from(if self.has_data_set {
                    0x0000
                } else {
                    NO_DATA_SET
                }),
            ),
        ];
        let uid = |tag: Tag, v: &str| DataElement::new(tag, VR::UI, PrimitiveValue::from(ui(v)));
        let us = |tag: Tag, v: u16| DataElement::new(tag, VR::US, PrimitiveValue::from(v));
        if let Some(v) = &self.affected_sop_class {
            elems.push(uid(tags::AFFECTED_SOP_CLASS_UID, v));
        }
        if let Some(v) = &self.affected_sop_instance {
            elems.push(uid(tags::AFFECTED_SOP_INSTANCE_UID, v));
        }
        if let Some(v) = self.message_id {
            elems.push(us(tags::MESSAGE_ID, v));
        }
        if let Some(v) = self.responded_to {
            elems.push(us(tags::MESSAGE_ID_BEING_RESPONDED_TO, v));
        }
        if let Some(v) = self.priority {
            elems.push(us(tags::PRIORITY, v));
        }
        if let Some(v) = self.status {
            elems.push(us(tags::STATUS, v));
        }
        if let Some(v) = &self.error_comment {
            let mut s = v.clone();
            if s.len() % 2 == 1 {
                s.push(' ');
            }
            elems.push(DataElement::new(
                tags::ERROR_COMMENT,
                VR::LO,
                PrimitiveValue::from(s),
            ));
        }
        let obj = InMemDicomObject::command_from_element_iter(elems);
        let mut out = Vec::with_capacity(256);
        obj.write_dataset_with_ts(&mut out, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
            .map_err(|e| CommandError::Encode(e.to_string()))?;
        Ok(out)
    }

    /// Reads a command set received from a peer.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, CommandError> {
        if bytes.len() > MAX_COMMAND_BYTES {
            return Err(CommandError::TooLarge);
        }
        let obj =
            InMemDicomObject::read_dataset_with_ts(bytes, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
                .map_err(|e| CommandError::Malformed(e.to_string()))?;
        let us = |tag: Tag, name: &'static str| -> Result<Option<u16>, CommandError> {
            match obj.element_opt(tag) {
                Ok(Some(e)) => e
                    .to_int::<u16>()
                    .map(Some)
                    .map_err(|_| CommandError::Malformed(format!("{name} is not a US value"))),
                _ => Ok(None),
            }
        };
        let text = |tag: Tag| -> Option<String> {
            obj.element_opt(tag)
                .ok()
                .flatten()
                .and_then(|e| e.to_str().ok())
                .map(|s| s.trim_end_matches(['\0', ' ']).to_owned())
        };
        let field = us(tags::COMMAND_FIELD, "CommandField")?
            .ok_or(CommandError::Missing("CommandField"))?;
        let data_set_type = us(tags::COMMAND_DATA_SET_TYPE, "CommandDataSetType")?
            .ok_or(CommandError::Missing("CommandDataSetType"))?;
        Ok(Self {
            field,
            message_id: us(tags::MESSAGE_ID, "MessageID")?,
            responded_to: us(
                tags::MESSAGE_ID_BEING_RESPONDED_TO,
                "MessageIDBeingRespondedTo",
            )?,
            affected_sop_class: text(tags::AFFECTED_SOP_CLASS_UID),
            affected_sop_instance: text(tags::AFFECTED_SOP_INSTANCE_UID),
            has_data_set: data_set_type != NO_DATA_SET,
            status: us(tags::STATUS, "Status")?,
            error_comment: text(tags::ERROR_COMMENT).filter(|s| !s.is_empty()),
            priority: us(tags::PRIORITY, "Priority")?,
        })
    }
}

/// A UID value padded to even length with NUL, as PS3.5 §9.1 requires.
pub(crate) fn ui(v: &str) -> String {
    let mut s = v.to_owned();
    if s.len() % 2 == 1 {
        s.push('\0');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";

    #[test]
    fn store_request_round_trips() {
        let rq = Command::store_rq(7, CT, "1.2.3.4.5");
        let bytes = rq.encode().unwrap();
        assert_eq!(Command::decode(&bytes).unwrap(), rq);
    }

    #[test]
    fn response_answers_the_request_and_truncates_the_comment() {
        let rq = Command::store_rq(42, CT, "1.2.3");
        let long = "x".repeat(100);
        let rsp = Command::response(
            &rq,
            field::C_STORE_RSP,
            status::CANNOT_UNDERSTAND,
            Some(&long),
        );
        let back = Command::decode(&rsp.encode().unwrap()).unwrap();
        assert_eq!(back.responded_to, Some(42));
        assert_eq!(back.status, Some(status::CANNOT_UNDERSTAND));
        assert_eq!(back.affected_sop_instance.as_deref(), Some("1.2.3"));
        assert_eq!(back.error_comment.map(|c| c.len()), Some(64));
        assert!(!back.has_data_set);
    }

    #[test]
    fn echo_response_carries_the_request_message_id() {
        let rq = Command::echo_rq(9);
        let rsp = Command::echo_rsp(&Command::decode(&rq.encode().unwrap()).unwrap());
        let back = Command::decode(&rsp.encode().unwrap()).unwrap();
        assert_eq!(back.field, field::C_ECHO_RSP);
        assert_eq!(back.responded_to, Some(9));
        assert_eq!(back.status, Some(status::SUCCESS));
    }

    /// The wire bytes: group length first and right, UIDs padded with NUL to even length.
    #[test]
    fn encoding_is_implicit_little_endian_with_group_length() {
        let bytes = Command::echo_rq(1).encode().unwrap();
        // (0000,0000) UL, length 4, value = bytes after this element.
        assert_eq!(&bytes[..8], &[0, 0, 0, 0, 4, 0, 0, 0]);
        let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
        assert_eq!(len, bytes.len() - 12);
        // (0000,0002) AffectedSOPClassUID "1.2.840.10008.1.1" (17 chars) + NUL = 18.
        assert_eq!(&bytes[12..16], &[0, 0, 2, 0]);
        assert_eq!(
            u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]),
            18
        );
        assert_eq!(&bytes[20..38], b"1.2.840.10008.1.1\0");
    }

    /// A C-ECHO-RQ laid out as dcmtk's echoscu sends it, element by element.
    #[test]
    fn decodes_a_foreign_echo_request() {
        let mut b: Vec<u8> = Vec::new();
        let mut el = |g: u16, e: u16, v: &[u8]| {
            b.extend_from_slice(&g.to_le_bytes());
            b.extend_from_slice(&e.to_le_bytes());
            b.extend_from_slice(&(v.len() as u32).to_le_bytes());
            b.extend_from_slice(v);
        };
        el(0, 0x0000, &56u32.to_le_bytes());
        el(0, 0x0002, b"1.2.840.10008.1.1\0");
        el(0, 0x0100, &0x0030u16.to_le_bytes());
        el(0, 0x0110, &1u16.to_le_bytes());
        el(0, 0x0800, &0x0101u16.to_le_bytes());
        let c = Command::decode(&b).unwrap();
        assert_eq!(c.field, field::C_ECHO_RQ);
        assert_eq!(c.message_id, Some(1));
        assert_eq!(c.affected_sop_class.as_deref(), Some("1.2.840.10008.1.1"));
        assert!(!c.has_data_set);
    }

    #[test]
    fn garbage_and_incomplete_commands_are_errors() {
        assert!(Command::decode(&[0xff; 7]).is_err());
        assert!(Command::decode(&vec![0u8; MAX_COMMAND_BYTES + 1]).is_err());
        // A well-formed set without CommandField.
        let mut b = Vec::new();
        b.extend_from_slice(&[0, 0, 0x10, 0x01, 2, 0, 0, 0, 1, 0]); // MessageID only
        assert!(matches!(
            Command::decode(&b),
            Err(CommandError::Missing("CommandField"))
        ));
    }

    #[test]
    fn warnings_count_as_stored() {
        assert!(status::stored(0x0000));
        assert!(status::stored(0xB007));
        assert!(!status::stored(0xA700));
        assert!(!status::stored(0xC000));
    }
}
