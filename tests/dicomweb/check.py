"""Drives a running Discless node with Python's dicomweb-client (a real third-party DICOMweb client).

Usage: check.py --url http://127.0.0.1:PORT/dicomweb --src DIR --stow DIR

--src holds the original files of one study already imported into the node (patient
DICOMWEB^TEST, id DW-1, date 20240115, a CT and an MR series); --stow holds files of another
study that is not in the node yet and is stored through STOW-RS. Prints one JSON object with
every check and exits 1 if any failed.
"""
import argparse
import hashlib
import io
import json
import pathlib
import sys
import traceback

import pydicom
from dicomweb_client.api import DICOMwebClient

checks = []


def check(name, fn):
    try:
        detail = fn()
        checks.append({"check": name, "ok": True, "detail": detail})
    except Exception as e:  # noqa: BLE001 - every failure is reported, not raised
        checks.append({"check": name, "ok": False, "error": f"{type(e).__name__}: {e}",
                       "trace": traceback.format_exc(limit=3)})


def uid(ds_json, tag):
    return ds_json[tag]["Value"][0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--src", required=True)
    ap.add_argument("--stow", required=True)
    a = ap.parse_args()
    client = DICOMwebClient(url=a.url)

    originals = {}
    for p in sorted(pathlib.Path(a.src).rglob("*.dcm")):
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        originals[str(ds.SOPInstanceUID)] = (p, p.read_bytes(), ds)
    any_ds = next(iter(originals.values()))[2]
    study = str(any_ds.StudyInstanceUID)
    ct = [v for v in originals.values() if v[2].Modality == "CT"]
    ct.sort(key=lambda v: int(v[2].InstanceNumber))
    ct_series = str(ct[0][2].SeriesInstanceUID)

    def expect(cond, msg):
        if not cond:
            raise AssertionError(msg)

    # QIDO-RS
    def search_by_name_wildcard():
        r = client.search_for_studies(search_filters={"PatientName": "dicomweb*"})
        expect([uid(x, "0020000D") for x in r] == [study], f"got {r}")
        return len(r)
    check("search studies by PatientName wildcard (case-insensitive)", search_by_name_wildcard)

    def search_by_filters():
        r = client.search_for_studies(search_filters={
            "PatientID": "DW-1", "StudyDate": "20240101-20240131", "ModalitiesInStudy": "CT"})
        expect(len(r) == 1, f"got {len(r)}")
        none = client.search_for_studies(search_filters={"PatientID": "NOBODY"})
        expect(none == [], f"unexpected {none}")
        out_of_range = client.search_for_studies(search_filters={"StudyDate": "20250101-"})
        expect(all(uid(x, "0020000D") != study for x in out_of_range), "date range ignored")
        return "PatientID+StudyDate range+ModalitiesInStudy"
    check("search studies by id, date range and modality", search_by_filters)

    def search_limit_offset():
        everything = client.search_for_studies()
        page = client.search_for_studies(limit=1, offset=0)
        expect(len(page) == 1 and len(everything) >= 2, f"{len(page)} of {len(everything)}")
        second = client.search_for_studies(limit=1, offset=1)
        expect(uid(second[0], "0020000D") == uid(everything[1], "0020000D"), "offset")
        return len(everything)
    check("search with limit and offset", search_limit_offset)

    def series_and_instances():
        s = client.search_for_series(study_instance_uid=study)
        expect(len(s) == 2, f"{len(s)} series")
        ct_only = client.search_for_series(study_instance_uid=study, search_filters={"Modality": "CT"})
        expect(len(ct_only) == 1 and uid(ct_only[0], "0020000E") == ct_series, "series filter")
        i = client.search_for_instances(study_instance_uid=study, series_instance_uid=ct_series)
        expect(len(i) == len(ct), f"{len(i)} instances")
        all_i = client.search_for_instances(study_instance_uid=study, fields=["all"])
        expect(len(all_i) == len(originals), "study instances")
        expect("00180050" in all_i[0] or "00280030" in all_i[0], "includefield=all adds attributes")
        return {"series": len(s), "ct_instances": len(i)}
    check("search series and instances", series_and_instances)

    # WADO-RS: bytes equal to the originals
    def raw_parts(url):
        # The client's own HTTP and multipart decoding, without its pydicom parsing, so the
        # bytes can be compared with the files.
        resp = client._http_get(url, headers={"Accept": 'multipart/related; type="application/dicom"'})
        return list(client._decode_multipart_message(resp, stream=False))

    def retrieve_bytes_equal():
        parts = raw_parts(f"{a.url}/studies/{study}")
        got = sorted(hashlib.sha256(p).hexdigest() for p in parts)
        want = sorted(hashlib.sha256(v[1]).hexdigest() for v in originals.values())
        expect(got == want, "study bytes differ")
        parts = raw_parts(f"{a.url}/studies/{study}/series/{ct_series}")
        expect(sorted(parts) == sorted(v[1] for v in ct), "series bytes differ")
        sop = str(ct[0][2].SOPInstanceUID)
        parts = raw_parts(f"{a.url}/studies/{study}/series/{ct_series}/instances/{sop}")
        expect(parts == [ct[0][1]], "instance bytes differ")
        return {"study_parts": len(got)}
    check("retrieve study, series, instance: bytes equal the originals", retrieve_bytes_equal)

    def retrieve_as_datasets():
        ds = client.retrieve_study(study)
        expect(sorted(str(d.SOPInstanceUID) for d in ds) == sorted(originals), "datasets")
        one = client.retrieve_instance(study, ct_series, str(ct[1][2].SOPInstanceUID))
        expect(one.PatientName == "DICOMWEB^TEST", "instance dataset")
        return len(ds)
    check("retrieve_study / retrieve_instance parse as pydicom datasets", retrieve_as_datasets)

    def metadata():
        m = client.retrieve_study_metadata(study)
        expect(len(m) == len(originals), f"{len(m)} metadata objects")
        sm = client.retrieve_series_metadata(study, ct_series)
        expect(len(sm) == len(ct), "series metadata")
        first = sm[0]
        expect(first["00100010"]["Value"][0]["Alphabetic"] == "DICOMWEB^TEST", "PN")
        expect(isinstance(first["00280010"]["Value"][0], int), "Rows is a number")
        expect("BulkDataURI" in first["7FE00010"], "pixel data as BulkDataURI")
        ds = pydicom.Dataset.from_json(first, bulk_data_uri_handler=lambda *_: b"")
        expect(ds.Modality == "CT", "from_json")
        return {"study": len(m), "series": len(sm)}
    check("retrieve study and series metadata (DICOM JSON, BulkDataURI)", metadata)

    def frames():
        p, raw, ds = ct[2]
        full = pydicom.dcmread(io.BytesIO(raw))
        f = client.retrieve_instance_frames(study, ct_series, str(ds.SOPInstanceUID), frame_numbers=[1],
                                            media_types=("application/octet-stream",))
        expect(len(f) == 1 and f[0] == full.PixelData, "frame bytes differ from PixelData")
        return len(f[0])
    check("retrieve frames (uncompressed) equal the pixel data", frames)

    def rendered():
        ds = ct[3][2]
        png = client.retrieve_instance_rendered(study, ct_series, str(ds.SOPInstanceUID), media_types=("image/png",))
        expect(png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG")
        jpg = client.retrieve_instance_rendered(study, ct_series, str(ds.SOPInstanceUID), media_types=("image/jpeg",))
        expect(jpg[:2] == b"\xff\xd8", "not a JPEG")
        fr = client.retrieve_instance_frames_rendered(study, ct_series, str(ds.SOPInstanceUID), frame_numbers=[1],
                                                     media_types=("image/png",), params={"window": "40,400,linear"})
        expect(fr[:8] == b"\x89PNG\r\n\x1a\n", "frame rendered")
        return {"png": len(png), "jpeg": len(jpg)}
    check("retrieve rendered instance and frame (PNG, JPEG, window)", rendered)

    # STOW-RS
    def stow():
        files = sorted(pathlib.Path(a.stow).rglob("*.dcm"))
        datasets = [pydicom.dcmread(p) for p in files]
        new_study = str(datasets[0].StudyInstanceUID)
        r = client.store_instances(datasets=datasets)
        refs = r.ReferencedSOPSequence
        expect(len(refs) == len(datasets), f"{len(refs)} referenced")
        expect("FailedSOPSequence" not in r, "failures reported")
        found = client.search_for_studies(search_filters={"StudyInstanceUID": new_study})
        expect(len(found) == 1, "stored study not found by QIDO")
        inst = client.search_for_instances(study_instance_uid=new_study)
        expect(len(inst) == len(datasets), "stored instances not found by QIDO")
        return {"stored": len(refs)}
    check("store instances with STOW-RS, then find them with QIDO-RS", stow)

    def stow_garbage():
        # A part that is not DICOM is reported in FailedSOPSequence, nothing else changes.
        import requests
        b = "discless-test-boundary"
        body = (f"--{b}\r\nContent-Type: application/dicom\r\n\r\n".encode() + b"not dicom at all" +
                f"\r\n--{b}--\r\n".encode())
        resp = requests.post(f"{a.url}/studies", data=body, headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={b}',
            "Accept": "application/dicom+json"})
        expect(resp.status_code == 409, f"status {resp.status_code}")
        expect("00081198" in resp.json(), "no FailedSOPSequence")
        return resp.status_code
    check("a STOW part that is not DICOM is refused with a reason", stow_garbage)

    ok = all(c["ok"] for c in checks)
    print(json.dumps({"ok": ok, "checks": checks}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
