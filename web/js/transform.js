// Where the image sits on the canvas: zoom (CSS px per image column), pan (offset of the image
// centre from the canvas centre, CSS px) and the pixel aspect ratio (row / column spacing, so
// non-square pixels keep their true shape). Image coordinates are in pixels with (0, 0) the
// top-left corner of the first pixel, so pixel (i, j) covers [i, i+1) × [j, j+1).

const MIN_ZOOM = 0.02;
const MAX_ZOOM = 50;
/** Fit leaves a thin margin so the image edge stays visible against a black background. */
const FIT_MARGIN = 0.98;

export class ViewTransform {
  constructor() {
    this.width = 1; // viewport, CSS px
    this.height = 1;
    this.columns = 1;
    this.rows = 1;
    this.aspect = 1;
    this.zoom = 1;
    this.panX = 0;
    this.panY = 0;
    this.fitted = true;
  }

  setViewport(width, height) {
    this.width = Math.max(1, width);
    this.height = Math.max(1, height);
    if (this.fitted) this.fit();
  }

  setImage(columns, rows, aspect = 1) {
    if (columns === this.columns && rows === this.rows && aspect === this.aspect) return;
    this.columns = columns;
    this.rows = rows;
    this.aspect = aspect > 0 ? aspect : 1;
    if (this.fitted) this.fit();
  }

  /** Whole image visible, centred. */
  fit() {
    this.zoom = clamp(Math.min(this.width / this.columns, this.height / (this.rows * this.aspect)) * FIT_MARGIN);
    this.panX = 0;
    this.panY = 0;
    this.fitted = true;
  }

  /** Zooms by `factor` keeping the image point under canvas point (x, y) where it is. */
  zoomAt(factor, x, y) {
    const anchor = this.canvasToImage(x, y);
    this.zoom = clamp(this.zoom * factor);
    const moved = this.imageToCanvas(anchor.x, anchor.y);
    this.panX += x - moved.x;
    this.panY += y - moved.y;
    this.fitted = false;
  }

  panBy(dx, dy) {
    this.panX += dx;
    this.panY += dy;
    this.fitted = false;
  }

  /** Image pixel coordinates → canvas CSS px. */
  imageToCanvas(ix, iy) {
    return {
      x: this.width / 2 + this.panX + (ix - this.columns / 2) * this.zoom,
      y: this.height / 2 + this.panY + (iy - this.rows / 2) * this.zoom * this.aspect,
    };
  }

  /** Canvas CSS px → image pixel coordinates (fractional, may lie outside the image). */
  canvasToImage(x, y) {
    return {
      x: (x - this.width / 2 - this.panX) / this.zoom + this.columns / 2,
      y: (y - this.height / 2 - this.panY) / (this.zoom * this.aspect) + this.rows / 2,
    };
  }

  /** The image's rectangle on the canvas, CSS px. */
  imageRect() {
    const tl = this.imageToCanvas(0, 0);
    return { x: tl.x, y: tl.y, w: this.columns * this.zoom, h: this.rows * this.zoom * this.aspect };
  }
}

function clamp(z) {
  return Math.min(MAX_ZOOM, Math.max(MIN_ZOOM, z));
}
