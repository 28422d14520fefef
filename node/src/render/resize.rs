//! Downscaling to fit a viewport: each output pixel is the area-weighted mean of the source
//! pixels it covers (a box filter with fractional edges), in two separable passes. For
//! shrinking this is what a triangle or Lanczos filter approximates, without their ringing,
//! and it is cheap enough to run on every request.

use super::Picture;

/// Scales `picture` down to fit inside `max_width` × `max_height`, keeping its aspect ratio;
/// a picture that already fits is returned as it is (never upscaled). A zero bound counts as 1.
pub(super) fn fit(picture: Picture, max_width: u32, max_height: u32) -> Picture {
    let (width, height) = (picture.width, picture.height);
    let (max_width, max_height) = (max_width.max(1), max_height.max(1));
    let scale =
        (f64::from(max_width) / f64::from(width)).min(f64::from(max_height) / f64::from(height));
    let channels = usize::from(picture.channels);
    if scale >= 1.0 || picture.data.len() != width as usize * height as usize * channels {
        return picture;
    }
    let new_width = ((f64::from(width) * scale).round() as u32).clamp(1, max_width);
    let new_height = ((f64::from(height) * scale).round() as u32).clamp(1, max_height);

    let columns = taps(width as usize, new_width as usize);
    let rows = taps(height as usize, new_height as usize);
    let row_in = width as usize * channels;
    let row_out = new_width as usize * channels;
    let horizontal = |y: usize, into: &mut Vec<f32>| {
        let src = picture
            .data
            .get(y * row_in..(y + 1) * row_in)
            .unwrap_or_default();
        into.clear();
        match channels {
            3 => horizontal::<3>(src, &columns, into),
            _ => horizontal::<1>(src, &columns, into),
        }
    };

    // Vertical pass, streaming: each output row sums a few horizontally resampled source
    // rows, kept in a ring as long as the next output rows still need them; the taps only
    // move forward, so each source row is resampled once and no full-height buffer exists.
    let ring_len = rows.iter().map(|t| t.weights.len()).max().unwrap_or(1);
    let mut ring: Vec<(usize, Vec<f32>)> = (0..ring_len)
        .map(|_| (usize::MAX, Vec::with_capacity(row_out)))
        .collect();
    let mut data = Vec::with_capacity(new_height as usize * row_out);
    let mut acc = vec![0f32; row_out];
    for tap in &rows {
        acc.fill(0.0);
        for (k, weight) in tap.weights.iter().enumerate() {
            let y = tap.start + k;
            let (cached, row) = &mut ring[y % ring_len];
            if *cached != y {
                horizontal(y, row);
                *cached = y;
            }
            for (a, s) in acc.iter_mut().zip(row.iter()) {
                *a += weight * s;
            }
        }
        data.extend(acc.iter().map(|v| v.round().clamp(0.0, 255.0) as u8));
    }
    Picture {
        width: new_width,
        height: new_height,
        channels: picture.channels,
        data,
    }
}

/// Resamples one row of `C`-channel pixels through `taps`, appending to `out`; the channel
/// count is a constant so that the innermost loop unrolls.
fn horizontal<const C: usize>(row: &[u8], taps: &[Tap], out: &mut Vec<f32>) {
    for tap in taps {
        let mut acc = [0f32; C];
        let pixels = row.get(tap.start * C..).unwrap_or_default().chunks_exact(C);
        for (weight, pixel) in tap.weights.iter().zip(pixels) {
            for (a, s) in acc.iter_mut().zip(pixel) {
                *a += weight * f32::from(*s);
            }
        }
        out.extend_from_slice(&acc);
    }
}

/// The source pixels one output pixel covers, and their shares of it (summing to 1).
#[derive(Debug)]
struct Tap {
    start: usize,
    weights: Vec<f32>,
}

fn taps(source: usize, target: usize) -> Vec<Tap> {
    let ratio = source as f64 / target as f64;
    (0..target)
        .map(|i| {
            let from = i as f64 * ratio;
            let to = ((i + 1) as f64 * ratio).min(source as f64);
            let start = from.floor() as usize;
            let end = (to.ceil() as usize).clamp(start + 1, source);
            let weights = (start..end)
                .map(|j| {
                    let covered = to.min(j as f64 + 1.0) - from.max(j as f64);
                    (covered / (to - from)) as f32
                })
                .collect();
            Tap { start, weights }
        })
        .collect()
}
