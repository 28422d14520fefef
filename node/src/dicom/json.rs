//! The DICOM JSON model (PS3.18 F.2) of an instance's attributes, computed once at import.
//!
//! dicom-json writes IS/DS as strings and all bulk data inline as base64 (see the shared notes);
//! DICOMweb clients expect numbers and BulkDataURIs, and a 600-slice series' metadata must not
//! carry 600 copies of its pixels. So this walks the data set itself:
//!
//! * strings trimmed of padding; PN as `{"Alphabetic", "Ideographic", "Phonetic"}`;
//! * IS, DS and binary numbers as JSON numbers (a malformed IS/DS keeps its text, rather than
//!   losing the value);
//! * OB/OW/OD/OF/OL/OV/UN values, and Pixel Data, as a `BulkDataURI` with the placeholder prefix
//!   [`BULK_PREFIX`], which the server replaces with its own base URL when it answers.

use dicom_core::header::Header;
use dicom_core::value::Value;
use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::mem::InMemDicomObject;
use serde_json::{json, Map, Value as Json};

/// Stands for the DICOMweb base URL (`http://host/dicomweb/`) in stored metadata.
pub const BULK_PREFIX: &str = "discless-bulk:";

/// Where an instance lives, for its BulkDataURIs.
#[derive(Debug, Clone, Copy)]
pub struct Location<'a> {
    pub study: &'a str,
    pub series: &'a str,
    pub instance: &'a str,
}

fn tag_key(t: Tag) -> String {
    format!("{:04X}{:04X}", t.group(), t.element())
}

fn trimmed(s: &str) -> String {
    s.trim_end_matches(['\0', ' '])
        .trim_start_matches(' ')
        .to_owned()
}

/// The DICOM JSON object of a data set (top level or a sequence item).
pub fn dataset(obj: &InMemDicomObject, loc: Location<'_>, has_pixels: bool) -> Json {
    let mut m = Map::new();
    for e in obj.iter() {
        let tag = e.tag();
        if tag.group() == 0x0002 || tag.element() == 0x0000 {
            continue; // meta group and group lengths are not part of the model
        }
        if let Some(v) = element(e.vr(), e.value(), tag, loc) {
            m.insert(tag_key(tag), v);
        }
    }
    if has_pixels && !m.contains_key("7FE00010") {
        m.insert("7FE00010".into(), bulk("OW", tags::PIXEL_DATA, loc));
    }
    Json::Object(m)
}

fn bulk(vr: &str, tag: Tag, loc: Location<'_>) -> Json {
    json!({
        "vr": vr,
        "BulkDataURI": format!(
            "{BULK_PREFIX}studies/{}/series/{}/instances/{}/bulkdata/{}",
            loc.study, loc.series, loc.instance, tag_key(tag)
        )
    })
}

