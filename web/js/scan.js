// Reading a pairing QR code with the camera, where the browser can: the Shape Detection API's
// BarcodeDetector (Chrome on Android and macOS, Safari behind a flag) on frames of getUserMedia.
// Elsewhere the Pair page hides the camera and keeps the paste box; no QR decoder is shipped,
// because a JavaScript one would be the largest file of the viewer for a convenience.

/** How often a frame is looked at: fast enough to feel instant, light on a phone's battery. */
const SCAN_EVERY_MS = 200;

/** Resolves true when this browser can read QR codes from the camera. */
export async function cameraScanSupported() {
  if (!('BarcodeDetector' in window) || !navigator.mediaDevices?.getUserMedia) return false;
  try {
    const formats = await window.BarcodeDetector.getSupportedFormats();
    return formats.includes('qr_code');
  } catch {
    return false;
  }
}

/**
 * Shows the back camera in `video` and calls onText(text) with the first QR code whose text
 * passes `accept`. Returns a function that stops the camera (call it in every case).
 */
export async function scanQr(video, accept, onText) {
  const stream = await navigator.mediaDevices.getUserMedia({
    video: { facingMode: { ideal: 'environment' } },
    audio: false,
  });
  const detector = new window.BarcodeDetector({ formats: ['qr_code'] });
  let stopped = false;
  let timer = 0;
  const stop = () => {
    stopped = true;
    clearTimeout(timer);
    for (const track of stream.getTracks()) track.stop();
    video.srcObject = null;
  };
  video.srcObject = stream;
  video.setAttribute('playsinline', '');
  video.muted = true;
  await video.play();
  const look = async () => {
    if (stopped) return;
    try {
      const codes = await detector.detect(video);
      const hit = codes.map((c) => c.rawValue).find((t) => accept(t));
      if (hit && !stopped) {
        stop();
        onText(hit);
        return;
      }
    } catch {
      // A frame that is not ready yet; the next one will be.
    }
    timer = setTimeout(look, SCAN_EVERY_MS);
  };
  look();
  return stop;
}