fn element<I, P>(vr: VR, value: &Value<I, P>, tag: Tag, loc: Location<'_>) -> Option<Json>
where
    I: std::borrow::Borrow<InMemDicomObject>,
{
    let vr_s = vr.to_string();
    match vr {
        VR::OB | VR::OD | VR::OF | VR::OL | VR::OV | VR::OW | VR::UN => {
            return Some(bulk(vr_s, tag, loc));
        }
        _ => {}
    }
    let values: Vec<Json> = match value {
        Value::Sequence(seq) => seq
            .items()
            .iter()
            .map(|item| dataset(item.borrow(), loc, false))
            .collect(),
        Value::PixelSequence(_) => return Some(bulk("OB", tag, loc)),
        Value::Primitive(p) => {
            let strs = p.to_multi_str();
            match vr {
                VR::PN => strs
                    .iter()
                    .map(|s| trimmed(s))
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        let mut groups = s.split('=');
                        let mut o = Map::new();
                        for key in ["Alphabetic", "Ideographic", "Phonetic"] {
                            if let Some(g) = groups.next().filter(|g| !g.is_empty()) {
                                o.insert(key.into(), Json::String(g.to_owned()));
                            }
                        }
                        Json::Object(o)
                    })
                    .collect(),
                VR::IS => strs
                    .iter()
                    .map(|s| trimmed(s))
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse::<i64>().map(Json::from).unwrap_or(Json::String(s)))
                    .collect(),
                VR::DS => strs
                    .iter()
                    .map(|s| trimmed(s))
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        s.parse::<f64>()
                            .ok()
                            .and_then(serde_json::Number::from_f64)
                            .map(Json::Number)
                            .unwrap_or(Json::String(s))
                    })
                    .collect(),
                VR::US | VR::SS | VR::UL | VR::SL | VR::UV | VR::SV => strs
                    .iter()
                    .filter_map(|s| trimmed(s).parse::<i128>().ok())
                    .map(|n| {
                        i64::try_from(n)
                            .map(Json::from)
                            .unwrap_or_else(|_| Json::from(n as u64))
                    })
                    .collect(),
                VR::FL | VR::FD => strs
                    .iter()
                    .filter_map(|s| trimmed(s).parse::<f64>().ok())
                    .filter_map(serde_json::Number::from_f64)
                    .map(Json::Number)
                    .collect(),
                VR::AT => strs
                    .iter()
                    .map(|s| {
                        Json::String(
                            s.chars()
                                .filter(char::is_ascii_hexdigit)
                                .collect::<String>()
                                .to_uppercase(),
                        )
                    })
                    .collect(),
                _ => strs.iter().map(|s| trimmed(s)).map(Json::String).collect(),
            }
        }
    };
    let mut o = Map::new();
    o.insert("vr".into(), Json::String(vr_s.to_owned()));
    let all_empty_strings = values.iter().all(|v| v.as_str() == Some(""));
    if !(values.is_empty() || (all_empty_strings && vr != VR::SQ)) {
        o.insert("Value".into(), Json::Array(values));
    }
    Some(Json::Object(o))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{DataElement, PrimitiveValue};

    #[test]
    fn numbers_names_and_bulk_follow_ps3_18() {
        let mut o = InMemDicomObject::new_empty();
        o.put(DataElement::new(
            tags::PATIENT_NAME,
            VR::PN,
            PrimitiveValue::from("DOE^JANE=ド^ジ"),
        ));
        o.put(DataElement::new(
            tags::INSTANCE_NUMBER,
            VR::IS,
            PrimitiveValue::from(" 12 "),
        ));
        o.put(DataElement::new(
            tags::PIXEL_SPACING,
            VR::DS,
            PrimitiveValue::Strs(["0.7".to_owned(), "0.70".to_owned()].into_iter().collect()),
        ));
        o.put(DataElement::new(
            tags::ROWS,
            VR::US,
            PrimitiveValue::from(512_u16),
        ));
        o.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::from(vec![0u8; 8]),
        ));
        o.put(DataElement::new(
            tags::STUDY_DESCRIPTION,
            VR::LO,
            PrimitiveValue::from(""),
        ));
        let loc = Location {
            study: "1.2",
            series: "1.2.3",
            instance: "1.2.3.4",
        };
        let j = dataset(&o, loc, true);
        assert_eq!(j["00100010"]["Value"][0]["Alphabetic"], "DOE^JANE");
        assert_eq!(j["00100010"]["Value"][0]["Ideographic"], "ド^ジ");
        assert_eq!(j["00200013"]["Value"][0], 12);
        assert_eq!(j["00280030"]["Value"][1], 0.7);
        assert_eq!(j["00280010"]["Value"][0], 512);
        assert_eq!(j["00081030"], json!({"vr": "LO"}));
        assert!(j["7FE00010"].get("Value").is_none());
        assert_eq!(
            j["7FE00010"]["BulkDataURI"],
            "discless-bulk:studies/1.2/series/1.2.3/instances/1.2.3.4/bulkdata/7FE00010"
        );
    }
}
